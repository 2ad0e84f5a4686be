"""``geogfm tile_cache``: every item's bands on one grid, one Zarr v3 store per grid cell.

Reads the ItemCollection that ``stac_query`` wrote (and the query bbox from the ``lock.json`` beside
it), chooses the grid, loads each cell (see :mod:`geogfm.data.tile_cache`) and writes
``<out>/<cell_id>.zarr`` plus ``<out>/index.json``. The folder is written under a temporary name and
renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import odc.stac
import pystac
from tqdm import tqdm

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_dir, write_json
from geogfm.data.stac import is_url
from geogfm.data.tile_cache import (
    CACHE_NODATA,
    CACHE_OFFSET,
    CACHE_SCALE,
    check_items,
    choose_epsg,
    load_cell,
    plan_cells,
    write_cell,
)

__all__ = ["run"]

log = logging.getLogger(__name__)


def _query_bbox(items_path: Path) -> list[float] | None:
    """The query bbox recorded in the ``lock.json`` beside ``items.json``, if any."""
    lock = items_path.with_name("lock.json")
    if not lock.is_file():
        return None
    bbox = json.loads(lock.read_text()).get("query", {}).get("bbox")
    return [float(v) for v in bbox] if bbox is not None else None


def run(cfg: GeoGFMConfig, *, items: Path, out: Path) -> dict[str, Any]:
    """Build the tile cache from a STAC ItemCollection.

    Args:
        cfg: the configuration; its ``tile_cache`` section is used.
        items: the ItemCollection (``data/stac/items.json``).
        out: the cache folder (``data/cache``), replaced whole.

    Returns:
        A summary: grid CRS, cells written, cells skipped for lack of valid pixels, time steps.

    Raises:
        FileNotFoundError: if ``items`` does not exist.
        DataError: if the items lack a band, do not overlap the query bbox, or no cell has a valid
            pixel.
    """
    tc = cfg.tile_cache
    items = Path(items)
    if not items.is_file():
        raise FileNotFoundError(f"ItemCollection {str(items)!r} not found; run `geogfm stac_query`")
    found = list(pystac.ItemCollection.from_file(str(items)))
    if not found:
        raise DataError(f"{items} holds no items; rerun `geogfm stac_query` with a wider query")
    check_items(found, tc.bands)
    bbox = _query_bbox(items)
    epsg = choose_epsg(found, tc.crs)
    cells = plan_cells(
        found, epsg=epsg, resolution=tc.resolution, cell_size=tc.cell_size, bbox=bbox
    )
    log.info(
        "grid EPSG:%d, %g m, %d cell(s) of %d px over %d item(s)",
        epsg, tc.resolution, len(cells), tc.cell_size, len(found),
    )  # fmt: skip
    if any(is_url(a.href) for i in found for a in i.assets.values()):
        odc.stac.configure_rio(cloud_defaults=True)
    entries, skipped = [], []
    with atomic_dir(out) as tmp:
        for cell in tqdm(cells, desc="tile_cache", unit="cell", disable=None):
            ds = load_cell(
                cell,
                found,
                bands=tc.bands,
                resampling=tc.resampling,
                mask_scl_classes=tc.mask_scl_classes,
                pool=min(4, os.cpu_count() or 1),
            )
            if ds is None:
                skipped.append(cell.id)
                continue
            write_cell(ds, str(tmp / f"{cell.id}.zarr"))
            entries.append(
                {
                    "id": cell.id,
                    "crs": cell.crs,
                    "bounds": list(cell.bounds),
                    "shape": list(cell.geobox.shape),
                    "n_times": ds.sizes["time"],
                }
            )
        if not entries:
            raise DataError(
                f"none of the {len(cells)} cell(s) has a valid pixel: all are nodata or masked by "
                f"tile_cache.mask_scl_classes={tc.mask_scl_classes}; widen the query or raise "
                "stac_query.max_cloud_cover"
            )
        index = {
            "cells": entries,
            "bands": list(tc.bands),
            "scale": CACHE_SCALE,
            "offset": CACHE_OFFSET,
            "nodata": CACHE_NODATA,
            "crs": f"EPSG:{epsg}",
            "resolution": tc.resolution,
            "cell_size": tc.cell_size,
            "mask_scl_classes": list(tc.mask_scl_classes),
        }
        write_json(tmp / "index.json", index)
    if skipped:
        log.info("skipped %d cell(s) without a valid pixel: %s", len(skipped), skipped)
    summary = {
        "crs": f"EPSG:{epsg}",
        "cells": len(entries),
        "skipped_cells": len(skipped),
        "time_steps": sum(e["n_times"] for e in entries),
    }
    log.info("tile_cache: %s", summary)
    return summary
