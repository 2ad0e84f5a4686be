"""Exact per-band statistics of the tile cache's uint16 DN, in one parallel streaming pass.

For each (cell, time) with training windows, the pixels counted are the *union* of those windows
(each pixel once, however many windows overlap it) that the cache marks valid. The pass reads each
chunk of ``reflectance`` that holds such pixels once, on ``workers`` threads (zarr decodes and numpy
counts mostly without holding the GIL), and keeps two mergeable summaries per band:

- moments ``(count, mean, M2)`` in float64, merged across chunks with the parallel update of
  Chan, Golub & LeVeque (1979). Each chunk's moments come from its exact integer sums, taken from
  its DN counts (``M2 = (n * sum(x^2) - sum(x)^2) / n``, rounded once), and chunks are merged in a
  fixed order, so the result does not depend on the number of workers;
- a 65536-bin histogram, one bin per DN, for ``min``, ``max`` and percentiles. Percentiles use the
  ``inverted_cdf`` definition (``np.percentile(x, p, method="inverted_cdf")``, the smallest DN whose
  cumulative count reaches ``p / 100 * count``), so they are exact order statistics of the DN:
  the error bound is 0 DN; one bin is 1 DN, i.e. ``scale`` (1e-4) in reflectance.

Memory is O(workers * bands * 65536) whatever the data size. ``std`` is the population standard
deviation (``ddof=0``). Values are reported in reflectance, ``DN * scale + offset``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import zarr
from tqdm.auto import tqdm

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import CacheIndex, band_names, open_cell

__all__ = [
    "N_BINS",
    "ChannelSummary",
    "Moments",
    "default_workers",
    "histogram_percentiles",
    "stats_from_summary",
    "summarize_channels",
    "union_mask",
]

log = logging.getLogger(__name__)

#: One bin per uint16 DN.
N_BINS: int = 65536
_DN = np.arange(N_BINS, dtype=np.int64)
_DN_SQUARED = _DN * _DN

_T = TypeVar("_T")
_R = TypeVar("_R")


# ------------------------------------------------------------------------------- the summaries


@dataclass(frozen=True)
class Moments:
    """Per-band count, mean and sum of squared deviations ``M2``, mergeable (Chan et al.)."""

    count: np.ndarray  #: (C,) int64
    mean: np.ndarray  #: (C,) float64
    m2: np.ndarray  #: (C,) float64, sum of squared deviations from the mean

    @classmethod
    def empty(cls, n_bands: int) -> Moments:
        """Moments of no pixels."""
        return cls(np.zeros(n_bands, np.int64), np.zeros(n_bands), np.zeros(n_bands))

    @classmethod
    def of_sums(cls, n: int, s: Sequence[int], ss: Sequence[int]) -> Moments:
        """Moments of ``n`` pixels per band from their exact sums ``s`` and sums of squares ``ss``.

        Python ints keep the sums exact, and true division of Python ints rounds once, so the mean
        and ``M2 = (n * ss - s**2) / n`` are the float64 nearest the exact values.
        """
        if n == 0:
            return cls.empty(len(s))
        mean = [si / n for si in s]
        m2 = [(n * qi - si * si) / n for si, qi in zip(s, ss, strict=True)]
        return cls(np.full(len(s), n, np.int64), np.array(mean), np.array(m2))

    def merge(self, other: Moments) -> Moments:
        """The moments of both pixel sets (Chan, Golub & LeVeque's parallel update)."""
        n = self.count + other.count
        safe = np.maximum(n, 1)
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / safe)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * (other.count / safe))
        return Moments(n, mean, m2)


@dataclass(frozen=True)
class ChannelSummary:
    """What one pass over the cache gathers: moments, DN histograms, and what was read."""

    moments: Moments  #: per-band (count, mean, M2), DN units
    hist: np.ndarray  #: (C, N_BINS) int64 counts per DN
    reads: int  #: zarr reads (each of one or more chunks)
    scenes: int  #: (cell, time) pairs with counted windows


class _PerThreadHistograms:
    """One (C, N_BINS) histogram per worker thread, so threads add without locks."""

    def __init__(self, n_bands: int):
        self._n_bands = n_bands
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[np.ndarray] = []

    def mine(self) -> np.ndarray:
        hist = getattr(self._local, "hist", None)
        if hist is None:
            hist = self._local.hist = np.zeros((self._n_bands, N_BINS), dtype=np.int64)
            with self._lock:
                self._all.append(hist)
        return hist

    def total(self) -> np.ndarray:
        return np.sum(self._all, axis=0) if self._all else np.zeros((self._n_bands, N_BINS), int)


# --------------------------------------------------------------------------------- the tasks


