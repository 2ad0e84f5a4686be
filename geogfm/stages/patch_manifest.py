"""``patch_manifest`` stage: every patch window of the tile cache with its QA and spatial split.

Writes into ``out`` (default ``data/manifests/``):

- ``patches.parquet``: one row per kept (cell, time, window), columns
  :data:`geogfm.data.manifest.MANIFEST_COLUMNS`;
- ``split_audit.json``: rows and windows per split, blocks per split, the buffer, the rows dropped
  by ``min_valid_fraction`` and by the buffer, and the smallest train<->val footprint distance.

Windows are ``model.image_size`` pixels on a side and step by ``patch_manifest.stride`` (default:
the window side); the buffer defaults to the window side.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from geogfm.core.config import GeoGFMConfig
from geogfm.core.io import atomic_path
from geogfm.data.cache_reader import load_cache_index
from geogfm.data.manifest import build_manifest, write_manifest

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: GeoGFMConfig, *, cache: Path, out: Path) -> dict:
    """Build the patch manifest and its split audit.

    Args:
        cfg: the configuration (``patch_manifest`` and ``model.image_size`` are used).
        cache: the tile cache directory (``index.json`` + one Zarr store per cell).
        out: the manifests directory, for ``patches.parquet`` and ``split_audit.json``.

    Returns:
        A summary: rows per split, blocks per split, windows dropped for the buffer.

    Raises:
        FileNotFoundError: if the cache is missing.
        ValueError: if the chip size is larger than a cell.
        DataError: if no window passes ``min_valid_fraction`` or the split is impossible.
    """
    pm = cfg.patch_manifest
    size = cfg.model.image_size
    stride = pm.stride if pm.stride is not None else size
    buffer = pm.buffer if pm.buffer is not None else size
    log.info(
        "windows of model.image_size=%d px, stride %d px; blocks of %d px, buffer %d px",
        size,
        stride,
        pm.block_size,
        buffer,
    )
    index = load_cache_index(cache)
    manifest, audit = build_manifest(
        index,
        size=size,
        stride=stride,
        min_valid_fraction=pm.min_valid_fraction,
        cloud_scl_classes=pm.cloud_scl_classes,
        block_size=pm.block_size,
        val_fraction=pm.val_fraction,
        buffer=buffer,
        seed=pm.seed,
    )
    out = Path(out)
    # both files go to temporary names first and are renamed together at the end
    with (
        atomic_path(out / "patches.parquet") as tmp_manifest,
        atomic_path(out / "split_audit.json") as tmp_audit,
    ):
        write_manifest(manifest, tmp_manifest)
        tmp_audit.write_text(json.dumps(audit, indent=2, sort_keys=True) + "\n")
    return {
        "rows": len(manifest),
        "train": audit["rows"]["train"],
        "val": audit["rows"]["val"],
        "blocks": audit["n_blocks"],
        "dropped_for_buffer": audit["windows"]["dropped_for_buffer"],
        "min_distance_train_val_m": audit["min_distance_train_val_m"],
    }
