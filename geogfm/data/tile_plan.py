"""Planning how a source grid's pixels become a tile-cache cell's, once per grid and cell.

:func:`plan` returns the :class:`~geogfm.data.tile_resample.Plan` (its kinds, and where it is not
GDAL's answer, are described in :mod:`geogfm.data.tile_resample`): where each cell pixel's centre
falls in the source -- an affine map in the same CRS, else PROJ at every ``_STEP``-th pixel and
linear interpolation in between -- which source pixels it takes and with what weight.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
from odc.geo.geobox import GeoBox
from pyproj import CRS as ProjCRS
from pyproj import Transformer

from geogfm.data.tile_resample import Plan, SourceGrid

__all__ = ["plan"]

_STEP = 16  # cell pixels between exactly projected points (different CRS)
_EPS = 1e-6  # pixels: offsets and ratios closer than this to whole numbers are whole
_MAX_SCALE = 1.05  # source pixels per cell pixel above which the 4-tap kernel would alias

_lock = threading.Lock()


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(ProjCRS.from_user_input(dst), ProjCRS.from_user_input(src),
                                always_xy=True)  # fmt: skip


@lru_cache(maxsize=256)
def _same_crs(a: str, b: str) -> bool:
    return a == b or ProjCRS.from_user_input(a) == ProjCRS.from_user_input(b)


def _centres(grid: SourceGrid, geobox: GeoBox, cache: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates ``(col, row)`` of every cell pixel centre, ``(H, W)`` float64.

    ``cache`` keeps the centres in each source CRS for the cell's other grids.
    """
    H, W = geobox.shape
    dst, inv = geobox.affine, ~grid.transform
    dst_crs = str(geobox.crs)
    if _same_crs(grid.crs, dst_crs):
        m = inv * dst
        j, i = np.arange(W) + 0.5, (np.arange(H) + 0.5)[:, None]
        return _affine(m.a, m.b, m.c, j, i), _affine(m.d, m.e, m.f, j, i)
    xy = cache.get(("centres", grid.crs)) if cache is not None else None
    if xy is None:  # exactly at every _STEP-th pixel centre (and the last), linearly in between
        jc = np.unique(np.r_[np.arange(0, W, _STEP), W - 1]) + 0.5
        ic = np.unique(np.r_[np.arange(0, H, _STEP), H - 1]) + 0.5
        JC, IC = np.meshgrid(jc, ic)
        x, y = dst.c + dst.a * JC + dst.b * IC, dst.f + dst.d * JC + dst.e * IC
        with _lock:  # a Transformer is not to be shared by threads
            xs, ys = _transformer(grid.crs, dst_crs).transform(x, y)
        xy = _interp2(np.asarray(xs), jc, ic, W, H), _interp2(np.asarray(ys), jc, ic, W, H)
        if cache is not None:
            cache["centres", grid.crs] = xy
    xs, ys = xy
    return _affine(inv.a, inv.b, inv.c, xs, ys), _affine(inv.d, inv.e, inv.f, xs, ys)


def _affine(a: float, b: float, c: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``a * x + b * y + c`` (broadcast), without the term of a zero coefficient.

    A north-up grid's rows do not depend on x nor its columns on y (adding ``0 * y`` changes no
    value).
    """
    if b == 0:
        return np.broadcast_to(a * x + c, np.broadcast_shapes(x.shape, y.shape))
    if a == 0:
        return np.broadcast_to(b * y + c, np.broadcast_shapes(x.shape, y.shape))
    return a * x + b * y + c


def _interp2(C: np.ndarray, jc: np.ndarray, ic: np.ndarray, W: int, H: int) -> np.ndarray:
    """Values ``C`` at ``(ic, jc)`` interpolated bilinear to every pixel centre of ``(H, W)``."""

    def axis(nodes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = np.arange(n) + 0.5
        k = np.clip(np.searchsorted(nodes, p, side="right") - 1, 0, max(len(nodes) - 2, 0))
        if len(nodes) == 1:
            return k, np.zeros(n)
        return k, (p - nodes[k]) / (nodes[k + 1] - nodes[k])

    kx, tx = axis(jc, W)
    ky, ty = axis(ic, H)
    if len(jc) == 1 or len(ic) == 1:  # a one-pixel-wide cell: nothing to interpolate across
        return C[np.minimum(ky, len(ic) - 1)][:, np.minimum(kx, len(jc) - 1)]
    across = C[:, kx] * (1 - tx) + C[:, kx + 1] * tx  # each node row along x, once
    return across[ky] * (1 - ty)[:, None] + across[ky + 1] * ty[:, None]


def _whole(v: float) -> int | None:
    r = round(v)
    return r if abs(v - r) < _EPS else None


def _block(grid: SourceGrid, geobox: GeoBox) -> int | None:
    """``k`` if each source pixel is a whole ``k x k`` block of cell pixels (same CRS), or None."""
    src, dst = grid.transform, geobox.affine
    if (src.b, src.d, dst.b, dst.d) != (0, 0, 0, 0) or src.e >= 0 or dst.e >= 0:
        return None
    k, ky = _whole(src.a / dst.a), _whole(src.e / dst.e)
    row, col = _whole((src.f - dst.f) / -dst.e), _whole((dst.c - src.c) / dst.a)
    if k is None or k != ky or k < 1 or row is None or col is None:
        return None
    return k if _same_crs(grid.crs, str(geobox.crs)) else None


def _taps(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis.

    Returns the first tap ``floor(x)`` (int64), the second, the fraction, and the two weights
    ``(2, P)`` float32, taps outside ``0..n-1`` left out and the others renormalised.
    """
    first = np.floor(x)
    frac = (x - first).astype(np.float32)
    first = first.astype(np.int64)
    w = np.empty((2, len(frac)), np.float32)
    np.subtract(1, frac, out=w[0])
    w[1] = frac
    w[0][(first < 0) | (first >= n)] = 0.0
    second = first + 1
    w[1][(second < 0) | (second >= n)] = 0.0
    total = w[0] + w[1]
    np.divide(w, total, out=w, where=total > 0)
    return first, second, frac, w


