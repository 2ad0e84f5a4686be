"""``channel_stats`` stage: exact per-band statistics over valid pixels of the training windows.

Writes ``out`` (default ``results/stats/channel_stats.json``)::

    {"bands": [...], "unit": "reflectance", "count": [...], "mean": [...], "std": [...],
     "min": [...], "max": [...], "percentiles": {"1.0": [...], ...}, "method": {...},
     "source": {"cells": [...], "split": "train", "windows": N, "scenes": N}}

Only train-split windows are read (val pixels never reach the statistics), each (cell, time, pixel)
is counted once however many windows overlap it, and only pixels the cache marks valid count. See
:mod:`geogfm.data.stats` for the definitions (population std, ``inverted_cdf`` percentiles).
"""

from __future__ import annotations

import logging
from pathlib import Path

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import write_json
from geogfm.data.cache_reader import load_cache_index
from geogfm.data.manifest import read_manifest
from geogfm.data.stats import channel_histograms, stats_from_histograms

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
        A summary: bands, pixel counts, windows and scenes read.

    Raises:
        FileNotFoundError: if the cache or the manifest is missing.
        DataError: if the manifest has no train rows, names cells the cache lacks, or a band has no
            valid pixels.
    """
    index = load_cache_index(cache)
    rows = read_manifest(manifest)
    train = rows[rows["split"] == "train"]
    if train.empty:
        raise DataError(
            f"patch manifest {manifest} has no train rows ({len(rows)} rows in all); rerun "
            "`geogfm patch_manifest` with a lower patch_manifest.val_fraction"
        )
    cells = sorted(set(train["cell_id"]))
    for cell_id in cells:
        index.cell(cell_id)  # raises if the manifest is from another cache
    hist = channel_histograms(index, train)
    stats = stats_from_histograms(
        hist,
        bands=index.bands,
        scale=index.scale,
        offset=index.offset,
        percentiles=cfg.channel_stats.percentiles,
    )
    n_scenes = train.groupby(["cell_id", "time_index"]).ngroups
    stats["source"] = {"cells": cells, "split": "train", "windows": len(train), "scenes": n_scenes}
    write_json(out, stats)
    log.info(
        "channel stats over %d train windows in %d scenes: %s valid pixels per band",
        len(train),
        n_scenes,
        stats["count"][0],
    )
    return {"bands": stats["bands"], "count": stats["count"], "windows": len(train)}
