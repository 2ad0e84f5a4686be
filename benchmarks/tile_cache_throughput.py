"""Benchmark (b): tile_cache throughput against a bare rasterio decode of the same source pixels.

On the demo catalog at the default size (``params.yaml``'s ``demo_catalog``, written to a temporary
folder), in one process:

- **baseline**: a bare rasterio decode of the same source pixels: open every asset the cache reads
  (each item's ``tile_cache.bands`` and ``scl``, every date) and decode, at its native resolution,
  the window of it that the cells covering the item need (``src.read(1, window=...)``; the bounds
  of those cells in the asset's CRS, rounded out to whole pixels), each asset once; with one
  thread and with ``tile_cache.workers`` threads;
- **geogfm**: the ``tile_cache`` stage on the same items, into a fresh folder (reprojection,
  resampling, scale/offset, masks, merging, Zarr writing; ``tile_cache.workers`` threads);
- **odc-stac** (``--odc``, reference): ``odc.stac.load`` of the same items onto each cell, without
  conversion or writing.

Throughput is source pixels per second (the pixels of those windows, counted once); each ratio is
geogfm's throughput over the baseline's, from the medians of ``--repeats`` interleaved runs (the
spread, min..max, is printed too). ``--native`` keeps
only the items on the grid's own UTM zone (no reprojection: the aligned fast paths).
``--codecs`` compares Zarr codecs on a cell of the cache instead (the table in
``geogfm/data/tile_cache.py``). ``--breakdown`` runs the stage with one worker instead and says
where its time goes: planning, opening files, decoding, resampling plans, resampling, conversion
to cache DN, writing, and the rest (each part's own time, without the parts it calls).

    python benchmarks/tile_cache_throughput.py [--repeats 3] [--native] [--odc] [--codecs]
    python benchmarks/tile_cache_throughput.py --breakdown [--repeats 3]
    python benchmarks/tile_cache_throughput.py --floor [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geogfm.core.config import load_params  # noqa: E402
from geogfm.core.io import write_json  # noqa: E402
from geogfm.data.tile_cache import (  # noqa: E402
    SCL_BAND,
    band_sources,
    choose_epsg,
    item_epsg,
    plan_cells,
)
from geogfm.stages import demo_catalog, stac_query, tile_cache  # noqa: E402


def _needed(cfg, items: list[pystac.Item]) -> list[tuple[str, Window]]:
    """Each asset the cache reads, with the window of it that the cells need (native pixels)."""
    tc = cfg.tile_cache
    epsg = choose_epsg(items, tc.crs)
    cells = plan_cells(items, epsg=epsg, resolution=tc.resolution, cell_size=tc.cell_size)
    out = []
    for item in items:
        mine = [c.bounds for c in cells if item.id in c.item_ids]
        if not mine:
            continue
        left, bottom = min(b[0] for b in mine), min(b[1] for b in mine)
        right, top = max(b[2] for b in mine), max(b[3] for b in mine)
        for s in band_sources(item, tc.bands).values():
            with rasterio.open(s.href) as src:
                b = transform_bounds(f"EPSG:{epsg}", src.crs, left, bottom, right, top, 21)
                f = from_bounds(*b, transform=src.transform)
                c0, r0 = math.floor(f.col_off), math.floor(f.row_off)
                c1, r1 = math.ceil(f.col_off + f.width), math.ceil(f.row_off + f.height)
                c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, src.width), min(r1, src.height)
                w = Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))
            out.append((s.href, w))
    return out


def _decode(job: tuple[str, Window]) -> int:
    href, window = job
    with rasterio.open(href) as src:
        return src.read(1, window=window).size


def _baseline(jobs: list[tuple[str, Window]], threads: int) -> float:
    t = time.perf_counter()
    if threads == 1:
        for job in jobs:
            _decode(job)
    else:
        with cf.ThreadPoolExecutor(threads) as pool:
            list(pool.map(_decode, jobs))
    return time.perf_counter() - t


def _geogfm(cfg, items_json: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    tile_cache.run(cfg, items=items_json, out=out)
    return time.perf_counter() - t


class _Timers:
    """Own time of wrapped functions (a caller's excludes its wrapped callees'), one thread."""

    def __init__(self) -> None:
        self.own: dict[str, float] = {}
        self._stack: list[list[float]] = []  # per open call: [start, time of wrapped callees]

    def wrap(self, owner, attr: str, part: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, inner = self._stack.pop()
                spent = time.perf_counter() - start
                self.own[part] = self.own.get(part, 0.0) + spent - inner
                if self._stack:
                    self._stack[-1][1] += spent

        setattr(owner, attr, timed)


def _breakdown(cfg, items_json: Path, out: Path, repeats: int) -> None:
    from geogfm.data import tile_load, tile_reader, tile_resample
    from geogfm.stages import tile_cache as stage

    cfg.tile_cache.workers = 1  # one thread: the parts add up to the wall time
    timers = _Timers()
    for owner, attr, part in (
        (stage, "plan_cache", "planning the cache (items, footprints, cells)"),
        (tile_reader.rasterio, "open", "opening files"),
        (tile_reader.SourceCache, "_unit", "decoding"),
        (tile_load, "plan", "resampling plans"),
        (tile_resample.Plan, "resample", "resampling"),
        (tile_load, "to_cache_band", "conversion to cache DN"),
        (stage, "write_cell", "writing the Zarr stores"),
    ):
        timers.wrap(owner, attr, part)
    _geogfm(cfg, items_json, out)  # warm
    walls = []
    timers.own.clear()
    for _ in range(repeats):
        walls.append(_geogfm(cfg, items_json, out))
    wall = sum(walls) / repeats
    print(f"tile_cache with 1 worker: {wall:.3f} s a run (mean of {repeats}); own time a run:")
    for part, t in timers.own.items():
        print(f"  {part:48s} {t / repeats:6.3f} s  {100 * t / repeats / wall:5.1f} %")
    rest = wall - sum(timers.own.values()) / repeats
    print(f"  {'the rest (merging, masks, Python)':48s} {rest:6.3f} s  {100 * rest / wall:5.1f} %")


def _cell_arrays(cfg, items_json: Path) -> list:
    """Every cell's arrays as the stage builds them (``CellArrays``)."""
    from geogfm.data.tile_reader import SourceCache

    p = tile_cache.plan_cache(cfg, items_json)
    sources = SourceCache()
    try:
        results = [tile_cache.load_planned_cell(cfg, p, cell, sources) for cell in p.cells]
    finally:
        sources.close()
    return [r.arrays for r in results if r.arrays is not None]


