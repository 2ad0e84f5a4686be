"""Leakage-free spatial train/val/test split: whole blocks go to one split, with a buffer.

Blocks are squares of ``block_size`` pixels on a grid anchored at the CRS origin, so a block id
depends only on CRS coordinates and blocks are the same across cells (a block may span several
cells). A window belongs to the block containing its centre, so a window may straddle a block
boundary; the buffer handles the leakage that would cause: a window closer than ``buffer`` pixels to
a window of a split that ranks above its own (test > val > train) is dropped, so no two windows of
different splits are closer than the buffer, and none share a pixel.

Blocks are assigned by a seeded, deterministic draw: each block gets a uniform key ``u`` hashed from
``(seed, block_id)``, blocks are ranked by ``u``, the first ``round(val_fraction * n_blocks)`` go
to val, the next ``round(test_fraction * n_blocks)`` to test (at least one block each when the
fraction is positive, and at least one left for train). Hashing per block id keeps a block's key
independent of which other blocks exist, and the rank gives the exact fraction even for the handful
of blocks of a small area.

Distances are between window footprints (axis-aligned rectangles) in CRS units: the Euclidean gap
between them, or minus the overlap depth when they overlap. Every window is in one CRS.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from geogfm.core.errors import DataError

__all__ = [
    "SPLITS",
    "SpatialSplit",
    "assign_blocks",
    "block_ids",
    "min_gap",
    "near_pairs",
    "rect_gaps",
    "spatial_block_split",
]

#: Split names, from the lowest to the highest rank: a window near a higher-ranked split is dropped.
SPLITS: tuple[str, ...] = ("train", "val", "test")


def block_ids(
    centre_x: np.ndarray, centre_y: np.ndarray, *, crs: str, block_m: float
) -> np.ndarray:
    """Id of the block containing each point, ``"<crs>:<bx>:<by>"`` with bx, by block indices.

    Args:
        centre_x: (N,) x in CRS units.
        centre_y: (N,) y in CRS units.
        crs: the points' CRS, e.g. ``"EPSG:32633"``.
        block_m: block side in CRS units.

    Returns:
        (N,) object array of str.
    """
    bx = np.floor(np.asarray(centre_x, np.float64) / block_m).astype(np.int64)
    by = np.floor(np.asarray(centre_y, np.float64) / block_m).astype(np.int64)
    return np.array([f"{crs}:{x}:{y}" for x, y in zip(bx, by, strict=True)], dtype=object)


def _block_key(seed: int, block: str) -> float:
    digest = hashlib.blake2b(f"{seed}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_blocks(
    blocks: Iterable[str], *, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> dict[str, str]:
    """Assign blocks to ``"train"``, ``"val"`` or ``"test"`` by a seeded deterministic draw.

    Args:
        blocks: block ids (duplicates are ignored).
        val_fraction: fraction of blocks for val, in (0, 1).
        seed: the draw's seed.
        test_fraction: fraction of blocks for test, in [0, 1); 0 makes no test split.

    Returns:
        ``{block_id: split}`` with at least one train and one val block, and one test block if
        ``test_fraction > 0``. With a given seed, the val blocks do not depend on ``test_fraction``.

    Raises:
        DataError: if there are too few blocks for the splits asked for.
    """
    unique = sorted(set(blocks))
    n = len(unique)
    n_splits = 3 if test_fraction > 0 else 2
    if n < n_splits:
        raise DataError(
            f"need at least {n_splits} spatial blocks for {n_splits} splits, got {n}; lower "
            "patch_manifest.block_size or cache a larger area"
        )
    n_val = min(max(math.floor(val_fraction * n + 0.5), 1), n - n_splits + 1)
    n_test = 0
    if test_fraction > 0:
        n_test = min(max(math.floor(test_fraction * n + 0.5), 1), n - n_val - 1)
    ranked = sorted(unique, key=lambda b: (_block_key(seed, b), b))
    split = dict.fromkeys(ranked[:n_val], "val")
    split.update(dict.fromkeys(ranked[n_val : n_val + n_test], "test"))
    return {b: split.get(b, "train") for b in unique}


def rect_gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed distances between rectangles: the Euclidean gap, or minus the overlap depth.

    Args:
        a: (N, 4) ``(minx, miny, maxx, maxy)``.
        b: (M, 4) same.

    Returns:
        (N, M) float64; 0 where the rectangles touch, < 0 where they share area.
    """
    return _gaps(a[:, None, :], b[None, :, :])


