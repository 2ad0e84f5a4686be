"""The tile cache's staging folder: finished cells kept across killed runs, then the index.

Used by :mod:`geogfm.stages.tile_cache` (cells built in this process) and
:mod:`geogfm.stages.tile_cache_fanout` (cells built by other jobs, linked in): ``.<out>.partial``
beside the output holds each finished cell's store and record; :func:`index` checks what needs
every cell and writes ``index.json``'s content; :func:`replace_staged` puts the folder in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac

from geogfm.core.config import TileCacheConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_dir, replace_dir, write_json
from geogfm.data.tile_cache import CACHE_NODATA, CACHE_OFFSET, CACHE_SCALE, Cell

__all__ = ["index", "link_tree", "open_staging", "record", "replace_staged", "summary"]

log = logging.getLogger("geogfm.stages.tile_cache")


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` into ``dst`` (copy where links are not possible)."""
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=_link, dirs_exist_ok=True)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def open_staging(out: Path, fingerprint: str) -> tuple[Path, dict[str, dict]]:
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
                link_tree(store, stage / store.name)
                records[cid] = record(stage, cid, entry["n_times"], entry.get("pixels", 0), [])
            for cid in index.get("skipped_cells", []):
                records.setdefault(cid, record(stage, cid, 0, 0, []))
    return stage, records


def record(stage: Path, cid: str, n_times: int, pixels: int, failed: list) -> dict:
    rec = {"id": cid, "n_times": n_times, "pixels": pixels, "failed": failed}
    write_json(stage / f"{cid}.json", rec)
    return rec


def replace_staged(stage: Path, out: Path) -> None:
    """Move the finished staging folder into place, replacing ``out`` whole."""
    for path in stage.glob("*.json"):
        if path.name != "index.json":
            path.unlink()
    replace_dir(stage, out)


def summary(index: dict[str, Any], *, built: int, reused: int) -> dict[str, Any]:
    return {
        "crs": index["crs"],
        "cells": len(index["cells"]),
        "built": built,
        "reused": reused,
        "skipped_cells": len(index["skipped_cells"]),
        "time_steps": sum(e["n_times"] for e in index["cells"]),
        "failed_items": len({f["item"] for f in index["failed_items"]}),
    }


def index(
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
