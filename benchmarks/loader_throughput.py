"""Benchmark (a): loader patches/s per worker, tile cache vs a numpy memmap vs rasterio on the COGs.

Builds a workspace with the real data stages (demo catalog, stac_query, tile_cache, patch_manifest,
channel_stats): all 12 Sentinel-2 bands cached, 224 x 224 px windows. Then loaders serve the same
patches (224 x 224 x 12 uint16 + a valid mask), each through a ``torch`` DataLoader with the same
batch size, workers (persistent, seeded) and shuffling:

- ``geogfm``: :func:`geogfm.data.loaders.build_dataloader`, as ``pretrain`` uses it (uint16 DN out;
  normalisation happens later, on the training device).
- ``memmap``: the same bytes (each cell's ``reflectance`` and ``valid`` arrays, uncompressed) in
  ``.npy`` files read through ``np.load(mmap_mode="r")``, a window copied out per sample, default
  collation. The files are in the page cache, like the Zarr chunks. ``memmap, batched`` reads a
  batch straight into one shared-memory tensor, as geogfm does: the strict baseline for geogfm's
  transport, shown beside it.
- ``rasterio``: windowed reads of the source COGs of each patch's item: the 12 band files at
  their native 10/20/60 m, resampled (bilinear) to the 224 x 224 window (through a ``WarpedVRT``
  onto the cell's CRS for items in another UTM zone), plus ``scl`` (nearest) for the valid mask,
  and the processing-baseline offset removed; files (and VRTs) opened once per worker. Days the
  tile cache merged from two items are read from the first (less work than the cache did).

Which comparison is the right one. The question (a) asks is what a *per-worker loader reading
random patches* costs, and the answer depends on one thing: whether a patch's pixels are still in a
cache from an earlier patch. Pretraining reads random patches from far more imagery than any
worker's cache holds (terabytes of COGs, or a tile cache of hundreds of GB, against a GDAL block
cache of 5 % of RAM, GDAL's default, or geogfm's 64 MiB chunk cache), so almost every patch misses
on both sides, and the work per patch is: decode its chunk (geogfm) vs decode its COG blocks and
resample and warp them (rasterio). This benchmark's workspace is small (about 40 MB decoded), so
with the default caches everything is cached after the warm-up epoch, which no real run sees. The
headline pair therefore takes cross-patch reuse away from *both* sides: geogfm with
``data.chunk_cache_mb: 0`` (every patch reads and decodes its chunk) against rasterio with a block
cache of ``--cold-gdal-mb`` (8 MiB: every block one patch reads, so the warper's repeated reads of
a block hit, as with the default cache, but little survives to the next random patch). The
baseline is not crippled: what it loses, the same cache hits, geogfm loses too.

The second pair is each side's default configuration on this small workspace, where every patch
is a cache hit: geogfm with its default 64 MiB chunk cache against rasterio with GDAL's default
block cache (``GDAL_CACHEMAX`` left unset: 5 % of RAM). It measures a dataset that fits in RAM, and
its ratio is lower: geogfm's read is then a copy out of a decoded chunk, and the batch's transport
from the worker weighs more. A new shared-memory tensor per batch costs ~1.2 ms a patch (the kernel
allocates and zeroes its pages on first touch), more than the read, so geogfm's workers reuse their
batch buffers once the main process lets them go (:mod:`geogfm.data.zarr_windows`); the line
``geogfm, 64 MiB chunk cache, fresh buffers`` is the same loader with that pool turned off (a new
buffer per batch, as before, and as the ``memmap, batched`` baseline still does), and the ratio of
the two is printed. ``reader only`` lines time the datasets in this process without a DataLoader.

Each loader runs one warm-up epoch (workers start, files enter the page cache), then ``--rounds``
rounds interleave one timed epoch of each (so load from other processes falls on all alike); the
median epoch gives patches/s, divided by the number of workers (the main process when 0). Printed:
the rates and the ratios geogfm/memmap (goal >= 0.5) and geogfm/rasterio (goal >= 10).
``--codec`` re-encodes the cache's arrays (and recomputes the statistics) to compare codecs.

Usage::

    .venv/bin/python benchmarks/loader_throughput.py                 # ~1 min on 2 cores
    .venv/bin/python benchmarks/loader_throughput.py --workers 2 --rounds 7 --codec none
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pystac
import rasterio
import torch
import zarr
from _loader_baselines import (
    BatchedMemmapPatches,
    MemmapPatches,
    RasterioPatches,
    _batch_as_is,
    gdal_worker,
    unpooled_worker,
    write_memmaps,
)
from torch.utils.data import DataLoader
from zarr.codecs import BloscCodec

from geogfm.core.config import DemoCatalogConfig, config_from_dict
from geogfm.data.datasets.sentinel2 import BANDS
from geogfm.data.datasets.stac_dataset import StacPatchDataset
from geogfm.data.loaders import build_dataloader, seed_worker
from geogfm.data.manifest import read_manifest, write_manifest
from geogfm.stages import channel_stats, demo_catalog, patch_manifest, stac_query, tile_cache

ALL_BANDS = [b.key for b in BANDS]
CHIP = 224


def build_workspace(root: Path, *, size: int, dates: list[str]) -> dict[str, Path]:
    """Run the data stages into ``root`` with 12 bands and 224 px windows (skipped if present)."""
    cfg = config_from_dict(
        {
            "demo_catalog": {"size": size, "dates": dates},
            "stac_query": {"max_cloud_cover": 100.0},
            "tile_cache": {"bands": ALL_BANDS, "cell_size": 256},
            "patch_manifest": {"stride": 32, "block_size": 256, "min_valid_fraction": 0.0},
            "model": {"image_size": CHIP},
            "data": {"bands": ALL_BANDS},
        }
    )
    p = {
        "demo": root / "data/demo",
        "stac": root / "data/stac",
        "cache": root / "data/cache",
        "manifests": root / "data/manifests",
        "manifest": root / "data/manifests/patches.parquet",
        "stats": root / "results/stats/channel_stats.json",
    }
    if not p["stats"].is_file():
        demo_catalog.run(cfg, out=p["demo"])
        stac_query.run(cfg, catalog_dir=p["demo"], out=p["stac"])
        tile_cache.run(cfg, items=p["stac"] / "items.json", out=p["cache"])
        patch_manifest.run(cfg, cache=p["cache"], out=p["manifests"])
        channel_stats.run(cfg, cache=p["cache"], manifest=p["manifest"], out=p["stats"])
    return p


# ------------------------------------------------------------------------------- baselines

#: ``--codec`` choices: compressors the cache's ``reflectance`` and ``valid`` arrays are rewritten
#: with ("stage": as the tile_cache stage wrote them).
CODECS = {
    "stage": None,
    "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "zstd1-shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
    "none": [],
}


def recompress(p: dict[str, Path], codec: str, root: Path) -> dict[str, Path]:
    """A copy of the cache with ``reflectance`` and ``valid`` re-encoded, and its statistics."""
    if CODECS[codec] is None:
        return p
    cache = root / f"cache-{codec}"
    if not cache.is_dir():
        shutil.copytree(p["cache"], cache)
        for store in sorted(cache.glob("*.zarr")):
            group = zarr.open_group(store, mode="r+")
            for name in ("reflectance", "valid"):
                old = group[name]
                data, attrs = old[:], old.attrs.asdict()
                dims, chunks, fill = old.metadata.dimension_names, old.chunks, old.fill_value
                del group[name]
                new = group.create_array(
                    name,
                    shape=data.shape,
                    dtype=data.dtype,
                    chunks=chunks,
                    compressors=CODECS[codec],
                    fill_value=fill,
                    dimension_names=dims,
                    attributes=attrs,
                )
                new[:] = data
    stats = root / f"channel_stats-{codec}.json"
    if not stats.is_file():
        cfg = config_from_dict({"tile_cache": {"bands": ALL_BANDS}, "model": {"image_size": CHIP}})
        channel_stats.run(cfg, cache=cache, manifest=p["manifest"], out=stats)
    return {**p, "cache": cache, "stats": stats}


# ---------------------------------------------------------------------------------- timing


def reader_rate(read, n_items: int, batch: int, rounds: int = 3) -> float:
    """Patches per second of ``read(indices)`` over shuffled batches, in this process (median)."""
    order = np.random.default_rng(0).permutation(n_items)
    batches = [order[i : i + batch].tolist() for i in range(0, n_items, batch)]
    rates = []
    for _ in range(rounds + 1):  # the first is a warm-up
        start = time.perf_counter()
        for b in batches:
            read(b)
        rates.append(n_items / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def _workers_cpu(loader) -> float:
    """CPU seconds used so far by ``loader``'s (persistent) worker processes, from ``/proc``."""
    total = 0
    for w in getattr(getattr(loader, "_iterator", None), "_workers", []):
        with open(f"/proc/{w.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def epoch_rate(loader) -> tuple[float, int, float]:
    """Patches per second of one pass over ``loader``, patches, and CPU seconds it took.

    The CPU time is the workers' (the main process's with no workers): on a shared machine it
    shows the work per patch that wall time, at the mercy of other processes, blurs.
    """
    n, start = 0, time.perf_counter()
    cpu0 = _workers_cpu(loader) if loader.num_workers else time.process_time()
    for batch in loader:
        n += len(batch["image"])
    cpu = (_workers_cpu(loader) if loader.num_workers else time.process_time()) - cpu0
    return n / (time.perf_counter() - start), n, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="reuse a workspace (default: temp)")
    ap.add_argument("--size", type=int, default=512, help="demo tile side, 10 m pixels")
    ap.add_argument("--dates", nargs="+", default=DemoCatalogConfig().dates, help="demo dates")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patches", type=int, default=96, help="patches per epoch, every loader")
    ap.add_argument("--cache-mb", type=int, default=64, help="geogfm chunk cache, 2nd pair")
    ap.add_argument("--cold-gdal-mb", type=int, default=8, help="GDAL cache of the 1st pair")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--codec", choices=sorted(CODECS), default="stage", help="re-encode the cache's arrays"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        p = build_workspace(root, size=args.size, dates=args.dates)
        p = recompress(p, args.codec, root)
        print(f"workspace {root} ready in {time.perf_counter() - t0:.0f} s")
        # every window, train and val alike, serves as a train patch: this is about throughput
        rows = read_manifest(p["manifest"]).sample(frac=1.0, random_state=0)
        rows = rows.head(args.patches).assign(split="train").reset_index(drop=True)
        subset = root / "bench_manifest.parquet"
        write_manifest(rows, subset)
        write_memmaps(p["cache"], sorted(set(rows["cell_id"])), root / "memmap")
        items = {i.id: i for i in pystac.ItemCollection.from_file(str(p["stac"] / "items.json"))}
        meta = p["cache"] / f"{rows['cell_id'][0]}.zarr" / "reflectance" / "zarr.json"
        meta = json.loads(meta.read_text())

        def loader(dataset, **kw):
            return DataLoader(
                dataset,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                persistent_workers=args.workers > 0,
                generator=torch.Generator().manual_seed(0),
                **{"worker_init_fn": seed_worker, **kw},
            )

        def geogfm(chunk_cache_mb: int, *, pooled: bool = True):
            cfg = config_from_dict(
                {
                    "tile_cache": {"bands": ALL_BANDS},
                    "data": {"bands": ALL_BANDS, "chunk_cache_mb": chunk_cache_mb},
                    "model": {"image_size": CHIP},
                }
            )
            data_cfg = cfg.data.model_copy(
                update={
                    "manifest": str(subset),
                    "cache_dir": str(p["cache"]),
                    "stats": str(p["stats"]),
                    "batch_size": args.batch_size,
                    "num_workers": args.workers,
                }
            )
            dl = build_dataloader(data_cfg, seed=0)[0]
            if not pooled:
                dl.worker_init_fn = unpooled_worker
            return dl

        def rasterio_loader(cache_mb: int | None):
            init = functools.partial(gdal_worker, cache_mb)
            return loader(RasterioPatches(rows, items), worker_init_fn=init)

        mb = args.cache_mb
        warm_geogfm, warm_rasterio = (
            f"geogfm, {mb} MiB chunk cache",
            "rasterio, default block cache",
        )
        loaders = {
            "geogfm, no chunk cache": geogfm(0),
            "memmap": loader(MemmapPatches(rows, root / "memmap")),
            "memmap, batched": loader(
                BatchedMemmapPatches(rows, root / "memmap"), collate_fn=_batch_as_is
            ),
            f"rasterio, {args.cold_gdal_mb} MiB block cache": rasterio_loader(args.cold_gdal_mb),
            warm_geogfm: geogfm(mb),
            f"{warm_geogfm}, fresh buffers": geogfm(mb, pooled=False),
            warm_rasterio: rasterio_loader(None),
        }
        print(
            f"{len(rows)} patches of {CHIP}x{CHIP}x{len(ALL_BANDS)} uint16 per epoch, batch "
            f"{args.batch_size}, {args.workers} worker(s); cache chunks "
            f"{meta['chunk_grid']['configuration']['chunk_shape']}, codecs "
            f"{[c['name'] for c in meta['codecs']]}; {args.rounds} rounds"
        )
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        cpu = dict.fromkeys(loaders, 0.0)  # CPU seconds over the timed rounds
        for dl in loaders.values():
            epoch_rate(dl)  # warm-up: workers start, files enter the page cache
        for _ in range(args.rounds):
            for name, dl in loaders.items():
                rate, n, seconds = epoch_rate(dl)
                rates[name].append(rate / max(args.workers, 1))
                cpu[name] += seconds / (n * args.rounds)
        median = {k: statistics.median(v) for k, v in rates.items()}
        where = "workers" if args.workers else "main process"
        for name, rate in median.items():
            epochs = ", ".join(f"{r:.0f}" for r in rates[name])
            print(
                f"  {name:>28}: {rate:7.1f} patches/s per worker  (epochs: {epochs}; "
                f"{1e3 * cpu[name]:.2f} CPU ms a patch in the {where})"
            )
        cold, cached = median["geogfm, no chunk cache"], median[warm_geogfm]
        print(
            f"geogfm / memmap   = {cold / median['memmap']:.2f}  (goal >= 0.5; no chunk cache; "
            f"vs memmap, batched: {cold / median['memmap, batched']:.2f})"
        )
        cold_rasterio = median[f"rasterio, {args.cold_gdal_mb} MiB block cache"]
        print(
            f"geogfm / rasterio = {cold / cold_rasterio:.1f}  (goal >= 10; random patches of a "
            f"dataset larger than the caches: no chunk cache vs {args.cold_gdal_mb} MiB block "
            "cache)"
        )
        print(
            f"defaults, workspace all in cache: geogfm / memmap = "
            f"{cached / median['memmap']:.2f}, geogfm / rasterio = "
            f"{cached / median[warm_rasterio]:.1f}  ({mb} MiB chunk cache vs GDAL's default)"
        )
        fresh = f"{warm_geogfm}, fresh buffers"
        print(
            f"reused / fresh batch buffers = {cached / median[fresh]:.2f}"
            f"  ({mb} MiB chunk cache; {args.workers} worker(s))"
        )
        print(
            "by CPU time a patch (patches per CPU second): defaults geogfm / rasterio = "
            f"{cpu[warm_rasterio] / cpu[warm_geogfm]:.1f}, reused / fresh batch buffers = "
            f"{cpu[fresh] / cpu[warm_geogfm]:.2f}"
        )

        # the readers alone, in this process (no DataLoader, no transport); rasterio last, as
        # GDAL's cache size is set for the whole process
        shown = {}
        for cache_mb in (0, mb):
            patches = StacPatchDataset(
                subset,
                p["cache"],
                split="train",
                bands=ALL_BANDS,
                units="dn",
                chunk_cache_bytes=cache_mb * 2**20,
            )
            shown[f"geogfm, {cache_mb} MiB chunk cache"] = reader_rate(
                patches.__getitems__, len(rows), args.batch_size
            )
        ds = RasterioPatches(rows, items)
        shown["rasterio, default block cache"] = reader_rate(
            lambda b: [ds[i] for i in b], len(rows), args.batch_size
        )
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", args.cold_gdal_mb * 2**20)
        ds = RasterioPatches(rows, items)
        shown[f"rasterio, {args.cold_gdal_mb} MiB block cache"] = reader_rate(
            lambda b: [ds[i] for i in b], len(rows), args.batch_size
        )
        for name, rate in shown.items():
            print(f"  reader only, {name:>28}: {rate:7.1f} patches/s")


if __name__ == "__main__":
    main()
