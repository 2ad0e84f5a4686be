"""Square windows over an image and back: tiling with overlap, extraction, and blended merging.

The window grid is :func:`geogfm.data.windows.window_grid` (the one the patch manifest uses);
:func:`tile_windows` adds what inference needs on top: full coverage (a last row and column of
windows flush with the bottom and right edges) and an ``overlap`` instead of a stride.
:func:`extract_patches` cuts the windows out of a ``(..., H, W)`` array and :func:`merge_patches`
puts per-window outputs back, averaging where windows overlap (optionally with a weight that
fades towards window edges, to hide seams).
"""

from __future__ import annotations

import numpy as np

from geogfm.data.windows import window_grid

__all__ = ["extract_patches", "merge_patches", "tile_windows", "window_weights"]


def _edge_starts(length: int, size: int, stride: int) -> np.ndarray:
    starts = np.arange(0, length - size + 1, stride, dtype=np.int64)
    if starts[-1] != length - size:
        starts = np.append(starts, length - size)  # flush with the far edge
    return starts


def tile_windows(
    height: int, width: int, *, size: int, overlap: int = 0, cover: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixels of windows of side ``size`` that tile an H x W image with ``overlap``.

    Windows step by ``size - overlap``. With ``cover`` (the default) a last row/column of windows
    is added flush with the bottom/right edge, so every pixel is in at least one window; without
    it this is exactly :func:`~geogfm.data.windows.window_grid` (a narrow remainder is left out).

    Args:
        height: image rows.
        width: image columns.
        size: window side, pixels.
        overlap: pixels shared by neighbouring windows, ``0 <= overlap < size``.
        cover: add edge windows so that the whole image is covered.

    Returns:
        ``(rows, cols)``, int64 arrays of equal length, row-major order.

    Raises:
        ValueError: if ``overlap`` is not in ``[0, size)`` or the window is larger than the image.
    """
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size={size}), got {overlap}")
    stride = size - overlap
    if not cover:
        return window_grid(height, width, size=size, stride=stride)
    window_grid(height, width, size=size, stride=stride)  # validates size against the image
    r, c = _edge_starts(height, size, stride), _edge_starts(width, size, stride)
    rows, cols = np.meshgrid(r, c, indexing="ij")
    return rows.ravel(), cols.ravel()


def extract_patches(array: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, size: int):
    """Cut windows out of an array.

    Args:
        array: (..., H, W) image, e.g. (C, H, W) or (T, C, H, W).
        rows: (N,) window top rows.
        cols: (N,) window left columns.
        size: window side.

    Returns:
        (N, ..., size, size), a copy.
    """
    return np.stack(
        [array[..., r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)]
    )


def window_weights(size: int, *, taper: int = 0) -> np.ndarray:
    """(size, size) float64 blending weights: 1 inside, falling linearly over ``taper`` edge px.

    The weights stay > 0 everywhere, so an image pixel that a single window covers keeps that
    window's value when merged.
    """
    if not 0 <= 2 * taper <= size:
        raise ValueError(f"taper must be in [0, size/2 = {size / 2}], got {taper}")
    ramp = np.ones(size, dtype=np.float64)
    if taper:
        edge = (np.arange(taper, dtype=np.float64) + 1) / (taper + 1)
        ramp[:taper], ramp[size - taper :] = edge, edge[::-1]
    return np.outer(ramp, ramp)


def merge_patches(
    patches: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    height: int,
    width: int,
    taper: int = 0,
) -> np.ndarray:
    """Put per-window outputs back on the image grid, averaging overlaps.

    Args:
        patches: (N, ..., size, size) window outputs, e.g. model predictions.
        rows: (N,) window top rows.
        cols: (N,) window left columns.
        height: image rows.
        width: image columns.
        taper: edge pixels over which a window's weight falls (see :func:`window_weights`);
            0 gives a plain mean of the overlapping windows.

    Returns:
        (..., H, W) float64; NaN where no window covers a pixel.
    """
    N, size = patches.shape[0], patches.shape[-1]
    assert patches.shape[-2] == size and len(rows) == len(cols) == N, (patches.shape, len(rows))
    weight = window_weights(size, taper=taper)
    total = np.zeros((*patches.shape[1:-2], height, width), dtype=np.float64)
    norm = np.zeros((height, width), dtype=np.float64)
    for patch, r, c in zip(patches, rows, cols, strict=True):
        total[..., r : r + size, c : c + size] += patch * weight
        norm[r : r + size, c : c + size] += weight
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, total / norm, np.nan)
