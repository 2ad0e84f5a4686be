"""Leakage-free spatial train/val split: whole blocks go to one split, with a buffer.

Blocks are squares of ``block_size`` pixels on a grid anchored at the CRS origin, so a block id
depends only on CRS coordinates and blocks are the same across cells (a block may span several
cells). A window belongs to the block containing its centre, so a window may straddle a block
boundary; the buffer handles the leakage that would cause: a train window whose footprint comes
within ``buffer`` pixels of any val window's footprint is dropped (and counted).

Blocks are assigned by a seeded, deterministic draw: each block gets a uniform key ``u`` hashed from
``(seed, block_id)``, blocks are ranked by ``u`` and the first ``round(val_fraction * n_blocks)``
(at least one, at most ``n_blocks - 1``) go to val. Hashing per block id keeps a block's key
independent of which other blocks exist, and the rank gives the exact fraction even for the handful
of blocks of a small area.

Distances are between window footprints (axis-aligned rectangles) in CRS units: the Euclidean gap
between them, or minus the overlap depth when they overlap. Windows in different CRSs are never
compared (the tile cache writes every cell in one CRS).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from geogfm.core.errors import DataError

__all__ = [
    "SpatialSplit",
    "assign_blocks",
    "block_ids",
    "min_gaps",
    "rect_gaps",
    "spatial_block_split",
]


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


def assign_blocks(blocks: Iterable[str], *, val_fraction: float, seed: int) -> dict[str, str]:
    """Assign blocks to ``"train"`` or ``"val"`` by a seeded deterministic draw.

    Args:
        blocks: block ids (duplicates are ignored).
        val_fraction: fraction of blocks for val, in (0, 1).
        seed: the draw's seed.

    Returns:
        ``{block_id: "train" | "val"}`` with at least one block of each split.

    Raises:
        ValueError: if there are fewer than two blocks.
    """
    unique = sorted(set(blocks))
    n = len(unique)
    if n < 2:
        raise ValueError(f"need at least two spatial blocks to split train/val, got {n}")
    n_val = min(max(math.floor(val_fraction * n + 0.5), 1), n - 1)
    ranked = sorted(unique, key=lambda b: (_block_key(seed, b), b))
    val = set(ranked[:n_val])
    return {b: "val" if b in val else "train" for b in unique}


def rect_gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed distances between rectangles: the Euclidean gap, or minus the overlap depth.

    Args:
        a: (N, 4) ``(minx, miny, maxx, maxy)``.
        b: (M, 4) same.

    Returns:
        (N, M) float64; 0 where the rectangles touch.
    """
    a, b = a[:, None, :], b[None, :, :]
    dx = np.maximum(a[..., 0] - b[..., 2], b[..., 0] - a[..., 2])  # > 0: apart along x
    dy = np.maximum(a[..., 1] - b[..., 3], b[..., 1] - a[..., 3])
    apart = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    return np.where((dx > 0) | (dy > 0), apart, np.maximum(dx, dy))


