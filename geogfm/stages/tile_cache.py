"""``geogfm tile_cache``: every item's bands on one grid, one Zarr v3 store per grid cell.

Reads the ItemCollection that ``stac_query`` wrote (and the query bbox from the ``lock.json`` beside
it), chooses the grid, builds the cells (see :mod:`geogfm.data.tile_cache`) in parallel,
``tile_cache.workers`` threads with a progress bar, and writes ``<out>/<cell_id>.zarr`` plus
``<out>/index.json``.

Nothing half-written, and a killed run resumes. Cells are built in a staging folder beside the
output, ``.<out>.partial``: each store under a temporary name, renamed when complete, then a small
record ``<cell_id>.json``. When every cell is done the index is written there and the staging folder
replaces the output whole, so a killed run leaves the old output (or none) and the staging folder.
The next run with the same plan (the items, the grid and the settings that shape the pixels: the
``fingerprint`` in ``index.json``) keeps the cells that are done and builds only the missing ones;
so does a run over a complete output that lacks some stores (the others are hard-linked into the
staging folder, not copied). Cells that left an unreadable item out are rebuilt. A bad input the
stage reports itself (an unreadable asset, too many of them, no valid pixel anywhere) removes the
staging folder too.

On clusters the same cache is built one job per cell: ``--plan``, ``--cell ID`` and ``--gather``
(see :mod:`geogfm.stages.tile_cache_fanout`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
import rasterio
from odc.geo.geom import Geometry
from rasterio.errors import NotGeoreferencedWarning
from tqdm import tqdm

from geogfm.core.config import GeoGFMConfig, TileCacheConfig
from geogfm.core.errors import DataError
from geogfm.core.io import write_json
from geogfm.data import tile_cache as _tile_cache
from geogfm.data import tile_items as _tile_items
from geogfm.data import tile_load as _tile_load
from geogfm.data import tile_plan as _tile_plan
from geogfm.data import tile_reader as _tile_reader
from geogfm.data import tile_resample as _tile_resample
from geogfm.data import tile_store as _tile_store
from geogfm.data.datasets import sentinel2 as _sentinel2
from geogfm.data.tile_cache import (
    Cell,
    check_items,
    choose_epsg,
    item_footprints,
    plan_cells,
)
from geogfm.data.tile_load import CellResult, load_cell
from geogfm.data.tile_reader import GDAL_OPTIONS, BandSource, SourceCache
from geogfm.data.tile_store import write_cell
from geogfm.stages import tile_cache_staging as staging

__all__ = ["CachePlan", "build_cell", "load_planned_cell", "plan_cache", "run"]

log = logging.getLogger(__name__)

_FORMAT = 3  # of the cells' content; part of the fingerprint, so a new format rebuilds old cells
_PIXEL_CODE = (
    _tile_cache, _tile_items, _tile_load, _tile_plan, _tile_reader, _tile_resample, _tile_store,
    _sentinel2, sys.modules[__name__],
)  # fmt: skip


def _query_bbox(items_path: Path) -> list[float] | None:
    """The query bbox recorded in the ``lock.json`` beside ``items.json``, if any."""
    lock = items_path.with_name("lock.json")
    if not lock.is_file():
        return None
    bbox = json.loads(lock.read_text()).get("query", {}).get("bbox")
    return [float(v) for v in bbox] if bbox is not None else None


def _fingerprint(
    tc: TileCacheConfig,
    epsg: int,
    cells: Sequence[Cell],
    items: Sequence[pystac.Item],
    sources: dict[str, dict[str, BandSource]],
) -> str:
    """A hash of everything that decides a cell's pixels (not of where the files are).

    The plan (grid, settings, cells, items and their encodings, file sizes) and the source of the
    modules that make the pixels: a cell built by other code is never reused.
    """

    def size(href: str) -> int | None:
        return os.path.getsize(href) if os.path.isfile(href) else None

    code = hashlib.sha256()
    for module in _PIXEL_CODE:  # the code that makes the cells' pixels
        code.update(Path(module.__file__).read_bytes())
    plan = {
        "format": _FORMAT,
        "code": code.hexdigest(),
        "grid": [epsg, tc.resolution, tc.cell_size],
        "settings": [tc.bands, tc.resampling, sorted(tc.mask_scl_classes)],
        "cells": [[c.id, list(c.item_ids)] for c in cells],
        "items": {
            i.id: [
                i.datetime.isoformat() if i.datetime else None,
                i.properties.get("platform"),
                {
                    k: [s.asset, os.path.basename(s.href), size(s.href), s.bidx]
                    + [s.scale, s.offset, s.nodata]
                    for k, s in sorted(sources[i.id].items())
                },
            ]
            for i in items
        },
    }
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------- run


_env = threading.local()


def _enter_gdal_env() -> None:
    # once per worker thread, for the datasets it opens (rasterio's Env is per thread)
    _env.env = rasterio.Env(**GDAL_OPTIONS)
    _env.env.__enter__()


def _quiet_rasterio() -> None:
    # rasterio's warp, run from several threads, now and then reports its in-memory destination as
    # "not georeferenced" before setting its transform; the output is right (the tests compare it
    # with a plain GDAL warp), see opendatacube/odc-geo#131. warnings.catch_warnings is not
    # thread-safe, so the filter is process-wide, and for that message only.
    warnings.filterwarnings(
        "ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning
    )


@dataclass(frozen=True)
class CachePlan:
    """What a tile cache of these items holds, before any pixel is read."""

    items: list[pystac.Item]  #: the ItemCollection's items
    sources: dict[str, dict[str, BandSource]]  #: item id -> band -> where it is
    epsg: int  #: the grid CRS
    footprints: dict[str, Geometry]  #: item id -> footprint in the grid CRS
    cells: list[Cell]  #: top row first, left to right
    fingerprint: str  #: hash of everything that decides the cells' pixels (see ``index.json``)


def _read_items(path: Path) -> list[pystac.Item]:
    """The items of an ItemCollection file; a file that is not one is a DataError naming it.

    As ``pystac.ItemCollection.from_file``, without the copy of every item its constructor makes
    after parsing them (the demo's 12 items: 6 ms instead of 9).
    """
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not JSON ({e}); rerun `geogfm stac_query`") from None
    if not pystac.ItemCollection.is_item_collection(doc):
        raise DataError(
            f"{path} is not a STAC ItemCollection (a FeatureCollection of items); give the "
            "items.json that `geogfm stac_query` writes"
        )
    return [pystac.Item.from_dict(f, preserve_dict=False) for f in doc.get("features", [])]


def plan_cache(cfg: GeoGFMConfig, items: Path) -> CachePlan:
    """Check the items and plan the grid and its cells (reads no pixel).

    Raises:
        FileNotFoundError, ValueError, DataError: as :func:`run`, for the checks made before any
            cell is built.
    """
    tc = cfg.tile_cache
    items = Path(items)
    if not items.is_file():
        raise FileNotFoundError(f"ItemCollection {str(items)!r} not found; run `geogfm stac_query`")
    found = _read_items(items)
    if not found:
        raise DataError(f"{items} holds no items; rerun `geogfm stac_query` with a wider query")
    srcs = check_items(found, tc.bands)
    bbox = _query_bbox(items)
    epsg = choose_epsg(found, tc.crs)
    footprints = item_footprints(found, epsg)
    cells = plan_cells(
        found, epsg=epsg, resolution=tc.resolution, cell_size=tc.cell_size, bbox=bbox,
        footprints=footprints,
    )  # fmt: skip
    fingerprint = _fingerprint(tc, epsg, cells, found, srcs)
    return CachePlan(found, srcs, epsg, footprints, cells, fingerprint)


def load_planned_cell(
    cfg: GeoGFMConfig, plan: CachePlan, cell: Cell, sources: SourceCache
) -> CellResult:
    """A cell of the plan loaded with ``cfg.tile_cache``'s settings, as :func:`build_cell` does."""
    tc = cfg.tile_cache
    return load_cell(
        cell,
        plan.items,
        sources=sources,
        band_srcs=plan.sources,
        bands=tc.bands,
        resampling=tc.resampling,
        mask_scl_classes=tc.mask_scl_classes,
        fail_on_error=tc.fail_on_error,
        footprints=plan.footprints,
    )


def build_cell(
    cfg: GeoGFMConfig, plan: CachePlan, cell: Cell, sources: SourceCache, dest: Path
) -> tuple[int, int, list[dict]]:
    """Build one cell: ``<dest>/<cell id>.zarr``, written under a temporary name, then renamed.

    No store is written for a cell without a valid pixel. ``dest`` must hold no store of that name.

    Returns:
        The cell's time steps, its pixels with data, and the reads that failed (as dicts).
    """
    result = load_planned_cell(cfg, plan, cell, sources)
    n_times = 0
    if result.arrays is not None:
        tmp = dest / f".{cell.id}.zarr.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write_cell(result.arrays, str(tmp))
        os.replace(tmp, dest / f"{cell.id}.zarr")
        n_times = len(result.arrays.times)
    log.debug("cell %s: %d time step(s), %s", cell.id, n_times, result.stats)
    return n_times, result.pixels_with_data, [f.__dict__ for f in result.failed]


def run(
    cfg: GeoGFMConfig,
    *,
    items: Path,
    out: Path,
    plan: bool = False,
    cell: str | None = None,
    gather: Path | None = None,
) -> dict[str, Any]:
    """Build the tile cache from a STAC ItemCollection.

    By default every cell, in this process. The other modes split that work into jobs, one per
    cell (see :mod:`geogfm.stages.tile_cache_fanout`): ``plan`` writes the list of cells to
    ``out``; ``cell`` builds that one cell into the folder ``out``; ``gather`` assembles the cache
    ``out`` from the folder of finished cells, the same bytes as a run in one process.

    Args:
        cfg: the configuration; its ``tile_cache`` section is used.
        items: the ItemCollection (``data/stac/items.json``).
        out: the cache folder (``data/cache``), replaced whole; in the modes, what they write.
        plan: write the plan (a JSON file) to ``out`` instead.
        cell: build only this cell, into the folder ``out``.
        gather: assemble ``out`` from the cells built into this folder.

    Returns:
        A summary: grid CRS, cells written, built and reused, cells skipped for lack of valid
        pixels, time steps, items skipped as unreadable (in ``plan`` and ``cell`` mode, what
        they wrote).

    Raises:
        FileNotFoundError: if ``items`` does not exist.
        ValueError: if ``tile_cache.crs`` is not a known projected CRS, or more than one mode is
            given.
        DataError: if the items lack a band, do not overlap the query bbox, declare an unknown CRS;
            if an asset cannot be read (``fail_on_error``) or more than ``max_failed_fraction`` of
            the items cannot; if an scl layer holds unknown classes; or if no cell has a valid
            pixel. In the modes: an unknown ``cell``, or cells missing from ``gather``.
    """
    modes = {"plan": plan, "cell": cell is not None, "gather": gather is not None}
    if sum(modes.values()) > 1:
        given = [k for k, v in modes.items() if v]
        raise ValueError(f"tile_cache modes {given} exclude each other; give at most one")
    if any(modes.values()):
        from geogfm.stages import tile_cache_fanout as fanout

        if plan:
            return fanout.write_plan(cfg, items=items, out=out)
        if cell is not None:
            return fanout.build_one(cfg, items=items, out=out, cell=cell)
        return fanout.gather(cfg, items=items, out=out, cells=Path(gather))
    tc = cfg.tile_cache
    out = Path(out)
    p = plan_cache(cfg, items)
    cells, epsg = p.cells, p.epsg
    stage, done = staging.open_staging(out, p.fingerprint)
    todo = [c for c in cells if c.id not in done]
    log.info(
        "grid EPSG:%d, %g m, %d cell(s) of %d px over %d item(s); %d to build, %d done",
        epsg, tc.resolution, len(cells), tc.cell_size, len(p.items), len(todo), len(done),
    )  # fmt: skip

    sources = SourceCache()

    def build(cell: Cell) -> dict:
        n_times, pixels, failed = build_cell(cfg, p, cell, sources, stage)
        return staging.record(stage, cell.id, n_times, pixels, failed)

    _quiet_rasterio()
    try:
        with cf.ThreadPoolExecutor(tc.workers, initializer=_enter_gdal_env) as pool:
            futures = [pool.submit(build, c) for c in todo]
            try:
                bar = tqdm(cf.as_completed(futures), total=len(cells), initial=len(done),
                           desc="tile_cache", unit="cell", disable=None)  # fmt: skip
                for future in bar:
                    rec = future.result()
                    done[rec["id"]] = rec
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        index = staging.index(tc, epsg, cells, p.items, done, p.fingerprint)
        write_json(stage / "index.json", index)
    except (DataError, ValueError):
        shutil.rmtree(stage, ignore_errors=True)  # bad input: no partial output; KeyboardInterrupt
        raise  # and crashes keep the staging folder for the next run to resume
    finally:
        sources.close()
    staging.replace_staged(stage, out)
    summary = staging.summary(index, built=len(todo), reused=len(cells) - len(todo))
    log.info("tile_cache: %s", summary)
    return summary
