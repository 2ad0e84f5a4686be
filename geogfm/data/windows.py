"""Square patch windows on a cell's pixel grid, and per-window fractions of a mask.

A window is ``(row, col)``, its top-left pixel in the cell, and a side ``size``; windows step by
``stride`` pixels and never leave the cell (a remainder narrower than ``size`` at the right/bottom
is not covered). Fractions of a boolean mask over every window come from one summed-area table, so a
whole cell costs O(H * W) whatever the stride.
"""

from __future__ import annotations

import numpy as np

__all__ = ["window_fractions", "window_grid"]


def window_grid(
    height: int, width: int, *, size: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixels of every window of side ``size`` stepping by ``stride`` in an H x W cell.

    Args:
        height: cell rows.
        width: cell columns.
        size: window side, pixels.
        stride: step between windows, pixels.

    Returns:
        ``(rows, cols)``, int64 arrays of equal length, row-major order.

    Raises:
        ValueError: if the window is larger than the cell or ``size``/``stride`` is not positive.
    """
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got size={size}, stride={stride}")
    if size > height or size > width:
        raise ValueError(f"window size {size} is larger than the {height} x {width} cell")
    r = np.arange(0, height - size + 1, stride, dtype=np.int64)
    c = np.arange(0, width - size + 1, stride, dtype=np.int64)
    rows, cols = np.meshgrid(r, c, indexing="ij")
    return rows.ravel(), cols.ravel()


def window_fractions(
    mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, size: int
) -> np.ndarray:
    """Fraction of True pixels of ``mask`` in each window.

    Args:
        mask: (H, W) bool.
        rows: (N,) window top rows.
        cols: (N,) window left columns.
        size: window side.

    Returns:
        (N,) float64 in [0, 1].
    """
    assert mask.ndim == 2, mask.shape
    # summed-area table with a zero first row/column: sat[i, j] = mask[:i, :j].sum()
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    r1, c1 = rows + size, cols + size
    total = sat[r1, c1] - sat[rows, c1] - sat[r1, cols] + sat[rows, cols]
    return total / float(size * size)
