"""Exact per-band statistics of uint16 imagery from 65536-bin histograms, in one streaming pass.

For each (cell, time) with training windows, the pixels counted are the *union* of those windows
(each pixel once, however many windows overlap it) that the cache marks valid. Each band's DNs go
into a 65536-bin ``np.bincount`` histogram, so the pass needs O(bands * 65536) memory whatever the
data size, and every statistic is exact:

- ``count``: valid pixels per band;
- ``mean``: the histogram's mean (integer DN sum, one float64 division);
- ``std``: population standard deviation (``ddof=0``), from the centred sum of squares in float64;
- ``min``/``max``: the lowest/highest DN with a non-zero count;
- percentiles: the ``inverted_cdf`` definition (``np.percentile(x, p, method="inverted_cdf")``): the
  smallest DN whose cumulative count reaches ``p / 100 * count``, always a value present in the
  data.

Values are reported in reflectance units, ``DN * scale + offset``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import CacheIndex, band_names, open_cell

__all__ = [
    "N_BINS",
    "channel_histograms",
    "histogram_percentiles",
    "stats_from_histograms",
    "union_mask",
]

log = logging.getLogger(__name__)

#: One bin per uint16 DN.
N_BINS: int = 65536


def union_mask(
    rows: np.ndarray, cols: np.ndarray, sizes: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """(H, W) bool, True on pixels covered by at least one window."""
    mask = np.zeros(shape, dtype=bool)
    for r, c, s in zip(rows, cols, sizes, strict=True):
        mask[r : r + s, c : c + s] = True
    return mask


def channel_histograms(index: CacheIndex, windows: pd.DataFrame) -> np.ndarray:
    """Per-band DN histograms over the valid pixels of the union of windows per (cell, time).

    Args:
        index: the tile cache index.
        windows: manifest rows to count (columns ``cell_id``, ``time_index``, ``row``, ``col``,
            ``size``), typically the train split.

    Returns:
        (C, 65536) int64 counts, C = ``len(index.bands)`` in index order.

    Raises:
        DataError: if a store's bands or dtype disagree with the index.
    """
    C = len(index.bands)
    hist = np.zeros((C, N_BINS), dtype=np.int64)
    groups = windows.groupby(["cell_id", "time_index"], sort=True)
    opened: tuple[str, object] | None = None
    for (cell_id, t), g in tqdm(groups, desc="channel_stats", unit="scene", disable=None):
        if opened is None or opened[0] != cell_id:
            store = open_cell(index, str(cell_id))
            if band_names(store) != list(index.bands):
                raise DataError(
                    f"{index.store(str(cell_id))} has bands {band_names(store)} but index.json "
                    f"lists {list(index.bands)}; rebuild the cache with `geogfm tile_cache`"
                )
            if store["reflectance"].dtype != np.uint16:
                raise DataError(
                    f"{index.store(str(cell_id))}/reflectance is {store['reflectance'].dtype}, "
                    "expected uint16 DN; rebuild the cache with `geogfm tile_cache`"
                )
            opened = (str(cell_id), store)
        store = opened[1]
        rows, cols, sizes = (g[k].to_numpy() for k in ("row", "col", "size"))
        # read only the bounding box of this scene's windows
        r0, c0 = int(rows.min()), int(cols.min())
        r1, c1 = int((rows + sizes).max()), int((cols + sizes).max())
        mask = union_mask(rows - r0, cols - c0, sizes, (r1 - r0, c1 - c0))
        mask &= np.asarray(store["valid"][int(t), r0:r1, c0:c1], dtype=bool)  # (h, w)
        if not mask.any():
            continue
        dn = store["reflectance"][int(t), :, r0:r1, c0:c1][:, mask]  # (C, n) uint16
        for b in range(C):
            hist[b] += np.bincount(dn[b], minlength=N_BINS)
    return hist


def histogram_percentiles(hist: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """``inverted_cdf`` percentiles of the values a histogram counts (bin index = value).

    Matches ``np.percentile(values, percentiles, method="inverted_cdf")``.

    Args:
        hist: (N_BINS,) non-negative counts, not all zero.
        percentiles: in [0, 100].

    Returns:
        (P,) int64 bin indices.
    """
    cum = np.cumsum(hist)
    n = int(cum[-1])
    assert n > 0, "empty histogram"
    target = n * (np.asarray(percentiles, dtype=np.float64) / 100.0)
    idx = np.searchsorted(cum, target, side="left")
    first = int(np.flatnonzero(hist)[0])
    return np.maximum(idx, first).astype(np.int64)  # p = 0 -> the minimum, not an empty bin


def stats_from_histograms(
    hist: np.ndarray,
    *,
    bands: Sequence[str],
    scale: float,
    offset: float,
    percentiles: Sequence[float],
) -> dict:
    """Exact statistics from per-band DN histograms, in reflectance units.

    Args:
        hist: (C, N_BINS) counts.
        bands: the C band names.
        scale: reflectance per DN.
        offset: reflectance at DN 0.
        percentiles: percentiles to report, in [0, 100].

    Returns:
        ``{"bands", "unit", "count", "mean", "std", "min", "max", "percentiles", "method"}``, lists
        in band order (``percentiles`` maps ``"1.0"``-style keys to lists).

    Raises:
        DataError: if a band has no pixels.
    """
    empty = [b for b, h in zip(bands, hist, strict=True) if not h.any()]
    if empty:
        raise DataError(
            f"band(s) {empty} have zero valid pixels in the training windows; check the tile "
            "cache's valid mask (tile_cache.mask_scl_classes) or raise "
            "patch_manifest.min_valid_fraction so kept windows have valid pixels"
        )
    dn = np.arange(hist.shape[1], dtype=np.float64)
    out: dict = {k: [] for k in ("count", "mean", "std", "min", "max")}
    ps = list(dict.fromkeys(float(p) for p in percentiles))  # order kept, duplicates dropped
    pct: dict[str, list[float]] = {str(p): [] for p in ps}
    for h in hist:
        n = int(h.sum())
        mean = float(int((h * np.arange(hist.shape[1], dtype=np.int64)).sum())) / n
        var = float((h * (dn - mean) ** 2).sum()) / n
        nz = np.flatnonzero(h)
        out["count"].append(n)
        out["mean"].append(mean * scale + offset)
        out["std"].append(float(np.sqrt(var)) * abs(scale))
        out["min"].append(float(nz[0]) * scale + offset)
        out["max"].append(float(nz[-1]) * scale + offset)
        for key, v in zip(pct, histogram_percentiles(h, ps), strict=True):
            pct[key].append(float(v) * scale + offset)
    return {
        "bands": list(bands),
        "unit": "reflectance",
        **out,
        "percentiles": pct,
        "method": {
            "pixels": "valid pixels of the union of train windows per (cell, time), each once",
            "std": "population (ddof=0)",
            "percentiles": "inverted_cdf",
        },
    }