def _write_raw(a, folder: Path) -> None:
    folder.mkdir()
    for t in range(a.refl.shape[0]):
        for name, arr in (("reflectance", a.refl), ("valid", a.valid), ("scl", a.scl)):
            (folder / f"{name}.{t}").write_bytes(np.ascontiguousarray(arr[t]).tobytes())


def _write_only(arrays: list, out: Path, threads: int, raw: bool) -> float:
    from geogfm.data.tile_store import write_cell

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()

    def one(a) -> None:
        if raw:
            _write_raw(a, out / a.cell.id)
        else:
            write_cell(a, str(out / f"{a.cell.id}.zarr"))

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, arrays))
    return time.perf_counter() - t


def _floor(cfg, items: list[pystac.Item], items_json: Path, root: Path, repeats: int) -> None:
    n = cfg.tile_cache.workers
    jobs = _needed(cfg, items)
    arrays = _cell_arrays(cfg, items_json)
    values = sum(a.refl.size for a in arrays)
    runs = {
        "decode": lambda k: _baseline(jobs, k),
        "zarr": lambda k: _write_only(arrays, root / "floor", k, raw=False),
        "raw": lambda k: _write_only(arrays, root / "floor", k, raw=True),
    }
    times: dict[tuple[str, int], list[float]] = {(w, k): [] for w in runs for k in (1, n)}
    for what, k in times:  # warm
        runs[what](k)
    for _ in range(repeats):
        for (what, k), ts in times.items():
            ts.append(runs[what](k))
    med = {key: float(np.median(ts)) for key, ts in times.items()}
    print(
        f"{len(arrays)} cells, {values / 1e6:.1f} M reflectance values and their masks;"
        f" median (min..max) of {repeats} interleaved runs, s"
    )
    print(f"{'':40s} {'1 thread':>20s} {f'{n} threads':>20s}")
    for what, label in (
        ("decode", "bare rasterio decode (the baseline)"),
        ("zarr", "writing the stage's Zarr stores"),
        ("raw", "writing the same arrays uncompressed"),
    ):
        cols = [
            f"{med[what, k]:.3f} ({min(times[what, k]):.3f}..{max(times[what, k]):.3f})"
            for k in (1, n)
        ]
        print(f"{label:40s} {cols[0]:>20s} {cols[1]:>20s}")
    d, w = med["decode", n], med["zarr", n]
    budget = n * d / 0.7
    used = med["decode", 1] + med["zarr", 1]
    print(
        f"goal 0.7x: the stage within {d / 0.7:.3f} s, {budget:.3f} CPU-s on {n} cores fully used;"
        f" decoding and writing (1-thread times) use {used:.3f} of them, leaving"
        f" {budget - used:.3f} for reprojecting, resampling, converting, masking,"
        f" merging and planning"
    )
    print(
        f"decoding, then writing, {n} threads each: {d / (d + w):.2f}x with the stage's stores,"
        f" {d / (d + med['raw', n]):.2f}x uncompressed"
    )