def min_gaps(a: np.ndarray, b: np.ndarray, *, max_pairs: int = 4_000_000) -> np.ndarray:
    """For each rectangle of ``a``, the smallest :func:`rect_gaps` to any rectangle of ``b``.

    Args:
        a: (N, 4) rectangles.
        b: (M, 4) rectangles.
        max_pairs: pairs computed at once (memory bound).

    Returns:
        (N,) float64; ``inf`` when ``b`` is empty.
    """
    out = np.full(len(a), np.inf)
    if len(b) == 0:
        return out
    step = max(1, max_pairs // len(b))
    for i in range(0, len(a), step):
        out[i : i + step] = rect_gaps(a[i : i + step], b).min(axis=1)
    return out


@dataclass
class SpatialSplit:
    """The split of a set of windows (see :func:`spatial_block_split`)."""

    block_id: np.ndarray  #: (N,) block of each window
    split: np.ndarray  #: (N,) ``"train"`` | ``"val"``
    dropped: np.ndarray  #: (N,) bool, train windows within the buffer of a val window
    audit: dict = field(default_factory=dict)  #: counts, blocks, buffer, min train<->val distance


def spatial_block_split(
    bounds: np.ndarray,
    crs: np.ndarray,
    resolution: np.ndarray,
    *,
    block_size: int,
    val_fraction: float,
    buffer: int,
    seed: int,
) -> SpatialSplit:
    """Split windows into train/val by spatial blocks, dropping train windows near val windows.

    Args:
        bounds: (N, 4) window footprints ``(minx, miny, maxx, maxy)`` in CRS units.
        crs: (N,) CRS of each window.
        resolution: (N,) pixel side of each window's cell, CRS units (one value per CRS).
        block_size: block side, pixels.
        val_fraction: fraction of blocks for val.
        buffer: pixels; train windows closer than this to a val window are dropped.
        seed: seed of the block draw.

    Returns:
        Block ids, splits, the dropped mask and an audit dict.

    Raises:
        DataError: if a CRS has cells of different resolutions, if all windows fall in one block
            (lower ``block_size``) or if the buffer drops every train window.
    """
    n = len(bounds)
    crs = np.asarray(crs, dtype=object)
    resolution = np.asarray(resolution, dtype=np.float64)
    res_of: dict[str, float] = {}
    for c in sorted(set(crs)):
        res = np.unique(resolution[crs == c])
        if len(res) != 1:
            raise DataError(
                f"cells in {c} have different resolutions {res.tolist()}; spatial blocks need one "
                "grid: rebuild the tile cache with one tile_cache.resolution"
            )
        res_of[c] = float(res[0])

    # 1. blocks: by window centre, on a grid anchored at the CRS origin
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    block = np.empty(n, dtype=object)
    for c, res in res_of.items():
        sel = crs == c
        block[sel] = block_ids(cx[sel], cy[sel], crs=c, block_m=block_size * res)
    unique_blocks = sorted(set(block))
    if len(unique_blocks) < 2:
        res = next(iter(res_of.values()), 0.0)
        raise DataError(
            f"all {n} windows fall in one spatial block of patch_manifest.block_size="
            f"{block_size} px ({block_size * res:g} CRS units), so no train/val split is "
            f"possible; lower patch_manifest.block_size (e.g. to {max(1, block_size // 4)}) "
            "or cache a larger area"
        )
    assignment = assign_blocks(unique_blocks, val_fraction=val_fraction, seed=seed)
    split = np.array([assignment[b] for b in block], dtype=object)

    # 2. buffer: drop train windows within `buffer` pixels of any val window (per CRS)
    dropped = np.zeros(n, dtype=bool)
    min_dist = math.inf
    for c, res in res_of.items():
        in_crs = crs == c
        train_i = np.flatnonzero(in_crs & (split == "train"))
        val_i = np.flatnonzero(in_crs & (split == "val"))
        gap = min_gaps(bounds[train_i], bounds[val_i])
        # windows lie on a pixel grid: the tolerance only absorbs float rounding of coordinates
        near = gap < buffer * res - 1e-6 * res
        dropped[train_i[near]] = True
        if (~near).any():
            min_dist = min(min_dist, float(gap[~near].min()))
    n_train = int(((split == "train") & ~dropped).sum())
    if n_train == 0:
        raise DataError(
            f"every train window lies within patch_manifest.buffer={buffer} px of a val window; "
            "lower patch_manifest.buffer or raise patch_manifest.block_size"
        )

    kept_train_blocks = sorted(set(block[(split == "train") & ~dropped]))
    val_blocks = sorted(b for b, s in assignment.items() if s == "val")
    audit = {
        "block_size": block_size,
        "val_fraction": val_fraction,
        "seed": seed,
        "buffer": buffer,
        "buffer_m": {c: buffer * res for c, res in res_of.items()},
        "n_blocks": {
            "total": len(unique_blocks),
            "train": len(unique_blocks) - len(val_blocks),
            "val": len(val_blocks),
            "train_after_buffer": len(kept_train_blocks),
        },
        "blocks": {
            "train": sorted(b for b, s in assignment.items() if s == "train"),
            "val": val_blocks,
        },
        "windows": {
            "train": n_train,
            "val": int((split == "val").sum()),
            "dropped_for_buffer": int(dropped.sum()),
        },
        "min_distance_train_val_m": None if math.isinf(min_dist) else min_dist,
    }
    return SpatialSplit(block_id=block, split=split, dropped=dropped, audit=audit)
