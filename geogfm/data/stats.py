"""Exact per-band statistics of the tile cache's uint16 DN, in one parallel streaming pass.

For each (cell, time) with training windows, the pixels counted are the *union* of those windows
(each pixel once, however many windows overlap it) that the cache marks valid. The pass reads each
chunk of ``reflectance`` that holds such pixels once, straight from its file
(:class:`~geogfm.data.cache_reader.ChunkReader`), on ``workers`` threads: while one thread decodes
a chunk another counts one (decoding and counting run mostly without the GIL).

The pass gathers one exact, mergeable summary: a 65536-bin histogram per band, one bin per DN, of
int64 counts. Merging two summaries (of chunks, threads, or separate runs) is integer addition:
exact, in any order, so the result does not depend on the number of workers. Every statistic
comes from the merged histograms:

- ``count``, ``min`` and ``max``;
- ``mean`` and ``std`` from the exact integer moments ``n = sum(h)``, ``S = sum(h * dn)`` and
  ``Q = sum(h * dn**2)`` (uint64 while ``n * 65535**2 < 2**64``, Python ints beyond):
  ``mean = S / n`` and ``M2 = (n * Q - S**2) / n`` are each rounded once, so they are the float64
  nearest the exact values. This replaces a float64 Welford/Chan merge, which rounds at every
  merge, with an exact one; :class:`Moments` keeps Chan, Golub & LeVeque's (1979) parallel update
  for combining the moments of disjoint pixel sets when only their moments are known;
- percentiles with the ``inverted_cdf`` definition (``np.percentile(x, p,
  method="inverted_cdf")``, the smallest DN whose cumulative count reaches ``p / 100 * count``),
  so they are exact order statistics of the DN: the error bound is 0 DN; one bin is 1 DN, i.e.
  ``scale`` (1e-4) in reflectance.

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
from tqdm.auto import tqdm

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import CacheIndex, ChunkReader, store_band_names

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
    def of_sums(cls, n: int | Sequence[int], s: Sequence[int], ss: Sequence[int]) -> Moments:
        """Moments from exact per-band counts ``n``, sums ``s`` and sums of squares ``ss``.

        Python ints keep the sums exact, and true division of Python ints rounds once, so the mean
        and ``M2 = (n * ss - s**2) / n`` are the float64 nearest the exact values.

        Args:
            n: the pixel count, one for every band or one per band.
            s: per band, the sum of the values.
            ss: per band, the sum of their squares.
        """
        counts = [int(n)] * len(s) if isinstance(n, int | np.integer) else [int(k) for k in n]
        mean = [int(si) / k if k else 0.0 for k, si in zip(counts, s, strict=True)]
        m2 = [
            (k * int(qi) - int(si) ** 2) / k if k else 0.0
            for k, si, qi in zip(counts, s, ss, strict=True)
        ]
        return cls(np.array(counts, np.int64), np.array(mean), np.array(m2))

    @classmethod
    def of_histogram(cls, hist: np.ndarray) -> Moments:
        """Exact moments of the values that per-band histograms count (bin index = value).

        Args:
            hist: (C, K) non-negative int64 counts.
        """
        n = hist.sum(axis=1)
        used = np.flatnonzero(hist.any(axis=0))
        hist = hist[:, : used[-1] + 1 if used.size else 0]  # up to the largest value counted
        dn = np.arange(hist.shape[1], dtype=np.uint64)
        if int(n.max(initial=0)) * max(hist.shape[1] - 1, 0) ** 2 < 2**64:  # no sum can overflow
            h = hist.astype(np.uint64)
            s, ss = h @ dn, h @ (dn * dn)
        else:  # Python ints over the non-empty bins
            s, ss = [], []
            for row in hist:
                nz = np.flatnonzero(row)
                counts, values = row[nz].astype(object), nz.astype(object)
                s.append(counts @ values)
                ss.append(counts @ (values * values))
        return cls.of_sums(n, [int(v) for v in s], [int(v) for v in ss])

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
    """What one pass over the cache gathers: DN histograms, their moments, and what was read."""

    hist: np.ndarray  #: (C, N_BINS) int64 counts per DN
    moments: Moments  #: per-band (count, mean, M2) of ``hist``, DN units
    reads: int  #: chunks of ``reflectance`` read (each spatial chunk of one time chunk)
    scenes: int  #: (cell, time) pairs with counted windows

    def merge(self, other: ChannelSummary) -> ChannelSummary:
        """The summary of both passes (over disjoint pixel sets): histograms added, exactly."""
        hist = self.hist + other.hist
        return ChannelSummary(
            hist, Moments.of_histogram(hist), self.reads + other.reads, self.scenes + other.scenes
        )


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
        if len(self._all) == 1:
            return self._all[0]
        total = np.zeros((self._n_bands, N_BINS), dtype=np.int64)
        for hist in self._all:
            total += hist
        return total


# --------------------------------------------------------------------------------- the tasks


def union_mask(
    rows: np.ndarray, cols: np.ndarray, sizes: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """(H, W) bool, True on pixels covered by at least one window.

    Windows may reach outside the (H, W) box (negative or too large rows and columns): only their
    part inside counts. Few or small windows are painted one by one; many large ones go through a
    2-D difference array, O(H * W + N) for N windows.
    """
    H, W = shape
    r0, c0 = np.clip(rows, 0, H), np.clip(cols, 0, W)
    r1, c1 = np.clip(rows + sizes, 0, H), np.clip(cols + sizes, 0, W)
    if len(rows) <= 512 and int(((r1 - r0) * (c1 - c0)).sum()) <= 4 * H * W:
        mask = np.zeros((H, W), dtype=bool)
        for a, b, c, d in zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist(), strict=True):
            mask[a:b, c:d] = True
        return mask
    diff = np.zeros((H + 1, W + 1), dtype=np.int32)  # 2-D difference array of the windows
    for r, c, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        np.add.at(diff, (r, c), sign)
    np.cumsum(diff, axis=0, out=diff)  # in place: the coverage count of every pixel
    np.cumsum(diff, axis=1, out=diff)
    return diff[:H, :W] > 0


@dataclass(frozen=True)
class _Cell:
    """A cell's ``reflectance`` (T, C, H, W) and ``valid`` (T, H, W), read chunk by chunk."""

    reflectance: ChunkReader
    valid: ChunkReader


