"""``channel_stats`` stage: exact per-band statistics over valid pixels of the training windows.

Writes ``out`` (default ``results/stats/channel_stats.json``)::

    {"bands": [...], "unit": "reflectance", "count": [...], "mean": [...], "std": [...],
     "min": [...], "max": [...], "percentiles": {"1.0": [...], ...}, "method": {...},
     "source": {"cache_fingerprint": "<sha256>", "manifest_sha256": "<sha256>", "cells": [...],
                "split": "train", "windows": N, "scenes": N, "reads": N}}

Only train-split windows are read (validation and test pixels never reach the statistics), each
(cell, time, pixel) is counted once however many windows overlap it, and only pixels the cache marks
valid count. See :mod:`geogfm.data.stats` for the algorithm and the definitions (population std,
exact ``inverted_cdf`` percentiles). ``source.cache_fingerprint`` is
:func:`geogfm.data.cache_reader.cache_fingerprint` of the cache read; readers refuse the statistics
for any other cache with :func:`geogfm.data.cache_reader.check_stats_match`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import sha256_file, write_json
from geogfm.data.cache_reader import cache_fingerprint, load_cache_index
from geogfm.data.manifest import read_manifest
from geogfm.data.stats import default_workers, stats_from_summary, summarize_channels

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: GeoGFMConfig, *, cache: Path, manifest: Path, out: Path) -> dict:
    """Compute the channel statistics of the train split and write them as JSON.

    Args:
        cfg: the configuration (``channel_stats`` is used).
        cache: the tile cache directory.
        manifest: the patch manifest (``patches.parquet`` or the directory holding it).
        out: the JSON file to write.

    Returns:
        A summary: bands, pixel counts, windows, scenes and chunks read.

    Raises:
        FileNotFoundError: if the cache or the manifest is missing.
        DataError: if the manifest has no train rows, names cells the cache lacks, has windows
            outside their cell, or a band has no valid pixels.
    """
    index = load_cache_index(cache)
    rows = read_manifest(manifest, columns=["cell_id", "time_index", "row", "col", "size", "split"])
    train = rows[rows["split"] == "train"]
    if train.empty:
        raise DataError(
            f"patch manifest {manifest} has no train rows ({len(rows)} rows in all); rerun "
            "`geogfm patch_manifest` with a lower patch_manifest.val_fraction"
        )
    cells = sorted(str(c) for c in train["cell_id"].unique())
    for cell_id in cells:
        index.cell(cell_id)  # raises if the manifest is from another cache
    workers = cfg.channel_stats.workers or default_workers()
    log.info("channel stats of %d train windows on %d worker thread(s)", len(train), workers)
    # one pool for both: the fingerprint (a file listing) runs beside the first chunks' decoding
    with ThreadPoolExecutor(max(workers, 2), thread_name_prefix="channel_stats") as pool:
        fingerprint = pool.submit(cache_fingerprint, cache)
        summary = summarize_channels(
            index, train, workers=workers, pool=pool if workers > 1 else None
        )
        fingerprint = fingerprint.result()
    stats = stats_from_summary(
        summary,
        bands=index.bands,
        scale=index.scale,
        offset=index.offset,
        percentiles=cfg.channel_stats.percentiles,
    )
    manifest_file = Path(manifest) / "patches.parquet" if Path(manifest).is_dir() else manifest
    stats["source"] = {
        "cache_fingerprint": fingerprint,
        "manifest_sha256": sha256_file(manifest_file),
        "cells": cells,
        "split": "train",
        "windows": len(train),
        "scenes": summary.scenes,
        "reads": summary.reads,
    }
    write_json(out, stats)
    log.info(
        "channel stats over %d train windows in %d scenes (%d reads): %s valid pixels per band",
        len(train),
        summary.scenes,
        summary.reads,
        stats["count"][0],
    )
    return {"bands": stats["bands"], "count": stats["count"], "windows": len(train)}