def _odc(cfg, items: list[pystac.Item]) -> float:
    import warnings

    import odc.stac
    from rasterio.errors import NotGeoreferencedWarning

    tc = cfg.tile_cache
    epsg = choose_epsg(items, tc.crs)
    cells = plan_cells(items, epsg=epsg, resolution=tc.resolution, cell_size=tc.cell_size)
    by_id = {i.id: i for i in items}
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for cell in cells:
            odc.stac.load(
                [by_id[i] for i in cell.item_ids],
                bands=[*tc.bands, SCL_BAND],
                geobox=cell.geobox,
                groupby=None,
                resampling={"*": tc.resampling, SCL_BAND: "nearest"},
                pool=tc.workers,
            )
    return time.perf_counter() - t


def _codecs(cache: Path) -> None:
    import xarray as xr

    stores = sorted(cache.glob("*.zarr"))
    cells = {p.name: xr.open_zarr(p, consolidated=False).reflectance.values for p in stores}
    name = max(cells, key=lambda k: np.count_nonzero(cells[k]))  # the fullest cell
    _codec_table(f"demo cell {name}", cells[name])
    # real imagery: the six BigEarthNet L2A patches, 12 bands stacked at 10 m, as (6, 12, 120, 120)
    stacked = ROOT / ".." / "shared" / "realdata" / "bigearthnet_s2l2a_patches" / "stacked_10m"
    if stacked.is_dir():
        real = []
        for path in sorted(stacked.glob("*.tif")):
            with rasterio.open(path) as src:
                real.append(src.read())
        _codec_table("BigEarthNet patches", np.stack(real).astype(np.uint16))


