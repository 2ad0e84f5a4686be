"""Benchmark (c): the channel_stats stage vs a plain read and decode of the same cache arrays.

Both run in this process on the same cache, interleaved, after one warm-up run each (so the files
are in the page cache for both); the best and the median of ``--repeat`` runs are reported (the best
is the least disturbed by other processes on a shared machine). The stage is timed
as ``geogfm channel_stats`` runs it (manifest read, cache fingerprint, the parallel pass, JSON
written), with the params file's ``channel_stats`` section (``workers: null`` = every core).

Baselines, decoding the ``reflectance`` and ``valid`` arrays of every (cell, time) with train
windows, i.e. every chunk channel_stats reads, and computing nothing:

- ``per scene``: one ``array[t]`` call per scene and array, in a loop;
- ``whole arrays``: one ``array[:]`` call per cell and array, which lets zarr decode chunks
  concurrently (it reads every time step: the same bytes when every time step has train windows,
  as in the demo).

The ratio is baseline time / channel_stats time against the faster baseline; the goal is >= 0.8.

Usage (after ``snakemake --cores 2 channel_stats``)::

    python benchmarks/channel_stats_throughput.py
    python benchmarks/channel_stats_throughput.py --cache data/cache \
        --manifest data/manifests/patches.parquet --params params.yaml --repeat 7
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zarr

from geogfm.core.config import load_params
from geogfm.data.cache_reader import load_cache_index
from geogfm.data.manifest import read_manifest
from geogfm.data.stats import default_workers
from geogfm.stages import channel_stats


def _scenes(cache: Path, manifest: Path) -> dict[str, list[int]]:
    rows = read_manifest(manifest)
    train = rows[rows["split"] == "train"]
    return {
        str(cell): sorted(int(t) for t in set(g["time_index"]))
        for cell, g in train.groupby("cell_id", sort=True)
    }


def _read_per_scene(cache: Path, scenes: dict[str, list[int]]) -> int:
    index, n = load_cache_index(cache), 0
    for cell, times in scenes.items():
        g = zarr.open_group(index.store(cell), mode="r")
        refl, valid = g["reflectance"], g["valid"]
        for t in times:
            n += refl[t].nbytes + valid[t].nbytes
    return n


def _read_whole(cache: Path, scenes: dict[str, list[int]]) -> int:
    index, n = load_cache_index(cache), 0
    for cell in scenes:
        g = zarr.open_group(index.store(cell), mode="r")
        n += g["reflectance"][:].nbytes + g["valid"][:].nbytes
    return n


def _time(fn: Callable[[], object], runs: list[float]) -> None:
    t = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path("data/cache"))
    p.add_argument("--manifest", type=Path, default=Path("data/manifests/patches.parquet"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    logging.disable(logging.INFO)

    cfg = load_params(args.params)
    scenes = _scenes(args.cache, args.manifest)
    workers = cfg.channel_stats.workers or default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "channel_stats.json"

        one = cfg.model_copy(
            update={"channel_stats": cfg.channel_stats.model_copy(update={"workers": 1})}
        )

        def stage() -> None:
            channel_stats.run(cfg, cache=args.cache, manifest=args.manifest, out=out)

        def stage_one_worker() -> None:
            channel_stats.run(one, cache=args.cache, manifest=args.manifest, out=out)

        fns = {
            "per scene": lambda: _read_per_scene(args.cache, scenes),
            "whole arrays": lambda: _read_whole(args.cache, scenes),
            "channel_stats": stage,
            "channel_stats, 1 worker": stage_one_worker,
        }
        nbytes = {k: fns[k]() for k in ("per scene", "whole arrays")}  # warm-up
        stage()
        runs: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeat):
            for name, fn in fns.items():
                _time(fn, runs[name])
    n_scenes = sum(len(t) for t in scenes.values())
    print(f"cache {args.cache}: {len(scenes)} cells, {n_scenes} scenes with train windows")
    print(f"channel_stats: workers={workers} ({args.params}); {args.repeat} interleaved runs")
    print(f"  {'':26s} {'best':>8s} {'median':>8s}")
    for name, label in (
        ("per scene", "plain read, per scene"),
        ("whole arrays", "plain read, whole arrays"),
        ("channel_stats", "channel_stats stage"),
        ("channel_stats, 1 worker", "(stage on 1 worker)"),
    ):
        best, med = min(runs[name]) * 1e3, statistics.median(runs[name]) * 1e3
        extra = f"  ({nbytes[name] / 1e6:.1f} MB decoded)" if name in nbytes else ""
        print(f"  {label:26s} {best:6.1f}ms {med:6.1f}ms{extra}")
    for stat, how in ((min, "best"), (statistics.median, "median")):
        t = {k: stat(v) for k, v in runs.items()}
        base = min(t["per scene"], t["whole arrays"])
        print(
            f"ratio ({how} times, vs the faster plain read): {base / t['channel_stats']:.2f}x"
            f"  [vs per scene {t['per scene'] / t['channel_stats']:.2f}x]  (goal >= 0.8x)"
        )


if __name__ == "__main__":
    main()