@dataclass(frozen=True)
class _Task:
    """One spatial chunk of one time chunk of a cell's ``reflectance``, and the windows in it."""

    cell: _Cell
    chunk: tuple[int, int, int]  #: (time, y, x) chunk-grid coordinates
    #: per time step with counted windows: (t, rows, cols, sizes), t in the time chunk, rows and
    #: cols in the chunk's box
    windows: tuple[tuple[int, np.ndarray, np.ndarray, np.ndarray], ...]


def _open_checked(index: CacheIndex, cell_id: str) -> _Cell:
    where = index.store(cell_id)
    fix = "rebuild the cache with `geogfm tile_cache`"
    bands = store_band_names(where)
    if bands != list(index.bands):
        raise DataError(f"{where} has bands {bands}, index.json lists {list(index.bands)}; {fix}")
    refl, valid = ChunkReader(where / "reflectance"), ChunkReader(where / "valid")
    if refl.dtype != np.uint16:
        raise DataError(f"{where}/reflectance is {refl.dtype}, expected uint16 DN; {fix}")
    T, C, H, W = refl.shape
    if tuple(valid.shape) != (T, H, W) or index.cell(cell_id).shape != (H, W):
        raise DataError(
            f"{where}: reflectance {refl.shape}, valid {valid.shape} and index.json's shape "
            f"{index.cell(cell_id).shape} disagree; {fix}"
        )
    return _Cell(refl, valid)