def _codec_table(what: str, a: np.ndarray) -> None:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    print(f"{what}: {a.shape} {a.dtype}, {a.nbytes / 1e6:.2f} MB raw, chunks of one time step")
    candidates = {
        "none": None,
        "zstd level 1": [ZstdCodec(level=1)],
        "zstd level 3": [ZstdCodec(level=3)],
        "blosc lz4 shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "blosc lz4 bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
        "blosc zstd-1 shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
    }
    print(f"{'codec':22s} {'size MB':>8s} {'write ms':>9s} {'read ms/chunk':>14s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, compressors in candidates.items():
            path = Path(tmp) / name.replace(" ", "_")
            writes, reads = [], []
            for _ in range(3):
                shutil.rmtree(path, ignore_errors=True)
                t = time.perf_counter()
                z = zarr.create_array(
                    path, shape=a.shape, chunks=(1, *a.shape[1:]), dtype=a.dtype,
                    compressors=compressors,
                )  # fmt: skip
                z[:] = a
                writes.append(time.perf_counter() - t)
                z = zarr.open_array(path, mode="r")
                t = time.perf_counter()
                for i in range(a.shape[0]):
                    np.asarray(z[i])
                reads.append((time.perf_counter() - t) / a.shape[0])
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            print(f"{name:22s} {size / 1e6:8.2f} {min(writes) * 1e3:9.1f} {min(reads) * 1e3:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--native", action="store_true", help="only items on the grid's zone")
    parser.add_argument("--odc", action="store_true", help="also time odc.stac.load")
    parser.add_argument("--codecs", action="store_true", help="compare Zarr codecs instead")
    parser.add_argument("--breakdown", action="store_true", help="where the stage's time goes")
    parser.add_argument("--floor", action="store_true", help="what decoding and writing take")
    args = parser.parse_args()
    cfg = load_params(args.params)
    cfg.stac_query.catalog = "demo"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo_catalog.run(cfg, out=root / "demo")
        stac_query.run(cfg, catalog_dir=root / "demo", out=root / "stac")
        items_json = root / "stac" / "items.json"
        items = list(pystac.ItemCollection.from_file(str(items_json)))
        if args.native:
            epsg = choose_epsg(items, cfg.tile_cache.crs)
            items = [i for i in items if item_epsg(i) == epsg]
            items_json = root / "stac" / "native.json"
            write_json(items_json, pystac.ItemCollection(items).to_dict())
        if args.codecs:
            tile_cache.run(cfg, items=items_json, out=root / "cache")
            _codecs(root / "cache")
            return
        if args.breakdown:
            _breakdown(cfg, items_json, root / "cache", args.repeats)
            return
        if args.floor:
            _floor(cfg, items, items_json, root, args.repeats)
            return

        jobs = _needed(cfg, items)
        pixels = sum(int(w.width * w.height) for _, w in jobs)
        whole = 0
        for h, _ in jobs:
            with rasterio.open(h) as src:
                whole += src.width * src.height
        workers = cfg.tile_cache.workers
        times: dict[str, list[float]] = {"decode 1": [], f"decode {workers}": [], "geogfm": []}
        if args.odc:
            times["odc"] = []
        _baseline(jobs, 1)  # warm the page cache
        _geogfm(cfg, items_json, root / "cache")  # and the imports
        for _ in range(args.repeats):
            times["decode 1"].append(_baseline(jobs, 1))
            times[f"decode {workers}"].append(_baseline(jobs, workers))
            times["geogfm"].append(_geogfm(cfg, items_json, root / "cache"))
            if args.odc:
                times["odc"].append(_odc(cfg, items))
        med = {k: float(np.median(v)) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        n_cells = len(list((root / "cache").glob("*.zarr")))

    print(
        f"demo catalog: {len(items)} items ({'one UTM zone' if args.native else 'two UTM zones'}),"
        f" {len(jobs)} assets, {pixels / 1e6:.2f} M source pixels needed (of {whole / 1e6:.2f} M);"
        f" {n_cells} cells; median of {args.repeats} interleaved runs; {os.cpu_count()} CPUs"
    )
    for name, label in (
        ("decode 1", "bare rasterio decode, 1 thread"),
        (f"decode {workers}", f"bare rasterio decode, {workers} threads"),
        ("geogfm", f"tile_cache, {workers} workers"),
        ("odc", f"odc.stac.load only, pool {workers}"),
    ):
        if name in med:
            spread = f"{min(times[name]):.3f}..{max(times[name]):.3f}"
            rate = pixels / med[name] / 1e6
            print(f"{label:38s} {med[name]:7.3f} s ({spread}) {rate:7.1f} Mpx/s")
    ratio_same = med[f"decode {workers}"] / med["geogfm"]
    ratio_one = med["decode 1"] / med["geogfm"]
    print(
        f"ratio tile_cache / bare decode, {workers} threads each: {ratio_same:.2f}x (goal >= 0.7x;"
        f" best of each: {best[f'decode {workers}'] / best['geogfm']:.2f}x)"
    )
    print(f"ratio tile_cache ({workers} workers) / bare decode, 1 thread: {ratio_one:.2f}x")


if __name__ == "__main__":
    main()
