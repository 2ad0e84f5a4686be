"""Where the demo catalog's tiles lie: their UTM grids, MGRS names and views on the landscape.

Used by :mod:`geogfm.stages.demo_catalog`. The first tile is centred on the configured point in
its own UTM zone; the second lies in the neighbouring zone and overlaps it by half, as Sentinel-2
tiles overlap across a zone boundary. The landscape is drawn on the first tile's 10 m grid; a tile
in the other zone is placed on it by the exact projection between the zones at the nodes of a
lattice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from geogfm.data.demo_view import TileView

__all__ = ["TileGrid", "demo_tiles", "landscape_views", "place_tile"]


@dataclass(frozen=True)
class TileGrid:
    """The demo tile on its UTM grid: ``size`` 10 m pixels from the top-left corner ``(x0, y0)``."""

    epsg: int
    x0: float
    y0: float
    size: int
    mgrs: str  # e.g. "33TWL"

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def transform(self, resolution: int) -> Affine:
        return Affine(resolution, 0.0, self.x0, 0.0, -resolution, self.y0)

    def shape(self, resolution: int) -> tuple[int, int]:
        side = -(-self.size * 10 // resolution)
        return side, side

    def lonlat(self, pixels: list[tuple[float, float]]) -> list[list[float]]:
        """10 m pixel coordinates ``(x, y)`` to ``[lon, lat]`` (rounded to ~1 cm)."""
        xs = [self.x0 + 10.0 * x for x, _ in pixels]
        ys = [self.y0 - 10.0 * y for _, y in pixels]
        lons, lats = warp_transform(self.crs, "EPSG:4326", xs, ys)
        return [[round(lon, 7), round(lat, 7)] for lon, lat in zip(lons, lats, strict=True)]


def _utm_epsg(lon: float, lat: float) -> int:
    zone = min(int((lon + 180.0) // 6) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def place_tile(
    *, lon: float, lat: float, size: int, epsg: int | None = None, snap: float = 0
) -> TileGrid:
    """Place a ``size``-pixel tile centred near ``(lon, lat)`` in a UTM zone (default: its own).

    The corners snap to multiples of ``snap`` metres; by default the largest ``2**k * 10`` m (at
    most 2560 m) that fits twice in the tile, so tile_cache's cells (corners on multiples of
    ``cell_size * resolution``) of up to that size cover the tile exactly, and the point stays
    well inside the tile.
    """
    epsg = epsg or _utm_epsg(lon, lat)
    zone = epsg % 100
    (cx,), (cy,) = warp_transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
    half = size * 10 / 2
    snap = snap or 10.0 * 2 ** min(math.floor(math.log2(size)) - 1, 8)
    x0 = round((cx - half) / snap) * snap
    y0 = round((cy + half) / snap) * snap
    # MGRS 100 km square of the centre (the AA lettering Sentinel-2 tiles use)
    band = "CDEFGHJKLMNPQRSTUVWX"[min(int((lat + 80.0) // 8), 19)]
    column = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3][int(cx // 100_000) - 1]
    row = "ABCDEFGHJKLMNPQRSTUV"[(int(cy // 100_000) + (0 if zone % 2 else 5)) % 20]
    return TileGrid(epsg=epsg, x0=x0, y0=y0, size=size, mgrs=f"{zone:02d}{band}{column}{row}")


def demo_tiles(*, lon: float, lat: float, size: int) -> list[TileGrid]:
    """The demo's two tiles, each on its own UTM zone's grid.

    The first is centred on ``(lon, lat)`` in its UTM zone. The second lies in the neighbouring
    zone on the side nearer to ``lon`` (west in the western half of the zone) and overlaps the first
    by half its width, as Sentinel-2 tiles overlap across a zone boundary; its corners snap to
    60 m, like the real tiling grid's.
    """
    home = place_tile(lon=lon, lat=lat, size=size)
    zone = home.epsg % 100
    step = -1 if lon < -177.0 + 6 * (zone - 1) else 1  # central meridian of the zone
    other = home.epsg - zone + (zone - 1 + step) % 60 + 1
    cx, cy = home.x0 + (1 + step) * size * 5.0, home.y0 - size * 5.0  # half a tile over
    (lon2,), (lat2,) = warp_transform(home.crs, "EPSG:4326", [cx], [cy])
    return [home, place_tile(lon=lon2, lat=lat2, size=size, epsg=other, snap=60.0)]


#: Spacing of the lattice on which another zone's tile is projected exactly, in 10 m pixels: the
#: bilinear interpolation between its nodes is off by about ``curvature * spacing**2 / 8``, below
#: 1e-4 px for the curvature of UTM grids near the demo's latitudes (checked in :func:`_views`).
_NODE_SPACING = 64
_NODE_TOLERANCE = 0.01  # px: largest allowed interpolation error, at the lattice cells' centres


def _views(grids: list[TileGrid]) -> list[tuple[TileGrid, np.ndarray]]:
    """Each tile's sampled square on the first tile's 10 m pixel grid, as a lattice of nodes.

    Returns:
        For every grid: ``(2, m, m)`` ``(col, row)`` on the first tile's pixel grid of the tile
        points ``(x, y) = (j, i) * side / (m - 1)`` (``side``: the tile rounded up to 60 m),
        projected exactly; ``m = 2`` (the corners) for a tile in the first tile's zone, where the
        map is a translation.
    """
    home = grids[0]

    def project(g: TileGrid, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xs, ys = warp_transform(
            g.crs, home.crs, (g.x0 + 10.0 * x).ravel(), (g.y0 - 10.0 * y).ravel()
        )
        col = (np.asarray(xs) - home.x0) / 10.0
        row = (home.y0 - np.asarray(ys)) / 10.0
        return np.stack([col.reshape(x.shape), row.reshape(x.shape)])

    out = []
    for g in grids:
        side = -(-g.size // 6) * 6
        m = 2 if g.epsg == home.epsg else -(-side // _NODE_SPACING) + 1
        t = np.linspace(0.0, side, m)
        nodes = project(g, *np.meshgrid(t, t))
        if m > 2:  # the interpolation holds between the nodes: check it where it is worst
            mid = (t[:-1] + t[1:]) / 2
            exact = project(g, *np.meshgrid(mid, mid))
            interp = TileView.from_nodes(g.size, nodes).locate(*np.meshgrid(mid, mid))
            err = float(np.hypot(*(exact - np.stack(interp))).max())
            assert err < _NODE_TOLERANCE, f"tile {g.mgrs}: lattice interpolation off by {err} px"
        out.append((g, nodes))
    return out


def landscape_views(grids: list[TileGrid]) -> tuple[Affine, tuple[int, int], list[TileView]]:
    """The landscape's 10 m grid on the first tile's grid, covering every tile, and their views.

    A tile in the first tile's zone is a crop of the landscape (a whole-pixel shift). A tile in
    another zone is placed by the exact projection between the zones, on a lattice of nodes
    (:meth:`TileView.from_nodes`): the map is not affine over a large tile (0.12 px off at 10 km,
    7.7 px at 82 km, near the demo's zone boundary), so no affine map can stand for it.

    Returns:
        The landscape's transform and ``(height, width)``, and each tile's :class:`TileView`.
    """
    home = grids[0]
    lattices = _views(grids)
    cols = np.concatenate([nodes[0].ravel() for _, nodes in lattices])
    rows = np.concatenate([nodes[1].ravel() for _, nodes in lattices])
    c0, r0 = math.floor(cols.min()) - 1, math.floor(rows.min()) - 1
    c1, r1 = math.ceil(cols.max()) + 1, math.ceil(rows.max()) + 1
    transform = Affine(10.0, 0.0, home.x0 + 10.0 * c0, 0.0, -10.0, home.y0 - 10.0 * r0)

    views = []
    for g, nodes in lattices:
        if g.epsg == home.epsg:  # the same pixel lattice: a whole-pixel shift
            shift = ((g.x0 - transform.c) / 10.0, (transform.f - g.y0) / 10.0)
            views.append(TileView(g.size, Affine.translation(*(float(round(v)) for v in shift))))
        else:  # nodes on the landscape's pixel grid
            views.append(TileView.from_nodes(g.size, nodes - np.array([c0, r0])[:, None, None]))
    return transform, (r1 - r0, c1 - c0), views
