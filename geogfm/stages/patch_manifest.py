"""``patch_manifest`` stage: every patch window of the tile cache with its QA and spatial split.

Writes into ``out`` (default ``data/manifests/``):

- ``patches.parquet``: one row per kept (cell, time, window), columns
  :data:`geogfm.data.manifest.MANIFEST_COLUMNS`;
- ``split_audit.json``: rows and windows per split, blocks per split, the buffer, the rows dropped
  by the thresholds and by the buffer, the smallest distances between splits, and the result of the
  independent audit (:func:`geogfm.data.split_audit.audit_manifest`) of the written rows.

Windows are ``model.image_size`` pixels on a side and step by ``patch_manifest.stride`` (default:
the window side); the buffer between splits defaults to the window side and may not be smaller. The
manifest is written to a temporary file, read back and audited; if the audit finds a validation or
test patch within the buffer of a patch of another split, the stage fails and writes nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import ConfigError
from geogfm.core.io import atomic_path
from geogfm.data.cache_reader import load_cache_index
from geogfm.data.manifest import build_manifest, read_manifest, write_manifest
from geogfm.data.split_audit import audit_manifest

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: GeoGFMConfig, *, cache: Path, out: Path) -> dict:
    """Build the patch manifest, audit its split, and write both.

    Args:
        cfg: the configuration (``patch_manifest`` and ``model.image_size`` are used).
        cache: the tile cache directory (``index.json`` + one Zarr store per cell).
        out: the manifests directory, for ``patches.parquet`` and ``split_audit.json``.

    Returns:
        A summary: rows per split, blocks, windows dropped for the buffer, smallest distances.

    Raises:
        ConfigError: if ``patch_manifest.buffer`` is smaller than the chip size.
        FileNotFoundError: if the cache is missing.
        ValueError: if the chip size is larger than a cell.
        DataError: if no window passes the thresholds, the split is impossible, or the audit of
            the written manifest finds leakage between splits.
    """
    pm = cfg.patch_manifest
    size = cfg.model.image_size
    stride = pm.stride if pm.stride is not None else size
    buffer = pm.buffer if pm.buffer is not None else size
    if buffer < size:
        raise ConfigError(
            f"patch_manifest.buffer = {buffer} px is smaller than the chip size "
            f"model.image_size = {size} px: splits need at least one chip between them; set "
            f"patch_manifest.buffer >= {size}, or null for the chip size"
        )
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
        max_cloud_fraction=pm.max_cloud_fraction,
        cloud_scl_classes=pm.cloud_scl_classes,
        block_size=pm.block_size,
        val_fraction=pm.val_fraction,
        test_fraction=pm.test_fraction,
        buffer=buffer,
        seed=pm.seed,
    )
    out = Path(out)
    # the manifest goes to a temporary name, is read back and audited, then renamed into place
    with (
        atomic_path(out / "patches.parquet") as tmp_manifest,
        atomic_path(out / "split_audit.json") as tmp_audit,
    ):
        write_manifest(manifest, tmp_manifest)
        written = read_manifest(tmp_manifest)
        audit["independent_audit"] = audit_manifest(written, index, buffer=buffer)
        tmp_audit.write_text(json.dumps(audit, indent=2, sort_keys=True) + "\n")
    log.info("split audit passed: %s", audit["independent_audit"]["min_distance_m"])
    return {
        "rows": len(manifest),
        **{s: audit["rows"][s] for s in ("train", "val", "test")},
        "blocks": audit["n_blocks"],
        "dropped_for_buffer": audit["windows"]["dropped_for_buffer"],
        "min_distance_m": audit["min_distance_m"],
    }