def plan(
    grid: SourceGrid, geobox: GeoBox, kernel: str, *, centres: dict | None = None
) -> Plan | None:
    """The plan that resamples ``grid`` onto the cell ``geobox`` with ``kernel``, or ``None``.

    Args:
        grid: the source's pixel grid.
        geobox: the cell's.
        kernel: ``"nearest"``, ``"bilinear"``, ``"average"`` or ``"cubic"``.
        centres: a dict kept for one cell: where its pixel centres fall in each source CRS
            (computed once for all the cell's grids).

    Returns:
        The plan, or ``None`` where it would not be the kernel's answer (see the module
        docstring): the caller warps with GDAL.
    """
    H, W = geobox.shape
    block = _block(grid, geobox)
    if kernel not in ("nearest", "bilinear") and not (kernel == "average" and block is not None):
        return None
    if _aligned(grid, geobox) and block != 1:
        return _axes_plan(grid, geobox, kernel)
    u, v = _centres(grid, geobox, centres)  # source (col, row) of each centre
    inside2 = (u >= 0) & (u < grid.width) & (v >= 0) & (v < grid.height)
    if not inside2.any():
        return Plan("slice", (0, 0, 0, 0), (H, W))
    # source pixels per cell pixel, from the Jacobian of the map (not the bounding box)
    if kernel == "bilinear" and block != 1 and H > 1 and W > 1:
        sx = math.hypot(u[0, 1] - u[0, 0], v[0, 1] - v[0, 0])
        sy = math.hypot(u[1, 0] - u[0, 0], v[1, 0] - v[0, 0])
        if max(sx, sy) > _MAX_SCALE:
            return None
    # only the cell pixels whose centres can fall in the source: a source that covers a strip of
    # the cell costs that strip (every value is the one of a plan of the whole cell)
    box = _box(inside2.any(axis=1), inside2.any(axis=0))
    if box is not None:
        y0, y1, x0, x1 = box
        u, v, inside2 = u[y0:y1, x0:x1], v[y0:y1, x0:x1], inside2[y0:y1, x0:x1]
        extra = {"box": box, "cell_shape": (H, W)}
        H, W = y1 - y0, x1 - x0
    else:
        extra = {}
    inside = inside2.ravel()
    if block == 1:  # the source's own pixels: copy
        j0, i0 = math.floor(u[0, 0]), math.floor(v[0, 0])
        r0, r1 = max(i0, 0), min(i0 + H, grid.height)
        c0, c1 = max(j0, 0), min(j0 + W, grid.width)
        return Plan("slice", (r0, r1, c0, c1), (H, W),
                    paste=(r0 - i0, r1 - i0, c0 - j0, c1 - j0), **extra)  # fmt: skip
    if kernel != "bilinear":  # nearest, or average over whole blocks
        i = np.floor(v).astype(np.int64).ravel()[inside]
        j = np.floor(u).astype(np.int64).ravel()[inside]
        r0, r1, c0, c1 = int(i.min()), int(i.max()) + 1, int(j.min()), int(j.max()) + 1
        index = (i - r0) * (c1 - c0) + (j - c0)
        return Plan("gather", (r0, r1, c0, c1), (H, W), index=index, inside=inside, **extra)
    i, j, fy, wy = _taps((v - 0.5).ravel(), grid.height)  # rows: first tap, weights
    jj, _, fx, wx = _taps((u - 0.5).ravel(), grid.width)  # cols
    inside &= (wy[0] + wy[1] > 0) & (wx[0] + wx[1] > 0)
    r0, r1 = max(int(i[inside].min()), 0), min(int(i[inside].max()) + 2, grid.height)
    c0, c1 = max(int(jj[inside].min()), 0), min(int(jj[inside].max()) + 2, grid.width)
    h, w = r1 - r0, c1 - c0
    row0, row1 = np.clip(i - r0, 0, h - 1) * w, np.clip(i + 1 - r0, 0, h - 1) * w
    col0, col1 = np.clip(jj - c0, 0, w - 1), np.clip(jj + 1 - c0, 0, w - 1)
    P = H * W
    index = np.empty((P, 4), np.int32)
    weight = np.empty((P, 4), np.float32)
    for k, (rr, cc, a, b) in enumerate(
        ((row0, col0, wy[0], wx[0]), (row0, col1, wy[0], wx[1]),
         (row1, col0, wy[1], wx[0]), (row1, col1, wy[1], wx[1]))
    ):  # fmt: skip
        index[:, k] = rr + cc
        np.multiply(a, b, out=weight[:, k])
    weight[~inside] = 0.0
    matrix = sp.csr_matrix(
        (weight.ravel(), index.ravel(), np.arange(0, 4 * P + 1, 4, dtype=np.int32)),
        shape=(P, h * w),
    )
    # the source pixel each centre falls in: GDAL leaves a cell pixel nodata where that one is
    centre = np.where(fy >= 0.5, row1, row0) + np.where(fx >= 0.5, col1, col0)
    return Plan("bilinear", (r0, r1, c0, c1), (H, W), index=centre, inside=inside, matrix=matrix,
                **extra)  # fmt: skip


