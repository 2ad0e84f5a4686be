"""What a tile of the demo catalog sees of the landscape (:mod:`geogfm.data.demo_landscape`).

:class:`TileView` is where a tile's pixels lie on the landscape's grid; :class:`DemoScene` is one
simulated Sentinel-2 L2A acquisition of a tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine

__all__ = ["DemoScene", "TileView"]


@dataclass(frozen=True)
class DemoScene:
    """One simulated Sentinel-2 L2A acquisition of a tile."""

    #: band key -> ``(h, w)`` float32 surface reflectance at native resolution, NaN = no data
    reflectance: dict[str, np.ndarray]
    #: ``(h, w)`` uint8 scene classification at 20 m (Sen2Cor classes, 0 = no data)
    scl: np.ndarray
    #: valid-data footprint, ``(x, y)`` vertices in 10 m pixel units from the tile's top-left corner
    footprint: tuple[tuple[float, float], ...]
    sun_azimuth: float  #: degrees clockwise from north
    sun_elevation: float  #: degrees above the horizon

    def scl_percentages(self) -> dict[int, float]:
        """Percentage of each SCL class among the pixels with data (class 0: among all pixels)."""
        counts = np.bincount(self.scl.ravel(), minlength=12).tolist()
        valid = sum(counts[1:])
        pct = {c: 100.0 * counts[c] / valid if valid else 0.0 for c in range(1, 12)}
        pct[0] = 100.0 * counts[0] / sum(counts)
        return pct

    @property
    def cloud_cover(self) -> float:
        """Cloud percentage among the pixels with data: SCL medium, high and cirrus (8, 9, 10)."""
        pct = self.scl_percentages()
        return pct[8] + pct[9] + pct[10]


@dataclass(frozen=True, eq=False)
class TileView:
    """Where a tile's pixels lie on the landscape.

    A tile is a square of ``size`` 10 m pixels on its own grid (its own UTM zone, say). On the
    landscape's grid it is either a whole-pixel shift of it (a crop), or, in another UTM zone, a
    slightly rotated, scaled and curved square. The map is the affine ``to_landscape`` or, given
    ``nodes``, the bilinear interpolation of exact landscape positions on a lattice of tile points
    (:meth:`from_nodes`): the map between two UTM grids is affine only to a fraction of a pixel
    over a few kilometres (about 0.1 px over 10 km at 3 degrees from a central meridian, growing
    with the square of the distance), while lattice nodes a few hundred metres apart follow its
    curvature to a thousandth of a pixel at any tile size. The tile samples the landscape at its
    pixel centres (nearest landscape pixel), or crops it.
    """

    size: int  #: tile side in 10 m pixels
    #: tile pixel ``(col, row)`` -> landscape pixel ``(col, row)``, pixel corners at whole numbers;
    #: with ``nodes``, the affine map through three of the tile's corners (a close approximation)
    to_landscape: Affine
    #: ``(2, m, m)`` float64 landscape ``(col, row)`` of the tile points ``(j, i) * step``
    #: (``nodes[:, i, j]``), ``step = side / (m - 1)``; None: the map is ``to_landscape``
    nodes: np.ndarray | None = None

    @classmethod
    def from_nodes(cls, size: int, nodes: np.ndarray) -> TileView:
        """A view from the landscape positions of a regular lattice of tile points.

        Args:
            size: tile side in 10 m pixels.
            nodes: ``(2, m, m)`` landscape ``(col, row)`` of the tile points
                ``(x, y) = (j, i) * side / (m - 1)`` at ``nodes[:, i, j]``, ``m >= 2``, where
                ``side`` is :attr:`side` (the lattice spans the sampled square).
        """
        nodes = np.asarray(nodes, dtype=np.float64)
        if nodes.ndim != 3 or nodes.shape[0] != 2 or not nodes.shape[1] == nodes.shape[2] >= 2:
            raise ValueError(f"nodes of shape {nodes.shape} are not (2, m, m) with m >= 2")
        (c0, c1), (c2, _) = nodes[:, 0, [0, -1]].T, nodes[:, -1, [0, -1]].T
        n = float(-(-size // 6) * 6)
        affine = Affine(
            (c1[0] - c0[0]) / n, (c2[0] - c0[0]) / n, c0[0], (c1[1] - c0[1]) / n,
            (c2[1] - c0[1]) / n, c0[1],
        )  # fmt: skip
        nodes.setflags(write=False)
        return cls(size, affine, nodes)

    @property
    def side(self) -> int:
        """The tile side rounded up to whole 60 m pixels (what is sampled)."""
        return -(-self.size // 6) * 6

    @property
    def crop(self) -> tuple[int, int] | None:
        """``(row, col)`` of the tile's top-left pixel in the landscape, if the tile is a crop."""
        a = self.to_landscape
        if self.nodes is not None:
            return None
        if (a.a, a.b, a.d, a.e) == (1.0, 0.0, 0.0, 1.0) and a.c.is_integer() and a.f.is_integer():
            return int(a.f), int(a.c)
        return None

    def locate(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landscape ``(col, row)`` of tile points ``(x, y)`` (10 m pixel units, in the tile)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self.nodes is None:
            a = self.to_landscape
            return a.a * x + a.b * y + a.c, a.d * x + a.e * y + a.f
        m = self.nodes.shape[-1]
        step = self.side / (m - 1)
        u, v = x / step, y / step
        j = np.clip(np.floor(u), 0, m - 2).astype(np.intp)
        i = np.clip(np.floor(v), 0, m - 2).astype(np.intp)
        fu, fv = u - j, v - i
        nd = self.nodes
        top = nd[:, i, j] * (1.0 - fu) + nd[:, i, j + 1] * fu
        bottom = nd[:, i + 1, j] * (1.0 - fu) + nd[:, i + 1, j + 1] * fu
        col, row = top * (1.0 - fv) + bottom * fv
        return col, row

    def positions(self, resolution: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Landscape ``(col, row)`` of the centres of the tile's ``resolution`` m pixels.

        Args:
            resolution: 10, 20 or 60.
            n: pixels per side (default: those that cover the tile).
        """
        k = resolution // 10
        n = n or -(-self.size // k)
        c = (np.arange(n) + 0.5) * k
        return self.locate(*np.meshgrid(c, c))