def union_mask(
    rows: np.ndarray, cols: np.ndarray, sizes: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """(H, W) bool, True on pixels covered by at least one window; O(H * W + N) for N windows.

    Windows may reach outside the (H, W) box (negative or too large rows and columns): only their
    part inside counts.
    """
    H, W = shape
    diff = np.zeros((H + 1, W + 1), dtype=np.int32)  # 2-D difference array of the windows
    r0, c0 = np.clip(rows, 0, H), np.clip(cols, 0, W)
    r1, c1 = np.clip(rows + sizes, 0, H), np.clip(cols + sizes, 0, W)
    for r, c, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        np.add.at(diff, (r, c), sign)
    np.cumsum(diff, axis=0, out=diff)  # in place: the coverage count of every pixel
    np.cumsum(diff, axis=1, out=diff)
    return diff[:H, :W] > 0


@dataclass(frozen=True)
class _Task:
    """Chunks of one cell to read at once: times ``[t0, t1)``, all bands, the pixel ``box``."""

    reflectance: zarr.Array
    valid: zarr.Array
    t0: int
    t1: int
    box: tuple[int, int, int, int]  #: (r0, r1, c0, c1), chunk-aligned
    #: per time step with counted windows: (t, rows, cols, sizes), rows and cols in the box
    windows: tuple[tuple[int, np.ndarray, np.ndarray, np.ndarray], ...]


def _open_checked(index: CacheIndex, cell_id: str) -> tuple[zarr.Array, zarr.Array]:
    store = open_cell(index, cell_id)
    where = index.store(cell_id)
    fix = "rebuild the cache with `geogfm tile_cache`"
    if band_names(store) != list(index.bands):
        raise DataError(
            f"{where} has bands {band_names(store)} but index.json lists {list(index.bands)}; {fix}"
        )
    refl, valid = store["reflectance"], store["valid"]
    if refl.dtype != np.uint16:
        raise DataError(f"{where}/reflectance is {refl.dtype}, expected uint16 DN; {fix}")
    T, C, H, W = refl.shape
    if tuple(valid.shape) != (T, H, W) or index.cell(cell_id).shape != (H, W):
        raise DataError(
            f"{where}: reflectance {refl.shape}, valid {valid.shape} and index.json's shape "
            f"{index.cell(cell_id).shape} disagree; {fix}"
        )
    return refl, valid


def _tasks(index: CacheIndex, windows: pd.DataFrame, *, max_bytes: int) -> Iterator[_Task]:
    """Tasks cell by cell, spatial chunk by spatial chunk, in a fixed order.

    A task is one spatial chunk of ``reflectance`` over a run of consecutive time chunks that
    hold counted windows, at most ``max_bytes`` of decoded DN: one zarr read, whose chunks zarr
    decodes concurrently.
    """
    for cell_id, cell_rows in windows.groupby("cell_id", sort=True):
        refl, valid = _open_checked(index, str(cell_id))
        T, C, H, W = refl.shape
        ct, _, ch, cw = refl.chunks
        t, r, c, s = (cell_rows[k].to_numpy(np.int64) for k in ("time_index", "row", "col", "size"))
        in_cell = (t >= 0) & (t < T) & (r >= 0) & (c >= 0) & (r + s <= H) & (c + s <= W)
        if not in_cell.all():
            raise DataError(
                f"the manifest has windows outside cell {cell_id} ({T} times of {H} x {W} px): it "
                "was made from another cache; rerun `geogfm patch_manifest` on this cache"
            )
        order = np.lexsort((c, r, t))
        t, r, c, s = t[order], r[order], c[order], s[order]
        for r0 in range(0, H, ch):
            for c0 in range(0, W, cw):
                box = (r0, min(r0 + ch, H), c0, min(c0 + cw, W))
                inside = (r < box[1]) & (r + s > r0) & (c < box[3]) & (c + s > c0)
                if not inside.any():
                    continue
                ti, ri, ci, si = t[inside], r[inside] - r0, c[inside] - c0, s[inside]
                times, first = np.unique(ti, return_index=True)
                last = np.append(first[1:], len(ti))
                per_time = [
                    (int(k), ri[a:b], ci[a:b], si[a:b])
                    for k, a, b in zip(times, first, last, strict=True)
                ]
                step = (box[1] - r0) * (box[3] - c0) * C * 2 * ct  # bytes per time chunk
                run: list = []
                for w in per_time:
                    tc = w[0] // ct  # its time chunk
                    if run and (
                        tc - run[-1][0] // ct > 1 or (tc - run[0][0] // ct + 1) * step > max_bytes
                    ):
                        yield _task(refl, valid, box, run, ct, T)
                        run = []
                    run.append(w)
                yield _task(refl, valid, box, run, ct, T)


def _task(refl: zarr.Array, valid: zarr.Array, box: tuple, run: list, ct: int, T: int) -> _Task:
    t0 = run[0][0] // ct * ct
    t1 = min((run[-1][0] // ct + 1) * ct, T)
    return _Task(refl, valid, t0, t1, box, tuple(run))


def _summarize_task(task: _Task, hists: _PerThreadHistograms) -> Moments:
    """Add a task's counted pixels to this thread's histograms; return their moments."""
    r0, r1, c0, c1 = task.box
    dn = task.reflectance[task.t0 : task.t1, :, r0:r1, c0:c1]  # (Tc, C, h, w) uint16
    ok = np.asarray(task.valid[task.t0 : task.t1, r0:r1, c0:c1], dtype=bool)  # (Tc, h, w)
    _, C, h, w = dn.shape
    hist = hists.mine()
    n, s, ss = 0, [0] * C, [0] * C  # exact integer count, sums and sums of squares per band
    for t, rows, cols, sizes in task.windows:
        keep = ok[t - task.t0] & union_mask(rows, cols, sizes, (h, w))  # (h, w)
        n_in = int(np.count_nonzero(keep))
        if n_in == 0:
            continue
        v = dn[t - task.t0].reshape(C, -1)  # (C, h * w), a view
        if n_in < v.shape[1]:
            v = np.compress(keep.ravel(), v, axis=1)  # (C, n_in)
        for b in range(C):
            counts = np.bincount(v[b])  # (max DN + 1,) int64
            k = len(counts)
            hist[b, :k] += counts
            # the sums from the counts: exact in int64 below 2**31 pixels per time step
            s[b] += int(counts @ _DN[:k])
            ss[b] += int(counts @ _DN_SQUARED[:k])
        n += n_in
    return Moments.of_sums(n, s, ss)


def _ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], *, workers: int) -> Iterator[_R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, few items in flight."""
    if workers == 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="channel_stats")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def summarize_channels(
    index: CacheIndex, windows: pd.DataFrame, *, workers: int = 1, max_bytes: int = 64 << 20
) -> ChannelSummary:
    """Moments and DN histograms of the valid pixels of the union of windows per (cell, time).

    Args:
        index: the tile cache index.
        windows: manifest rows to count (columns ``cell_id``, ``time_index``, ``row``, ``col``,
            ``size``), typically the train split.
        workers: threads reading and counting chunks.
        max_bytes: decoded bytes a thread reads at once (several time chunks of one spatial chunk,
            which zarr decodes concurrently); at least one chunk is read at once.

    Returns:
        The summary; bands in index order.

    Raises:
        DataError: if a store disagrees with the index, or a window lies outside its cell.
    """
    hists = _PerThreadHistograms(len(index.bands))
    moments, n_reads = Moments.empty(len(index.bands)), 0
    results = _ordered_map(
        lambda t: _summarize_task(t, hists),
        _tasks(index, windows, max_bytes=max_bytes),
        workers=workers,
    )
    for m in tqdm(results, desc="channel_stats", unit="read", disable=None):
        moments = moments.merge(m)  # in task order: the same floats for any number of workers
        n_reads += 1
    hist = hists.total()
    assert (hist.sum(axis=1) == moments.count).all(), (hist.sum(axis=1), moments.count)
    n_scenes = windows.groupby(["cell_id", "time_index"]).ngroups
    return ChannelSummary(moments=moments, hist=hist, reads=n_reads, scenes=n_scenes)


# ------------------------------------------------------------------------------- the statistics


def histogram_percentiles(hist: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """``inverted_cdf`` percentiles of the values a histogram counts (bin index = value).

    Matches ``np.percentile(values, percentiles, method="inverted_cdf")`` exactly.

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


def stats_from_summary(
    summary: ChannelSummary,
    *,
    bands: Sequence[str],
    scale: float,
    offset: float,
    percentiles: Sequence[float],
) -> dict:
    """The statistics of a :class:`ChannelSummary`, in reflectance units.

    Args:
        summary: moments and histograms in DN.
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
    hist, m = summary.hist, summary.moments
    empty = [b for b, n in zip(bands, m.count, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"band(s) {empty} have zero valid pixels in the training windows; check the tile "
            "cache's valid mask (tile_cache.mask_scl_classes) or raise "
            "patch_manifest.min_valid_fraction so kept windows have valid pixels"
        )
    ps = list(dict.fromkeys(float(p) for p in percentiles))  # order kept, duplicates dropped
    pct: dict[str, list[float]] = {str(p): [] for p in ps}
    lo, hi = [], []
    for h in hist:
        nz = np.flatnonzero(h)
        lo.append(float(nz[0]) * scale + offset)
        hi.append(float(nz[-1]) * scale + offset)
        for key, v in zip(pct, histogram_percentiles(h, ps), strict=True):
            pct[key].append(float(v) * scale + offset)
    return {
        "bands": list(bands),
        "unit": "reflectance",
        "count": [int(n) for n in m.count],
        "mean": [float(v) * scale + offset for v in m.mean],
        "std": [float(np.sqrt(v / n)) * abs(scale) for v, n in zip(m.m2, m.count, strict=True)],
        "min": lo,
        "max": hi,
        "percentiles": pct,
        "method": {
            "pixels": "valid pixels of the union of train windows per (cell, time), each once",
            "mean_std": "float64 (count, mean, M2) per read, merged as Chan et al. (1979)",
            "std": "population (ddof=0)",
            "percentiles": "inverted_cdf, exact: 65536-bin histogram of the DN, one bin per DN",
            "percentile_error_bound": {"dn": 0, "reflectance": 0.0, "bin_width": abs(scale)},
        },
    }
