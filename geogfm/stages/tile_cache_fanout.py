"""The tile cache as one job per cell: plan, build each cell, gather (``geogfm tile_cache`` modes).

For clusters, where a job is one node's share of the work (``snakemake --profile
workflow/profiles/slurm``): the stage's three modes split :func:`geogfm.stages.tile_cache.run`

* ``--plan --out data/cache_plan.json`` lists the cells (ids, items, a memory estimate for each
  job) and the plan's fingerprint, reading no pixel;
* ``--cell ID --out data/cache_cells/ID`` builds that cell: ``ID.zarr`` (none for a cell without a
  valid pixel) and ``ID.json``, its record with the plan's fingerprint; built in a temporary folder
  beside ``out`` and renamed into place, so ``out`` is complete or absent;
* ``--gather data/cache_cells --out data/cache`` checks that every cell of the plan is there and
  of this plan, hard-links their stores into the cache (no copy; a copy only where links cannot
  be made) and writes ``index.json``: the same files, byte for byte, as one process builds.

Each mode plans again from the items (cheap), so a cell built from other items, settings or code
is never gathered: its fingerprint differs and the gather names it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import rasterio

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_dir, write_json
from geogfm.data.tile_reader import GDAL_OPTIONS, SourceCache
from geogfm.stages import tile_cache as _tc
from geogfm.stages import tile_cache_staging as staging

__all__ = ["build_one", "cell_mem_mb", "gather", "write_plan"]

log = logging.getLogger(__name__)

_SHOWN = 20  # cell ids an error message lists at most


def cell_mem_mb(n_items: int, n_bands: int, cell_size: int) -> int:
    """A generous memory request (MB) for the job that builds one cell.

    The interpreter with its libraries (1 GB allowed; ~0.25 GB measured), the cell's arrays
    (uint16 reflectance, scl and mask for each of at most ``n_items`` time steps) three times over
    (the arrays, the dataset written from them, the compressed chunks), and one item's bands read
    as float64 at a time. Rounded up to 100 MB.
    """
    pixels = cell_size * cell_size
    arrays = 3 * n_items * (2 * n_bands + 2) * pixels
    reads = 2 * 8 * (n_bands + 1) * pixels
    return 100 * math.ceil((1000 + (arrays + reads) / 2**20) / 100)


def write_plan(cfg: GeoGFMConfig, *, items: Path, out: Path) -> dict[str, Any]:
    """Write the plan (``data/cache_plan.json``): the grid, and each cell with its items."""
    tc = cfg.tile_cache
    plan = _tc.plan_cache(cfg, items)
    cells = [
        {
            "id": c.id,
            "items": len(c.item_ids),
            "mem_mb": cell_mem_mb(len(c.item_ids), len(tc.bands), tc.cell_size),
        }
        for c in plan.cells
    ]
    write_json(
        out,
        {
            "crs": f"EPSG:{plan.epsg}",
            "resolution": tc.resolution,
            "cell_size": tc.cell_size,
            "bands": list(tc.bands),
            "cells": cells,
            "fingerprint": plan.fingerprint,
        },
    )
    log.info("tile_cache plan: %d cell(s) over %d item(s) -> %s", len(cells), len(plan.items), out)
    return {"crs": f"EPSG:{plan.epsg}", "cells": len(cells), "out": str(out)}


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOWN])
    return shown + (f", ... ({len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def build_one(cfg: GeoGFMConfig, *, items: Path, out: Path, cell: str) -> dict[str, Any]:
    """Build one cell of the plan into the folder ``out`` (replaced whole).

    Raises:
        DataError: if ``cell`` is not a cell of the plan (the message lists the valid ids); as
            :func:`geogfm.stages.tile_cache.run` for unreadable assets.
    """
    plan = _tc.plan_cache(cfg, items)
    by_id = {c.id: c for c in plan.cells}
    if cell not in by_id:
        raise DataError(
            f"unknown tile_cache cell {cell!r}: the plan of {items} has {len(by_id)} cell(s): "
            f"{_ids(list(by_id))}; pass one of them to --cell (`geogfm tile_cache --plan` lists "
            "them)"
        )
    out = Path(out)
    sources = SourceCache()
    _tc._quiet_rasterio()
    try:  # nothing half-written: out is whole or absent
        with atomic_dir(out) as tmp, rasterio.Env(**GDAL_OPTIONS):
            n_times, pixels, failed = _tc.build_cell(cfg, plan, by_id[cell], sources, tmp)
            record = {
                "id": cell,
                "n_times": n_times,
                "pixels": pixels,
                "failed": failed,
                "fingerprint": plan.fingerprint,
            }
            write_json(tmp / f"{cell}.json", record)
    finally:
        sources.close()
    log.info("tile_cache cell %s: %d time step(s) -> %s", cell, n_times, out)
    return {"cell": cell, "time_steps": n_times, "failed_reads": len(failed), "out": str(out)}


def gather(cfg: GeoGFMConfig, *, items: Path, out: Path, cells: Path) -> dict[str, Any]:
    """Assemble the cache ``out`` from the cells built into ``cells/<id>/`` (see :func:`build_one`).

    Raises:
        DataError: naming the cells that are missing or were built from another plan; as
            :func:`geogfm.stages.tile_cache.run` for the checks over every cell (unreadable
            items, no valid pixel).
    """
    tc = cfg.tile_cache
    out, cells = Path(out), Path(cells)
    plan = _tc.plan_cache(cfg, items)
    records, missing, stale = {}, [], []
    for c in plan.cells:
        path = cells / c.id / f"{c.id}.json"
        if not path.is_file():
            missing.append(c.id)
            continue
        rec = json.loads(path.read_text())
        if rec.get("fingerprint") != plan.fingerprint:
            stale.append(c.id)
        elif rec["n_times"] and not (cells / c.id / f"{c.id}.zarr").is_dir():
            missing.append(c.id)
        else:
            records[c.id] = rec
    if missing or stale:
        problems = []
        if missing:
            problems.append(f"{len(missing)} not built: {_ids(missing)}")
        if stale:
            problems.append(
                f"{len(stale)} built from another plan (the items, the tile_cache settings or the "
                f"code changed since): {_ids(stale)}"
            )
        raise DataError(
            f"cannot gather the tile cache from {cells}: of its {len(plan.cells)} cell(s), "
            f"{'; '.join(problems)}. Build each with `geogfm tile_cache --cell ID --out "
            f"{cells}/ID` (Snakemake does this with --config tile_cache_fanout=true)"
        )
    stage, done = staging.open_staging(out, plan.fingerprint)
    try:
        for cid, rec in records.items():
            if cid in done:
                continue
            if rec["n_times"]:
                staging.link_tree(cells / cid / f"{cid}.zarr", stage / f"{cid}.zarr")
            done[cid] = staging.record(stage, cid, rec["n_times"], rec["pixels"], rec["failed"])
        index = staging.index(tc, plan.epsg, plan.cells, plan.items, done, plan.fingerprint)
        write_json(stage / "index.json", index)
    except (DataError, ValueError):
        shutil.rmtree(stage, ignore_errors=True)
        raise
    staging.replace_staged(stage, out)
    summary = staging.summary(index, built=0, reused=len(plan.cells))
    log.info("tile_cache gathered %d cell(s) from %s: %s", len(plan.cells), cells, summary)
    return summary
