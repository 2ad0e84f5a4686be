"""A procedural landscape and its Sentinel-2 L2A scenes, for the offline demo catalog.

The demo catalog must exercise everything real imagery does: land covers with their own spectra
and seasons, clouds and their shadows, a scene classification that agrees with the pixels, and no
data beyond a swath edge. This module makes such imagery from a seed, with numpy only, in well
under a second per scene at the default size (its random fields are drawn by
:mod:`geogfm.data.demo_fields`):

1. **Land cover** (ESA WorldCover classes) of spatially coherent patches: forest, shrub and
   pasture on the higher ground of a random terrain, rock on its summits, farmland cut into
   elongated parcels (anisotropic Voronoi cells in two cadastral orientations), villages strung
   along meandering roads, a river with riparian trees and gravel bars, sometimes a lake.
2. **Units and covers**: every parcel, and every class inside a forest stand, is a *unit* with a
   cover type (winter cereal, maize, soybean, rapeseed, meadow, broadleaf forest, ...). A cover's
   phenology calendar gives, for any day of the year, the fractions of a few endmember spectra
   (:mod:`geogfm.data.demo_spectra`), sampled at the band centres of
   :data:`~geogfm.data.datasets.sentinel2.BANDS`. Units jitter their calendar, brightness, soil.
3. **A date** (:meth:`DemoLandscape.render`): the units' spectra are gathered to the 10 m pixels,
   modulated by a vigour field and a texture, blurred by a small point spread; clouds are a
   thresholded fractal field (their fraction drawn around the requested mean) with thin cirrus at
   the edges, their shadows the cloud bodies shifted away from the sun computed for the overpass.
4. **A tile's scene** (:meth:`DemoLandscape.observe`): a tile is a square on its own grid, maybe in
   another UTM zone, placed on the landscape by the map between the two grids
   (:class:`~geogfm.data.demo_view.TileView`: a whole-pixel shift, or exact positions on a lattice
   of nodes, interpolated); it samples the
   date at its pixel centres, block-averages to 20 m and 60 m, adds its own sensor noise, loses the
   pixels beyond the swath edge of a partial orbit, and derives a 20 m scene classification (SCL)
   from the same fields. Tiles that overlap see the same ground, clouds and swath edge.

Everything is deterministic from the seed; a date's weather depends only on the seed and the
date, so adding a date leaves the others unchanged.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from affine import Affine

from geogfm.data.datasets.sentinel2 import BANDS
from geogfm.data.demo_fields import (
    block_mean,
    gaussian_field,
    meander,
    psf,
    solar_position,
    voronoi,
)
from geogfm.data.demo_spectra import (
    _BAND_INDEX,
    _C,
    _CENTRES,
    _CLOUD,
    _COVER_CLASS,
    _COVERS,
    _EM,
    _ENDMEMBERS,
    _FARM_COVERS,
    _FARM_P,
    _FOREST_COVERS,
    _FOREST_P,
    _N_SLOTS,
    _S,
    _SHADOW_DEPTH,
    _SLOT_COVER,
    LANDCOVER_CLASSES,
    LANDCOVER_COLORS,
    _compose,
)
from geogfm.data.demo_view import DemoScene, TileView

__all__ = ["LANDCOVER_CLASSES", "LANDCOVER_COLORS", "DemoLandscape"]


@dataclass(frozen=True)
class _Sky:
    """One date over the whole landscape at 10 m, before a tile samples it."""

    #: ``(B + 4, h, w)`` float32: the bands seen from above (surface, shadows, clouds), then the
    #: surface NDVI and nir08 (for the SCL), the cloud opacity and the shadow strength
    layers: np.ndarray
    sun_azimuth: float
    sun_elevation: float
    day: int  #: proleptic ordinal of the date (seeds the sensor noise)


_N_BANDS = len(BANDS)
_NDVI, _NIR, _ALPHA, _SHADOW = range(_N_BANDS, _N_BANDS + 4)


# ---------------------------------------------------------------------------------------- landscape


class DemoLandscape:
    """A synthetic landscape of 10 m pixels and the Sentinel-2 L2A scenes tiles take of it.

    Everything is drawn from ``np.random.default_rng`` streams seeded with ``seed`` (and, for a
    date, its day; for a tile's sensor noise, the tile's key), so the same arguments give the same
    arrays on every run. :meth:`render` simulates a date over the whole landscape and
    :meth:`observe` cuts a tile's scene out of it; :meth:`scene` does both for a tile that is the
    landscape itself.

    Args:
        seed: the landscape's seed.
        size: side in 10 m pixels (>= 16), or ``(height, width)``.
        lon: longitude of the landscape's centre, degrees (for the sun's position).
        lat: latitude of the landscape's centre, degrees (for the sun's position).

    Attributes:
        landcover: ``(height, width)`` uint8 map of :data:`LANDCOVER_CLASSES` codes at 10 m.
    """

    def __init__(
        self, *, seed: int, size: int | tuple[int, int], lon: float = 15.0, lat: float = 46.0
    ) -> None:
        h, w = (size, size) if isinstance(size, int) else size
        if min(h, w) < 16:
            raise ValueError(f"size={size} is too small for a demo landscape; use >= 16 pixels")
        self.seed, self.lon, self.lat = seed, lon, lat
        self.size = (h, w)
        # generate on sides divisible by 6, so a tile that is the whole landscape has whole 20 m
        # and 60 m pixels
        self._shape = shape = (-(-h // 6) * 6, -(-w // 6) * 6)
        rng = np.random.default_rng([seed, 1])

        slot, region = self._layout(rng, shape)
        units, unit = np.unique(region * _N_SLOTS + slot, return_inverse=True)
        self._unit = unit.reshape(shape).astype(np.int32)  # index into the unit table
        self._draw_units(rng, (units % _N_SLOTS).astype(np.int64))
        self._landcover = self._unit_class[self._unit]
        self.landcover = self._landcover[:h, :w]

        # per-pixel vigour (std 1, coherent at a few pixels and within-parcel gradients) and texture
        vig = sum(f * gaussian_field(rng, shape, sc) for f, sc in ((0.5, 20), (0.6, 3), (0.4, 1)))
        self._vigour = np.clip(vig / vig.std(), -2.5, 2.5).astype(np.float32)
        fine, medium = gaussian_field(rng, shape, 0.7), gaussian_field(rng, shape, 8)
        urban = np.isin(self._unit_cover[self._unit], (_C.BUILT, _C.ROAD))
        self._texture = np.where(
            urban, np.clip(1.0 + 0.22 * fine, 0.5, 1.6), 1.0 + 0.025 * fine + 0.03 * medium
        ).astype(np.float32)

        # the swath edge of the orbit that sees the landscape only in part: a line tilted like the
        # ground track, no data on one side; the valid side covers 55-80 % of the landscape's width
        tilt = math.radians(rng.uniform(8.0, 16.0)) * rng.choice((-1.0, 1.0))
        side = float(rng.choice((-1.0, 1.0)))  # +1: no data east of the edge
        covered = rng.uniform(0.55, 0.80)
        self._swath = (w * (covered if side > 0 else 1.0 - covered), math.tan(tilt), side)

    def view(self) -> TileView:
        """The view of a tile that is the landscape itself (its shorter side)."""
        return TileView(min(self.size), Affine.identity())

    # --------------------------------------------------------------------------------- layout

    def _layout(
        self, rng: np.random.Generator, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slot and region id of every pixel: what is where, and which parcel or stand it is in."""
        h, w = shape
        area_km2 = h * w * 1e-4
        terrain = gaussian_field(rng, shape, 120, beta=3.0)
        natural = 0.75 * terrain + 0.65 * gaussian_field(rng, shape, 40)
        f_forest, f_shrub, f_pasture = rng.uniform(0.28, 0.45), *rng.uniform(0.03, 0.07, size=2)
        q_pasture, q_shrub, q_forest = np.quantile(
            natural,
            [1 - f_forest - f_shrub - f_pasture, 1 - f_forest - f_shrub, 1 - f_forest],
        )
        slot = np.full(shape, _S.FARM, dtype=np.int64)
        slot[natural > q_pasture] = _S.PASTURE
        slot[natural > q_shrub] = _S.SHRUB
        slot[natural > q_forest] = _S.FOREST
        slot[terrain > np.quantile(terrain, 0.992)] = _S.ROCK

        # a river with riparian trees and gravel bars; sometimes a lake in a low spot
        river = meander(rng, shape, (60.0, 200.0), 0.12)
        width = rng.uniform(4.0, 9.0) / 2
        banks = gaussian_field(rng, shape, 2)
        slot[(river < width + 2.5 + 1.5 * banks) & (slot == _S.FARM)] = _S.FOREST
        water = river < width
        if rng.random() < 0.6:
            yy, xx = np.indices(shape, dtype=np.float32)
            cand = rng.integers(0, (h, w), size=(32, 2))
            cy, cx = cand[np.argmin(terrain[cand[:, 0], cand[:, 1]])]
            ry, rx = rng.uniform(12.0, 35.0, size=2)
            lake = (
                ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.35 * gaussian_field(rng, shape, 6)
            )
            water |= lake < 1.0

        # roads across the tile, villages along them
        roads = np.zeros(shape, dtype=bool)
        for _ in range(max(1, round(max(h, w) / 250)) + int(rng.integers(0, 2))):  # one per ~2.5 km
            roads |= meander(rng, shape, (150.0, 400.0), 0.04) < rng.uniform(0.6, 1.0)
        on_road = np.flatnonzero(roads)
        density = np.zeros(shape, dtype=np.float32)
        for _ in range(max(1, round(area_km2 / 6))):
            cy, cx = divmod(int(on_road[rng.integers(0, on_road.size)]), w)
            sigma = rng.uniform(10.0, 30.0)
            r = math.ceil(4 * sigma)
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r, h), max(cx - r, 0), min(cx + r, w)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            density[y0:y1, x0:x1] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        built = density * (1.0 + 0.4 * gaussian_field(rng, shape, 4)) > 0.55
        slot[built] = _S.BUILT
        slot[roads] = _S.ROAD
        slot[(river >= width) & (river < width + 2.0) & (banks > 1.0)] = _S.ROCK
        slot[water] = _S.WATER

        # regions: farm parcels in two cadastral orientations, coarser stands elsewhere
        angle = rng.uniform(0.0, math.pi)
        cell_a = (rng.uniform(22.0, 40.0), rng.uniform(8.0, 14.0))
        cell_b = (rng.uniform(22.0, 40.0), rng.uniform(8.0, 14.0))
        parcels_a = voronoi(rng, shape, cell_a, angle)
        parcels_b = voronoi(rng, shape, cell_b, angle + rng.uniform(0.5, 1.2))
        parcels = np.where(
            gaussian_field(rng, shape, 150) > 0, parcels_a, parcels_b + parcels_a.max() + 1
        )
        stands = voronoi(rng, shape, (35.0, 35.0), 0.0) + parcels.max() + 1
        region = np.where(slot == _S.FARM, parcels, stands)
        return slot, region

    def _draw_units(self, rng: np.random.Generator, slot: np.ndarray) -> None:
        """Cover and attributes of every unit (a region's part in one slot)."""
        m = slot.size
        cover = np.asarray([_SLOT_COVER.get(s, _C.WATER) for s in _S], dtype=np.int64)[slot]
        farm = np.asarray(_FARM_COVERS)[rng.choice(len(_FARM_COVERS), size=m, p=_FARM_P)]
        forest = np.asarray(_FOREST_COVERS)[rng.choice(len(_FOREST_COVERS), size=m, p=_FOREST_P)]
        cover = np.where(slot == _S.FARM, farm, np.where(slot == _S.FOREST, forest, cover))
        self._unit_cover = cover
        self._unit_class = np.asarray([_COVER_CLASS[c] for c in _C], dtype=np.uint8)[cover]
        self._unit_shift = np.clip(rng.normal(0.0, 5.0, size=m), -15.0, 15.0)  # days
        bright = rng.uniform(0.9, 1.1, size=m)
        self._unit_bright = np.where(cover == _C.ROAD, 0.6 * bright, bright)
        self._unit_soil = rng.uniform(0.8, 1.25, size=m)
        self._unit_mow = np.stack([rng.uniform(135, 165, size=m), rng.uniform(190, 235, size=m)], 1)
        self._unit_turbidity = rng.uniform(0.0, 0.6, size=m)

    # --------------------------------------------------------------------------------- scenes

    def _unit_spectra(
        self, doy: int, moisture: float, turbidity: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(n_units, n_bands)`` reflectance of the units on ``doy``, and its change per vigour."""
        m, k = self._unit_cover.size, len(_EM)
        frac, dfrac = np.zeros((m, k)), np.zeros((m, k))
        day = (doy + self._unit_shift) % 365
        for c in np.unique(self._unit_cover):
            idx = np.flatnonzero(self._unit_cover == c)
            if c == _C.MIXED_FOREST:
                fb, db = _compose(_COVERS[_C.BROADLEAF_FOREST], day[idx])
                fn, dn = _compose(_COVERS[_C.NEEDLELEAF_FOREST], day[idx])
                frac[idx], dfrac[idx] = 0.5 * (fb + fn), 0.5 * (db + dn)
                continue
            frac[idx], dfrac[idx] = _compose(_COVERS[_C(c)], day[idx])
            if c == _C.MEADOW:  # mown grass: half the canopy cut, hay drying, regrowth in 30 days
                since = day[idx, None] - self._unit_mow[idx]
                cut = (0.5 * np.clip(1.0 - since / 30.0, 0.0, 1.0) * (since >= 0)).max(axis=1)
                lost = frac[idx, _EM.LEAF] * cut
                frac[idx, _EM.LEAF] -= lost
                frac[idx, _EM.DRY] += 0.4 * lost
                frac[idx, _EM.SOIL] += 0.1 * lost
        soil = self._unit_soil * moisture
        frac[:, _EM.SOIL] *= soil
        dfrac[:, _EM.SOIL] *= soil
        turb = np.clip(self._unit_turbidity + turbidity, 0.0, 1.0)
        frac[:, _EM.TURBID] = frac[:, _EM.WATER] * turb
        frac[:, _EM.WATER] *= 1.0 - turb
        bright = self._unit_bright[:, None]
        spectra = (frac @ _ENDMEMBERS) * bright
        dspectra = (dfrac @ _ENDMEMBERS) * bright
        return spectra.astype(np.float32), dspectra.astype(np.float32)

    def _clouds(
        self, rng: np.random.Generator, fraction: float, azimuth: float, elevation: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cloud opacity, cloud thickness and shadow strength, each ``(h, w)`` in [0, 1].

        The opacity is 0 outside clouds, rises over a soft edge (thin cirrus) to 1; a fraction
        ``fraction`` of the landscape has opacity > 0. Shadows are cast by the cloud bodies that
        stand ``height / tan(elevation)`` towards the sun, so they come in from beyond the edges.
        """
        h, w = self._shape
        length = min(rng.uniform(600.0, 1500.0) / math.tan(math.radians(max(elevation, 5.0))), 2500)
        drow = length / 10 * math.cos(math.radians(azimuth))  # pixels; rows grow southwards
        dcol = -length / 10 * math.sin(math.radians(azimuth))
        pr, pc = math.ceil(abs(drow)), math.ceil(abs(dcol))
        dom = (h + 2 * pr, w + 2 * pc)
        tau = gaussian_field(rng, dom, 250, beta=4.0) + 0.05 * gaussian_field(rng, dom, 2)
        tile = tau[pr : pr + h, pc : pc + w]
        if fraction <= 0:
            zeros = np.zeros((h, w), dtype=np.float32)
            return zeros, zeros, zeros
        t = np.quantile(tile, 1.0 - fraction)
        alpha = np.clip((tau - t) / 0.5, 0.0, 1.0)
        # only the body of a cloud casts a shadow one can see; its thin edges do not
        r0, c0 = pr - round(drow), pc - round(dcol)
        shadow = np.clip((tau[r0 : r0 + h, c0 : c0 + w] - t - 0.3) / 0.5, 0.0, 1.0)
        thick = np.clip((tile - t) / 1.5, 0.0, 1.0)
        return alpha[pr : pr + h, pc : pc + w], thick, shadow

    # --------------------------------------------------------------------------------- scenes

    def _beyond_swath(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance (pixels, > 0 beyond the swath edge) of landscape points ``(x, y)``."""
        x0, slope, side = self._swath
        return side * (x - (x0 + slope * (y - self.size[0] / 2)))

    def render(self, when: dt.datetime, *, cloud_cover: float) -> _Sky:
        """Simulate the landscape on the date of ``when``: surface, clouds, shadows, the sun.

        Args:
            when: overpass time (timezone-aware; it sets the season and the sun).
            cloud_cover: mean cloud fraction in [0, 1]; this date's fraction is drawn around it.
        """
        if not 0.0 <= cloud_cover <= 1.0:
            raise ValueError(f"cloud_cover={cloud_cover} is not a fraction in [0, 1]")
        rng = np.random.default_rng([self.seed, 2, when.date().toordinal()])
        azimuth, elevation = solar_position(when, self.lon, self.lat)
        doy = when.timetuple().tm_yday

        # surface: unit spectra gathered to pixels, vigour and texture, the sensor's blur
        spectra, dspectra = self._unit_spectra(
            doy, moisture=rng.uniform(0.8, 1.05), turbidity=rng.normal(0.0, 0.15)
        )
        layers = np.empty((_N_BANDS + 4, *self._shape), dtype=np.float32)
        surf = layers[:_N_BANDS]  # (B, h, w), a view
        np.take(spectra.T, self._unit, axis=1, out=surf)
        surf += self._vigour * np.take(dspectra.T, self._unit, axis=1)
        surf *= self._texture
        surf[:] = psf(surf)
        red, nir = surf[_BAND_INDEX["red"]], surf[_BAND_INDEX["nir08"]]
        layers[_NDVI] = (nir - red) / (nir + red + 1e-6)
        layers[_NIR] = nir

        # weather: clouds over the surface, their shadows on it
        fraction = min(cloud_cover * rng.gamma(3.0, 1 / 3), 0.95)
        alpha, thick, shadow = self._clouds(rng, fraction, azimuth, elevation)
        depth = np.interp(_CENTRES, *zip(*_SHADOW_DEPTH, strict=True)).astype(np.float32)
        surf *= 1.0 - shadow[None] * depth[:, None, None]
        cloud = np.asarray(_CLOUD, dtype=np.float32)[:, None, None] * (0.55 + 0.45 * thick)[None]
        surf += (cloud - surf) * alpha[None]
        layers[_ALPHA], layers[_SHADOW] = alpha, shadow
        return _Sky(layers, azimuth, elevation, when.date().toordinal())

    def _sample(self, a: np.ndarray, view: TileView) -> np.ndarray:
        """The ``(..., side, side)`` values of ``a`` ``(..., h, w)`` at a tile's 10 m pixels."""
        n = view.side
        if (crop := view.crop) is not None:
            r0, c0 = crop
            assert r0 >= 0 and c0 >= 0 and r0 + n <= a.shape[-2] and c0 + n <= a.shape[-1], crop
            return a[..., r0 : r0 + n, c0 : c0 + n]
        x, y = view.positions(10, n)
        rows, cols = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
        h, w = a.shape[-2:]
        assert rows.min() >= 0 and cols.min() >= 0 and rows.max() < h and cols.max() < w, (
            "the landscape does not cover the tile",
            (rows.min(), rows.max(), cols.min(), cols.max(), h, w),
        )
        return a[..., rows, cols]

    def sample_landcover(self, view: TileView) -> np.ndarray:
        """The ``(size, size)`` land-cover map of a tile (nearest landscape pixel)."""
        return self._sample(self._landcover, view)[: view.size, : view.size]

    def observe(
        self, sky: _Sky, view: TileView, *, partial: bool = False, key: int = 0
    ) -> DemoScene:
        """The scene a tile takes of a rendered date.

        Args:
            sky: the date, from :meth:`render`.
            view: where the tile lies on the landscape.
            partial: whether the orbit sees the landscape only in part (no data beyond a swath
                edge).
            key: the tile's key, which seeds its sensor noise (distinct tiles: distinct keys).

        Returns:
            The scene; its :attr:`DemoScene.cloud_cover` is measured on its SCL.
        """
        size = view.size
        layers = self._sample(sky.layers, view)  # (B + 4, side, side)
        rng = np.random.default_rng([self.seed, 3, sky.day, key])

        # native resolutions, sensor noise, no data beyond the swath edge
        reflectance = {}
        for i, b in enumerate(BANDS):
            k = b.resolution // 10
            side = -(-size // k)
            band = block_mean(layers[i], k)[:side, :side] if k > 1 else layers[i, :size, :size]
            band = band + rng.standard_normal(band.shape, dtype=np.float32) * (0.001 + 0.005 * band)
            band = np.clip(band, 1e-4, 1.5).astype(np.float32)
            if partial:
                band[self._beyond_swath(*view.positions(b.resolution)) > 0] = np.nan
            reflectance[b.key] = band

        # scene classification at 20 m, from the same fields
        side = -(-size // 2)
        ndvi, nir, a20, s20 = (
            block_mean(layers[i], 2)[:side, :side] for i in (_NDVI, _NIR, _ALPHA, _SHADOW)
        )
        scl = np.full((side, side), 5, dtype=np.uint8)  # not vegetated
        scl[ndvi > 0.4] = 4
        scl[nir < 0.05] = 6
        scl[s20 > 0.3] = 3
        scl[a20 > 0.04] = 10
        scl[a20 >= 0.35] = 8
        scl[a20 >= 0.75] = 9
        if partial:
            scl[self._beyond_swath(*view.positions(20)) > 0] = 0
        return DemoScene(
            reflectance=reflectance,
            scl=scl,
            footprint=self._footprint(view, partial),
            sun_azimuth=sky.sun_azimuth,
            sun_elevation=sky.sun_elevation,
        )

    def _footprint(self, view: TileView, partial: bool) -> tuple[tuple[float, float], ...]:
        """The tile's square, clipped to the valid side of the swath edge on a partial date."""
        s = float(view.size)
        poly = [(0.0, 0.0), (s, 0.0), (s, s), (0.0, s)]
        if not partial:
            return tuple(poly)

        def f(p: tuple[float, float]) -> float:  # > 0 beyond the edge
            return float(self._beyond_swath(*view.locate(*p)))

        def along(p: tuple[float, float], q: tuple[float, float], t: float) -> tuple[float, float]:
            return p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])

        out = []
        for p, q in zip(poly, poly[1:] + poly[:1], strict=True):
            fp, fq = f(p), f(q)
            if fp <= 0:
                out.append(p)
            if (fp <= 0) != (fq <= 0):
                # where the edge crosses the swath edge: nearly linear along it (exactly, if the
                # view is affine); bisection keeps it exact on a curved view
                lo, hi = 0.0, 1.0
                t = fp / (fp - fq)
                for _ in range(0 if view.nodes is None else 60):
                    if (f(along(p, q, t)) <= 0) == (fp <= 0):
                        lo = t
                    else:
                        hi = t
                    t = 0.5 * (lo + hi)
                out.append(along(p, q, t))
        return tuple(out)

    def scene(self, when: dt.datetime, *, cloud_cover: float, partial: bool = False) -> DemoScene:
        """Simulate the acquisition at ``when`` of the tile that is the landscape itself.

        Args:
            when: overpass time (timezone-aware; it sets the season and the sun).
            cloud_cover: mean cloud fraction in [0, 1]; this date's fraction is drawn around it.
            partial: whether the orbit sees the tile only in part (no data beyond a swath edge).
        """
        return self.observe(
            self.render(when, cloud_cover=cloud_cover), self.view(), partial=partial
        )