def _tasks(index: CacheIndex, windows: pd.DataFrame) -> Iterator[_Task]:
    """Tasks cell by cell, spatial chunk by spatial chunk, time chunk by time chunk."""
    codes, cell_ids = pd.factorize(windows["cell_id"], sort=True)
    columns = [windows[k].to_numpy(np.int64) for k in ("time_index", "row", "col", "size")]
    for k, cell_id in enumerate(cell_ids):
        cell = _open_checked(index, str(cell_id))
        T, C, H, W = cell.reflectance.shape
        ct, _, ch, cw = cell.reflectance.chunks
        t, r, c, s = (column[codes == k] for column in columns)
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
                inside = (r < r0 + ch) & (r + s > r0) & (c < c0 + cw) & (c + s > c0)
                if not inside.any():
                    continue
                ti, ri, ci, si = t[inside], r[inside] - r0, c[inside] - c0, s[inside]
                times, first = np.unique(ti, return_index=True)
                last = np.append(first[1:], len(ti))
                per_chunk: dict[int, list] = {}
                for k, a, b in zip(times.tolist(), first, last, strict=True):
                    per_chunk.setdefault(k // ct, []).append((k % ct, ri[a:b], ci[a:b], si[a:b]))
                for tc, scenes in per_chunk.items():
                    yield _Task(cell, (tc, r0 // ch, c0 // cw), tuple(scenes))


_BUFFERS = threading.local()


def _buffer(n: int, dtype: np.dtype) -> np.ndarray:
    """This thread's scratch array of ``n`` values to decode chunks into (saves page faults)."""
    buf = getattr(_BUFFERS, "dn", None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = _BUFFERS.dn = np.empty(n, dtype=dtype)
    return buf[:n]


def _read(task: _Task) -> tuple[np.ndarray, np.ndarray]:
    """The task's DN (Tc, C, h, w) uint16 and valid (Tc, h, w) bool.

    The DN may be a view of this thread's scratch buffer: valid until its next call.
    """
    refl, valid = task.cell.reflectance, task.cell.valid
    tc, iy, ix = task.chunk
    n_band_chunks = -(-refl.shape[1] // refl.chunks[1])
    if n_band_chunks == 1:
        dn = refl.block((tc, 0, iy, ix), out=_buffer(int(np.prod(refl.chunks)), refl.dtype))
    else:
        parts = [refl.block((tc, k, iy, ix)) for k in range(n_band_chunks)]
        dn = np.concatenate(parts, axis=1)
    ct, _, ch, cw = refl.chunks
    if valid.chunks == (ct, ch, cw):
        ok = valid.block((tc, iy, ix))
    else:  # another chunking: the same box through zarr
        box = (slice(tc * ct, (tc + 1) * ct), slice(iy * ch, (iy + 1) * ch))
        ok = np.asarray(valid.array[(*box, slice(ix * cw, (ix + 1) * cw))])
    return dn, ok.astype(bool, copy=False)


def _count(task: _Task, hists: _PerThreadHistograms) -> int:
    """Add a task's counted pixels to this thread's histograms; return how many there were."""
    dn, ok = _read(task)
    _, C, h, w = dn.shape
    hist = hists.mine()
    n = 0
    for t, rows, cols, sizes in task.windows:
        keep = union_mask(rows, cols, sizes, (h, w))
        keep &= ok[t]
        where = np.flatnonzero(keep)
        if where.size == 0:
            continue
        v = dn[t].reshape(C, h * w)  # a view (a copy for an edge chunk cut from a larger one)
        if where.size < h * w:
            v = v.take(where, axis=1)  # (C, n): only the counted pixels
        for b in range(C):
            counts = np.bincount(v[b])  # (max DN + 1,) int64
            hist[b, : counts.size] += counts
        n += where.size
    return n


def _ordered_map(
    fn: Callable[[_T], _R], items: Iterable[_T], *, pool: ThreadPoolExecutor | None, workers: int
) -> Iterator[_R]:
    """``map(fn, items)`` on ``pool`` (here if None), results in input order, few in flight."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def summarize_channels(
    index: CacheIndex,
    windows: pd.DataFrame,
    *,
    workers: int = 1,
    pool: ThreadPoolExecutor | None = None,
) -> ChannelSummary:
    """DN histograms and moments of the valid pixels of the union of windows per (cell, time).

    Args:
        index: the tile cache index.
        windows: manifest rows to count (columns ``cell_id``, ``time_index``, ``row``, ``col``,
            ``size``), typically the train split.
        workers: threads reading and counting chunks (1: in this thread).
        pool: a thread pool of ``workers`` threads to run on (so a caller can share its threads);
            by default one is started for the pass when ``workers > 1``.

    Returns:
        The summary; bands in index order.

    Raises:
        DataError: if a store disagrees with the index, or a window lies outside its cell.
    """
    if pool is None and workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="channel_stats") as own:
            return summarize_channels(index, windows, workers=workers, pool=own)
    hists = _PerThreadHistograms(len(index.bands))
    n_pixels, n_reads = 0, 0
    results = _ordered_map(
        lambda t: _count(t, hists), _tasks(index, windows), pool=pool, workers=workers
    )
    for n in tqdm(results, desc="channel_stats", unit="chunk", disable=None):
        n_pixels += n
        n_reads += 1
    hist = hists.total()
    assert (hist.sum(axis=1) == n_pixels).all(), (hist.sum(axis=1), n_pixels)
    cell = pd.factorize(windows["cell_id"])[0].astype(np.int64)
    t = windows["time_index"].to_numpy(np.int64)
    n_scenes = len(np.unique(cell * (int(t.max(initial=0)) + 1) + t))
    return ChannelSummary(hist, Moments.of_histogram(hist), reads=n_reads, scenes=n_scenes)


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
    hist = hist[:, : int(np.flatnonzero(hist.any(axis=0))[-1]) + 1]  # up to the largest DN
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
            "mean_std": "exact integer sums of DN and DN^2 from the merged per-DN histograms, "
            "each statistic rounded once to float64",
            "std": "population (ddof=0)",
            "percentiles": "inverted_cdf, exact: 65536-bin histogram of the DN, one bin per DN",
            "percentile_error_bound": {"dn": 0, "reflectance": 0.0, "bin_width": abs(scale)},
        },
    }