def _gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`rect_gaps` of broadcast pairs, ``(..., 4), (..., 4) -> (...)``."""
    dx = np.maximum(a[..., 0] - b[..., 2], b[..., 0] - a[..., 2])  # > 0: apart along x
    dy = np.maximum(a[..., 1] - b[..., 3], b[..., 1] - a[..., 3])
    apart = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    return np.where((dx > 0) | (dy > 0), apart, np.maximum(dx, dy))


def near_pairs(
    a: np.ndarray, b: np.ndarray, radius: float, *, max_pairs: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rectangles of ``a`` and ``b`` whose :func:`rect_gaps` is below ``radius``.

    Rectangles of ``b`` are bucketed on a grid of side ``g = radius + `` the largest side, by their
    lower-left corner: a rectangle of ``b`` within ``radius`` of one of ``a`` lies in one of the
    3 x 3 buckets around the bucket of ``a``'s lower-left corner. So the cost is the number of
    candidate pairs in those buckets, not ``len(a) * len(b)``.

    Args:
        a: (N, 4) ``(minx, miny, maxx, maxy)``.
        b: (M, 4) same.
        radius: > 0, CRS units.
        max_pairs: candidate pairs computed at once (memory bound).

    Returns:
        ``(ia, ib, gap)``: indices into ``a`` and ``b`` and the gaps, sorted by ``(ia, ib)``.
    """
    assert radius > 0, radius
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if not len(a) or not len(b):
        return none
    sides = np.concatenate([a[:, 2:] - a[:, :2], b[:, 2:] - b[:, :2]])
    g = radius + float(sides.max())
    origin = np.minimum(a[:, :2].min(axis=0), b[:, :2].min(axis=0)) - g
    ka = np.floor((a[:, :2] - origin) / g).astype(np.int64)  # (N, 2) bucket of each corner
    kb = np.floor((b[:, :2] - origin) / g).astype(np.int64)
    ny = int(max(ka[:, 1].max(), kb[:, 1].max())) + 2
    key_b = kb[:, 0] * ny + kb[:, 1]
    order = np.argsort(key_b, kind="stable")
    sorted_keys = key_b[order]
    parts = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            key = (ka[:, 0] + dx) * ny + (ka[:, 1] + dy)
            lo = np.searchsorted(sorted_keys, key, side="left")
            hi = np.searchsorted(sorted_keys, key, side="right")
            parts.append((lo, hi - lo))
    lo = np.stack([p[0] for p in parts], axis=1).ravel()  # (N * 9,) ranges of sorted b
    cnt = np.stack([p[1] for p in parts], axis=1).ravel()
    owner = np.repeat(np.arange(len(a)), 9)
    out_a, out_b, out_g = [], [], []
    cum = np.cumsum(cnt)
    start = 0
    while start < len(cnt):  # ranges in batches of about max_pairs candidate pairs
        stop = int(np.searchsorted(cum, (cum[start - 1] if start else 0) + max_pairs, "right"))
        stop = max(stop, start + 1)
        c, l0 = cnt[start:stop], lo[start:stop]
        total = int(c.sum())
        if total:
            first = np.repeat(np.cumsum(c) - c, c)
            ib = order[np.repeat(l0, c) + np.arange(total) - first]
            ia = np.repeat(owner[start:stop], c)
            d = _gaps(a[ia], b[ib])  # exact: extra candidates are filtered out here
            near = d < radius
            out_a.append(ia[near])
            out_b.append(ib[near])
            out_g.append(d[near])
        start = stop
    if not out_a:
        return none
    ia, ib, d = np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_g)
    srt = np.lexsort((ib, ia))
    return ia[srt], ib[srt], d[srt]


def min_gap(a: np.ndarray, b: np.ndarray, *, start: float = 1.0) -> float:
    """The smallest :func:`rect_gaps` between any rectangle of ``a`` and any of ``b``.

    Searches with :func:`near_pairs` in radii doubling from ``start`` until a pair is found.

    Returns:
        The gap (CRS units); ``inf`` if ``a`` or ``b`` is empty.
    """
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return math.inf
    both = np.concatenate([a, b])
    span = float(np.hypot(*(both[:, 2:].max(axis=0) - both[:, :2].min(axis=0))))
    radius = max(start, 1e-9)
    while True:
        _, _, d = near_pairs(a, b, radius)
        if len(d):
            return float(d.min())
        assert radius <= 2 * span + 1, (radius, span)  # every pair is nearer than the span
        radius *= 2