def _box(rows: np.ndarray, cols: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` around the True rows and columns, or ``None`` if that is all."""
    H, W = len(rows), len(cols)
    y0, y1 = int(rows.argmax()), H - int(rows[::-1].argmax())
    x0, x1 = int(cols.argmax()), W - int(cols[::-1].argmax())
    return None if (y0, y1, x0, x1) == (0, H, 0, W) else (y0, y1, x0, x1)


def _aligned(grid: SourceGrid, geobox: GeoBox) -> bool:
    """Whether the source's rows and columns are the cell's (same CRS, neither rotated)."""
    src, dst = grid.transform, geobox.affine
    return (src.b, src.d, dst.b, dst.d) == (0, 0, 0, 0) and _same_crs(grid.crs, str(geobox.crs))


def _axis(x: np.ndarray, n: int, kernel: str) -> tuple[tuple, int, int]:
    """One axis of an ``axes`` plan, and its window ``[lo, hi)`` of the source.

    ``x``: the source coordinates of the cell's pixel centres along the axis (``(H,)`` or
    ``(W,)``), on an axis of ``n`` pixels; the taps are relative to the window.
    """
    if kernel != "bilinear":
        first = np.floor(x).astype(np.int64)
        inside = (first >= 0) & (first < n)
        if not inside.any():
            return (first, first, None, first, inside), 0, 0
        lo, hi = int(first[inside].min()), int(first[inside].max()) + 1
        t = np.clip(first - lo, 0, hi - lo - 1)
        return (t, t, None, t, inside), lo, hi
    t0, t1, frac, w = _taps(x - 0.5, n)
    inside = (x >= 0) & (x < n) & (w[0] + w[1] > 0)
    if not inside.any():
        return (t0, t1, w, t0, inside), 0, 0
    lo, hi = max(int(t0[inside].min()), 0), min(int(t0[inside].max()) + 2, n)
    a, b = np.clip(t0 - lo, 0, hi - lo - 1), np.clip(t1 - lo, 0, hi - lo - 1)
    return (a, b, w, np.where(frac >= 0.5, b, a), inside), lo, hi


def _axes_plan(grid: SourceGrid, geobox: GeoBox, kernel: str) -> Plan | None:
    """The separable plan of an aligned grid (see :func:`_aligned`), or ``None``."""
    H, W = geobox.shape
    m = ~grid.transform * geobox.affine  # cell pixel -> source pixel: a scale and a shift
    if kernel == "bilinear" and max(abs(m.a), abs(m.e)) > _MAX_SCALE:
        return None
    rows, r0, r1 = _axis(m.e * (np.arange(H) + 0.5) + m.f, grid.height, kernel)
    cols, c0, c1 = _axis(m.a * (np.arange(W) + 0.5) + m.c, grid.width, kernel)
    if r0 >= r1 or c0 >= c1:
        return Plan("slice", (0, 0, 0, 0), (H, W))
    box = _box(rows[4], cols[4])  # the cell's rows and columns whose centres are inside
    if box is None:
        return Plan("axes", (r0, r1, c0, c1), (H, W), rows=rows, cols=cols)
    y0, y1, x0, x1 = box
    rows, cols = _cut(rows, y0, y1), _cut(cols, x0, x1)
    return Plan("axes", (r0, r1, c0, c1), (y1 - y0, x1 - x0), rows=rows, cols=cols, box=box,
                cell_shape=(H, W))  # fmt: skip


def _cut(axis: tuple, lo: int, hi: int) -> tuple:
    """An ``axes`` plan's axis (see :func:`_axis`) for the cell pixels ``lo:hi`` only."""
    a, b, w, centre, inside = axis
    w = None if w is None else w[:, lo:hi]
    return a[lo:hi], b[lo:hi], w, centre[lo:hi], inside[lo:hi]
