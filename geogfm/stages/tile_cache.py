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
from pathlib import Path
from typing import Any

import pystac
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from tqdm import tqdm

from geogfm.core.config import GeoGFMConfig, TileCacheConfig
from geogfm.core.errors import DataError
from geogfm.core.io import replace_dir, write_json
from geogfm.data import tile_cache as _tile_cache
from geogfm.data import tile_items as _tile_items
from geogfm.data import tile_load as _tile_load
from geogfm.data import tile_reader as _tile_reader
from geogfm.data import tile_resample as _tile_resample
from geogfm.data import tile_store as _tile_store
from geogfm.data.datasets import sentinel2 as _sentinel2
from geogfm.data.tile_cache import (
    CACHE_NODATA,
    CACHE_OFFSET,
    CACHE_SCALE,
    Cell,
    check_items,
    choose_epsg,
    item_footprints,
    plan_cells,
)
from geogfm.data.tile_load import load_cell
from geogfm.data.tile_reader import GDAL_OPTIONS, BandSource, SourceCache
from geogfm.data.tile_store import write_cell

__all__ = ["run"]

log = logging.getLogger(__name__)

_FORMAT = 3  # of the cells' content; part of the fingerprint, so a new format rebuilds old cells
_PIXEL_CODE = (
    _tile_cache, _tile_items, _tile_load, _tile_reader, _tile_resample, _tile_store, _sentinel2,
    sys.modules[__name__],
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


# ------------------------------------------------------------------------------------ staging


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` into ``dst`` (copy where links are not possible)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link)
    os.replace(tmp, dst)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _open_staging(out: Path, fingerprint: str) -> tuple[Path, dict[str, dict]]:
    """The staging folder with this plan's finished cells, and their records (by cell id)."""
    stage = out.parent / f".{out.name}.partial"
    plan = stage / "plan.json"
    if stage.is_dir() and (
        not plan.is_file() or json.loads(plan.read_text()).get("fingerprint") != fingerprint
    ):
        log.info("staging folder %s is from another plan: starting afresh", stage)
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    write_json(plan, {"fingerprint": fingerprint})
    records = {}
    for path in stage.glob("*.json"):
        if path.name == "plan.json":
            continue
        rec = json.loads(path.read_text())
        if rec["failed"] or (rec["n_times"] and not (stage / f"{rec['id']}.zarr").is_dir()):
            continue  # rebuild: an item was left out, or the store is gone
        records[rec["id"]] = rec
    for path in stage.iterdir():  # what a killed run left half-written: temporaries, unrecorded
        if path.name.startswith(".") or (path.suffix == ".zarr" and path.stem not in records):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    # a finished output of the same plan: its stores count as done (linked, not copied)
    index_path = out / "index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") == fingerprint and not index.get("failed_items"):
            for entry in index["cells"]:
                cid, store = entry["id"], out / f"{entry['id']}.zarr"
                if cid in records or not store.is_dir():
                    continue
                _link_tree(store, stage / store.name)
                records[cid] = _record(stage, cid, entry["n_times"], entry.get("pixels", 0), [])
            for cid in index.get("skipped_cells", []):
                records.setdefault(cid, _record(stage, cid, 0, 0, []))
    return stage, records


def _record(stage: Path, cid: str, n_times: int, pixels: int, failed: list) -> dict:
    rec = {"id": cid, "n_times": n_times, "pixels": pixels, "failed": failed}
    write_json(stage / f"{cid}.json", rec)
    return rec


def _replace(stage: Path, out: Path) -> None:
    """Move the finished staging folder into place, replacing ``out`` whole."""
    for path in stage.glob("*.json"):
        if path.name != "index.json":
            path.unlink()
    replace_dir(stage, out)


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


def run(cfg: GeoGFMConfig, *, items: Path, out: Path) -> dict[str, Any]:
    """Build the tile cache from a STAC ItemCollection.

    Args:
        cfg: the configuration; its ``tile_cache`` section is used.
        items: the ItemCollection (``data/stac/items.json``).
        out: the cache folder (``data/cache``), replaced whole.

    Returns:
        A summary: grid CRS, cells written, built and reused, cells skipped for lack of valid
        pixels, time steps, items skipped as unreadable.

    Raises:
        FileNotFoundError: if ``items`` does not exist.
        ValueError: if ``tile_cache.crs`` is not a known projected CRS.
        DataError: if the items lack a band, do not overlap the query bbox, declare an unknown CRS;
            if an asset cannot be read (``fail_on_error``) or more than ``max_failed_fraction`` of
            the items cannot; if an scl layer holds unknown classes; or if no cell has a valid
            pixel.
    """
    tc = cfg.tile_cache
    items = Path(items)
    out = Path(out)
    if not items.is_file():
        raise FileNotFoundError(f"ItemCollection {str(items)!r} not found; run `geogfm stac_query`")
    found = list(pystac.ItemCollection.from_file(str(items)))
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
    stage, done = _open_staging(out, fingerprint)
    todo = [c for c in cells if c.id not in done]
    log.info(
        "grid EPSG:%d, %g m, %d cell(s) of %d px over %d item(s); %d to build, %d done",
        epsg, tc.resolution, len(cells), tc.cell_size, len(found), len(todo), len(done),
    )  # fmt: skip

    sources = SourceCache()

    def build(cell: Cell) -> dict:
        result = load_cell(
            cell,
            found,
            sources=sources,
            band_srcs=srcs,
            bands=tc.bands,
            resampling=tc.resampling,
            mask_scl_classes=tc.mask_scl_classes,
            fail_on_error=tc.fail_on_error,
            footprints=footprints,
        )
        n_times = 0
        if result.dataset is not None:
            tmp = stage / f".{cell.id}.zarr.tmp-{os.getpid()}-{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            write_cell(result.dataset, str(tmp))
            os.replace(tmp, stage / f"{cell.id}.zarr")  # (no store there: see _open_staging)
            n_times = result.dataset.sizes["time"]
        failed = [f.__dict__ for f in result.failed]
        log.debug("cell %s: %d time step(s), %s", cell.id, n_times, result.stats)
        return _record(stage, cell.id, n_times, result.pixels_with_data, failed)

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
        index = _index(tc, epsg, cells, found, done, fingerprint)
        write_json(stage / "index.json", index)
    except (DataError, ValueError):
        shutil.rmtree(stage, ignore_errors=True)  # bad input: no partial output; KeyboardInterrupt
        raise  # and crashes keep the staging folder for the next run to resume
    finally:
        sources.close()
    _replace(stage, out)
    summary = {
        "crs": f"EPSG:{epsg}",
        "cells": len(index["cells"]),
        "built": len(todo),
        "reused": len(cells) - len(todo),
        "skipped_cells": len(index["skipped_cells"]),
        "time_steps": sum(e["n_times"] for e in index["cells"]),
        "failed_items": len({f["item"] for f in index["failed_items"]}),
    }
    log.info("tile_cache: %s", summary)
    return summary


def _index(
    tc: TileCacheConfig,
    epsg: int,
    cells: Sequence[Cell],
    items: Sequence[pystac.Item],
    done: dict[str, dict],
    fingerprint: str,
) -> dict[str, Any]:
    """``index.json``, after the checks that need every cell: failures and valid pixels."""
    failed = sorted(
        {tuple(f.values()) for r in done.values() for f in r["failed"]}
    )  # (item, asset, href, error)
    failed_items = sorted({f[0] for f in failed})
    if failed_items:
        fraction = len(failed_items) / len(items)
        log.warning(
            "skipped %d of %d item(s) (%.1f %%) with unreadable assets: %s",
            len(failed_items), len(items), 100 * fraction, failed_items[:10],
        )  # fmt: skip
        if fraction > tc.max_failed_fraction:
            item, asset, href, error = failed[0]
            raise DataError(
                f"{len(failed_items)} of {len(items)} item(s) ({100 * fraction:.1f} %) have "
                f"assets that cannot be read, more than tile_cache.max_failed_fraction="
                f"{tc.max_failed_fraction}; e.g. item {item!r} asset {asset!r} ({href}): {error}. "
                "Download them again (rerun stac_query), or raise tile_cache.max_failed_fraction"
            )
    entries = [
        {
            "id": c.id,
            "crs": c.crs,
            "bounds": list(c.bounds),
            "shape": list(c.geobox.shape),
            "n_times": done[c.id]["n_times"],
        }
        for c in cells
        if done[c.id]["n_times"]
    ]
    skipped = [c.id for c in cells if not done[c.id]["n_times"]]
    if not entries:
        if not any(done[c.id]["pixels"] for c in cells):
            reason = (
                "every pixel of every item is nodata there (all-nodata or empty assets, or "
                "footprints that claim data where the files have none); check the assets, or "
                "move stac_query.bbox over data"
            )
        else:
            reason = (
                f"all are nodata or masked by tile_cache.mask_scl_classes={tc.mask_scl_classes}; "
                "widen the query or raise stac_query.max_cloud_cover"
            )
        raise DataError(f"none of the {len(cells)} cell(s) has a valid pixel: {reason}")
    if skipped:
        log.info("skipped %d cell(s) without a valid pixel: %s", len(skipped), skipped)
    return {
        "cells": entries,
        "bands": list(tc.bands),
        "scale": CACHE_SCALE,
        "offset": CACHE_OFFSET,
        "nodata": CACHE_NODATA,
        "crs": f"EPSG:{epsg}",
        "resolution": tc.resolution,
        "cell_size": tc.cell_size,
        "mask_scl_classes": list(tc.mask_scl_classes),
        "skipped_cells": skipped,
        "failed_items": [
            dict(zip(("item", "asset", "href", "error"), f, strict=True)) for f in failed
        ],
        "fingerprint": fingerprint,
    }