@dataclass
class SpatialSplit:
    """The split of a set of windows (see :func:`spatial_block_split`)."""

    block_id: np.ndarray  #: (N,) block of each window
    split: np.ndarray  #: (N,) ``"train"`` | ``"val"`` | ``"test"``
    dropped: np.ndarray  #: (N,) bool, windows within the buffer of a higher-ranked split
    audit: dict = field(default_factory=dict)  #: counts, blocks, buffer, min distances


def spatial_block_split(
    bounds: np.ndarray,
    *,
    crs: str,
    resolution: float,
    block_size: int,
    val_fraction: float,
    test_fraction: float = 0.0,
    buffer: int,
    seed: int,
) -> SpatialSplit:
    """Split windows by spatial blocks, dropping windows near a window of a higher-ranked split.

    Args:
        bounds: (N, 4) window footprints ``(minx, miny, maxx, maxy)`` in CRS units.
        crs: the CRS of every window.
        resolution: pixel side, CRS units.
        block_size: block side, pixels.
        val_fraction: fraction of blocks for val.
        test_fraction: fraction of blocks for test (0: no test split).
        buffer: pixels, >= 1; a window closer than this to one of a higher-ranked split (test >
            val > train) is dropped.
        seed: seed of the block draw.

    Returns:
        Block ids, splits, the dropped mask and an audit dict.

    Raises:
        ValueError: if ``buffer`` is below 1 pixel.
        DataError: if all windows fall in too few blocks (lower ``block_size``), or the buffer
            drops every train or every val window.
    """
    if buffer < 1:
        raise ValueError(f"buffer must be >= 1 pixel, got {buffer}")
    n = len(bounds)
    bounds = np.asarray(bounds, np.float64)
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    block = block_ids(cx, cy, crs=crs, block_m=block_size * resolution)
    unique_blocks = sorted(set(block))
    n_needed = 3 if test_fraction > 0 else 2
    if len(unique_blocks) < n_needed:
        raise DataError(
            f"all {n} windows fall in {len(unique_blocks)} spatial block(s) of "
            f"patch_manifest.block_size={block_size} px ({block_size * resolution:g} CRS units), "
            f"too few for {n_needed} splits; lower patch_manifest.block_size (e.g. to "
            f"{max(1, block_size // 4)}) or cache a larger area"
        )
    assignment = assign_blocks(
        unique_blocks, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    split = np.array([assignment[b] for b in block], dtype=object)

    # the buffer: drop a window within `buffer` px of a window of a higher-ranked split;
    # windows lie on a pixel grid: the tolerance only absorbs float rounding of coordinates
    radius = (buffer - 1e-6) * resolution
    dropped = np.zeros(n, dtype=bool)
    for rank, low in enumerate(SPLITS):
        low_i = np.flatnonzero(split == low)
        high_i = np.flatnonzero(np.isin(split, SPLITS[rank + 1 :]))
        ia, _, _ = near_pairs(bounds[low_i], bounds[high_i], radius)
        dropped[low_i[ia]] = True
    kept = {s: int(((split == s) & ~dropped).sum()) for s in SPLITS}
    for s in SPLITS[:2]:
        if kept[s] == 0:
            raise DataError(
                f"every {s} window lies within patch_manifest.buffer={buffer} px of a window of "
                "another split; raise patch_manifest.block_size (fewer block edges) or cache a "
                "larger area"
            )
    keep = ~dropped
    min_gaps = {
        f"{lo}_{hi}": min_gap(
            bounds[keep & (split == lo)], bounds[keep & (split == hi)], start=buffer * resolution
        )
        for i, lo in enumerate(SPLITS)
        for hi in SPLITS[i + 1 :]
    }
    blocks_of = {s: sorted(b for b, v in assignment.items() if v == s) for s in SPLITS}
    audit = {
        "block_size": block_size,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "buffer": buffer,
        "buffer_m": buffer * resolution,
        "crs": crs,
        "n_blocks": {
            "total": len(unique_blocks),
            **{s: len(blocks_of[s]) for s in SPLITS},
            "train_after_buffer": len(set(block[keep & (split == "train")])),
        },
        "blocks": blocks_of,
        "windows": {**kept, "dropped_for_buffer": int(dropped.sum())},
        "min_distance_m": {k: None if math.isinf(v) else v for k, v in min_gaps.items()},
    }
    return SpatialSplit(block_id=block, split=split, dropped=dropped, audit=audit)
