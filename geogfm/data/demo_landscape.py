"""A procedural landscape and its Sentinel-2 L2A scenes, for the offline demo catalog.

The demo catalog must exercise everything real imagery does: land covers with their own spectra
and seasons, clouds and their shadows, a scene classification that agrees with the pixels, and no
data beyond a swath edge. This module makes such imagery from a seed, with numpy only, in well
under a second per scene at the default size:

1. **Land cover** (ESA WorldCover classes) of spatially coherent patches: forest, shrub and
   pasture on the higher ground of a random terrain, rock on its summits, farmland cut into
   elongated parcels (anisotropic Voronoi cells in two cadastral orientations), villages strung
   along meandering roads, a river with riparian trees and gravel bars, sometimes a lake.
2. **Units and covers**: every parcel, and every class inside a forest stand, is a *unit* with a
   cover type (winter cereal, maize, soybean, rapeseed, meadow, broadleaf forest, ...). A cover's
   phenology calendar gives, for any day of the year, the fractions of a few endmember spectra
   (green leaf, broadleaf and needleleaf canopy, dry vegetation, soil, rock, urban, clear and
   turbid water, flowers), tabulated by wavelength and sampled at the band centres of
   :data:`~geogfm.data.datasets.sentinel2.BANDS`. Units jitter their calendar, brightness, soil.
3. **Scenes**: for a date, the units' spectra are gathered to the 10 m pixels, modulated by a
   vigour field and a texture, blurred by a small point spread; clouds are a thresholded fractal
   field (their fraction drawn around the requested mean) with thin cirrus at the edges, their
   shadows the cloud bodies shifted away from the sun computed for the overpass; bands are
   block-averaged to 20 m and 60 m and get sensor noise; a 20 m scene classification (SCL) is
   derived from the same fields.

Everything is deterministic from the seed; a date's weather depends only on the seed and the
date, so adding a date leaves the others unchanged.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from geogfm.data.datasets.sentinel2 import BANDS

__all__ = ["LANDCOVER_CLASSES", "LANDCOVER_COLORS", "DemoLandscape", "DemoScene"]

#: ESA WorldCover classes of the demo land-cover layer (code -> name); 0 is no data.
LANDCOVER_CLASSES: dict[int, str] = {
    10: "tree_cover",
    20: "shrubland",
    30: "grassland",
    40: "cropland",
    50: "built_up",
    60: "bare_sparse_vegetation",
    80: "permanent_water_bodies",
}
#: ESA WorldCover colour of each class (hex RGB).
LANDCOVER_COLORS: dict[int, str] = {
    10: "006400",
    20: "ffbb22",
    30: "ffff4c",
    40: "f096ff",
    50: "fa0000",
    60: "b4b4b4",
    80: "0064c8",
}


# ------------------------------------------------------------------------------------------ spectra


class _EM(IntEnum):
    """Endmembers: the pure materials every pixel is a mixture of."""

    LEAF = 0  # herbaceous green canopy: crops, grass
    BROADLEAF = 1
    NEEDLE = 2
    DRY = 3  # senescent vegetation, straw, stubble, litter
    SOIL = 4
    ROCK = 5  # bright bare rock and gravel
    URBAN = 6  # roofs, concrete, asphalt
    WATER = 7
    TURBID = 8  # sediment-laden water
    FLOWER = 9  # flowering rapeseed


# Surface reflectance of each endmember in thousandths, tabulated at these wavelengths (micrometres)
# and interpolated to the band centres, so the library does not depend on the band table's order.
_WAVELENGTHS = (0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.610, 2.190)
_SPECTRA = {
    _EM.LEAF: (25, 30, 75, 30, 90, 270, 370, 410, 420, 400, 210, 95),
    _EM.BROADLEAF: (18, 22, 50, 22, 70, 210, 290, 320, 330, 315, 160, 70),
    _EM.NEEDLE: (15, 18, 35, 18, 50, 150, 200, 220, 230, 220, 110, 45),
    _EM.DRY: (60, 75, 110, 150, 180, 210, 230, 250, 260, 265, 340, 250),
    _EM.SOIL: (55, 70, 100, 140, 160, 180, 195, 210, 220, 230, 290, 250),
    _EM.ROCK: (110, 140, 190, 240, 260, 275, 285, 295, 300, 305, 340, 290),
    _EM.URBAN: (90, 100, 120, 140, 150, 160, 170, 180, 185, 190, 210, 190),
    _EM.WATER: (50, 45, 40, 20, 15, 8, 6, 5, 4, 3, 2, 1),
    _EM.TURBID: (60, 65, 80, 55, 45, 20, 14, 12, 10, 6, 3, 1),
    _EM.FLOWER: (30, 40, 170, 140, 200, 320, 380, 420, 430, 410, 230, 110),
}
# Thick cloud tops: bright and nearly flat, a little darker in the SWIR.
_CLOUD = (0.52, 0.53, 0.55, 0.56, 0.56, 0.56, 0.56, 0.56, 0.56, 0.53, 0.44, 0.33)
# Fraction of the light a cloud shadow removes: less in the blue, where diffuse skylight fills in.
_SHADOW_DEPTH = ((0.44, 0.55), (2.19, 0.80))

_CENTRES = np.array([b.center_wavelength for b in BANDS])
_BAND_INDEX = {b.key: i for i, b in enumerate(BANDS)}


def _at_bands(values: tuple[float, ...]) -> np.ndarray:
    return np.interp(_CENTRES, _WAVELENGTHS, values).astype(np.float32)


_ENDMEMBERS = np.stack([_at_bands(_SPECTRA[e]) / 1000 for e in _EM])  # (K, n_bands)


# ------------------------------------------------------------------------------------------- covers


@dataclass(frozen=True)
class _Cover:
    """A cover type: its green canopy, its phenology calendar and what lies beneath."""

    green: _EM  # endmember of the green canopy
    base: tuple[tuple[_EM, float], ...]  # the rest (1 - green - dry - flower); sum < 1: shade
    doy: tuple[int, ...]  # calendar knots, day of year (cyclic)
    g: tuple[float, ...]  # green canopy fraction at the knots
    dry: tuple[float, ...]  # dry vegetation fraction at the knots
    flower: tuple[float, ...] | None = None
    vigour: float = 0.3  # relative change of the green fraction per unit of the vigour field


class _C(IntEnum):
    BROADLEAF_FOREST = 0
    NEEDLELEAF_FOREST = 1
    MIXED_FOREST = 2  # the mean of the two above
    SHRUB = 3
    PASTURE = 4
    MEADOW = 5  # mown twice a year
    WINTER_CEREAL = 6
    MAIZE = 7
    SOYBEAN = 8
    RAPESEED = 9
    BUILT = 10
    ROAD = 11
    ROCK = 12
    WATER = 13


_SOIL = ((_EM.SOIL, 1.0),)
_COVERS: dict[_C, _Cover] = {
    _C.BROADLEAF_FOREST: _Cover(
        _EM.BROADLEAF,
        ((_EM.SOIL, 0.35),),
        (15, 100, 118, 140, 240, 280, 300, 325),
        (0.12, 0.12, 0.45, 0.90, 0.90, 0.72, 0.35, 0.12),
        (0.50, 0.50, 0.35, 0.05, 0.05, 0.15, 0.40, 0.50),
    ),
    _C.NEEDLELEAF_FOREST: _Cover(
        _EM.NEEDLE,
        ((_EM.SOIL, 0.3),),
        (15, 120, 200, 300),
        (0.80, 0.86, 0.92, 0.84),
        (0.06, 0.05, 0.03, 0.06),
    ),
    _C.SHRUB: _Cover(
        _EM.BROADLEAF,
        ((_EM.SOIL, 0.9),),
        (20, 110, 160, 230, 290, 330),
        (0.25, 0.35, 0.70, 0.60, 0.45, 0.28),
        (0.50, 0.45, 0.20, 0.30, 0.40, 0.50),
    ),
    _C.PASTURE: _Cover(
        _EM.LEAF,
        _SOIL,
        (15, 75, 105, 135, 165, 220, 280, 330),
        (0.35, 0.40, 0.65, 0.85, 0.80, 0.60, 0.65, 0.45),
        (0.55, 0.50, 0.28, 0.10, 0.14, 0.32, 0.27, 0.45),
    ),
    _C.MEADOW: _Cover(
        _EM.LEAF,
        _SOIL,
        (15, 75, 105, 135, 165, 220, 280, 330),
        (0.40, 0.42, 0.70, 0.92, 0.90, 0.82, 0.72, 0.50),
        (0.50, 0.48, 0.25, 0.05, 0.07, 0.13, 0.23, 0.42),
    ),
    # sown in October, green through winter, ripe (dry) in late June, stubble, ploughed in October
    _C.WINTER_CEREAL: _Cover(
        _EM.LEAF,
        _SOIL,
        (1, 60, 95, 125, 150, 170, 185, 195, 260, 280, 295, 320, 350),
        (0.22, 0.25, 0.50, 0.88, 0.85, 0.45, 0.10, 0.03, 0.06, 0.02, 0.02, 0.10, 0.18),
        (0.00, 0.00, 0.00, 0.00, 0.05, 0.45, 0.80, 0.65, 0.50, 0.10, 0.03, 0.00, 0.00),
    ),
    # bare until May, peak in August, dry stalks in September, harvested in October
    _C.MAIZE: _Cover(
        _EM.LEAF,
        _SOIL,
        (1, 110, 140, 160, 185, 215, 245, 265, 280, 300, 330),
        (0.00, 0.00, 0.03, 0.15, 0.60, 0.95, 0.85, 0.50, 0.25, 0.03, 0.00),
        (0.35, 0.05, 0.00, 0.00, 0.00, 0.00, 0.10, 0.40, 0.65, 0.55, 0.45),
    ),
    _C.SOYBEAN: _Cover(
        _EM.LEAF,
        _SOIL,
        (1, 120, 150, 175, 200, 230, 255, 270, 285, 310),
        (0.00, 0.00, 0.02, 0.20, 0.70, 0.92, 0.70, 0.30, 0.05, 0.00),
        (0.20, 0.05, 0.00, 0.00, 0.00, 0.00, 0.20, 0.55, 0.60, 0.30),
    ),
    # sown in late August, green in winter, yellow flowers in April-May, harvested in early July
    _C.RAPESEED: _Cover(
        _EM.LEAF,
        _SOIL,
        (1, 60, 90, 105, 120, 135, 160, 180, 195, 230, 245, 270, 300, 340),
        (0.45, 0.45, 0.70, 0.70, 0.55, 0.75, 0.60, 0.15, 0.03, 0.02, 0.02, 0.25, 0.45, 0.45),
        (0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.30, 0.75, 0.60, 0.20, 0.05, 0.00, 0.00, 0.00),
        (0.00, 0.00, 0.00, 0.20, 0.40, 0.05, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),
    ),
    _C.BUILT: _Cover(
        _EM.LEAF,
        ((_EM.URBAN, 1.0),),
        (15, 120, 200, 300),
        (0.10, 0.22, 0.25, 0.15),
        (0.03, 0.03, 0.03, 0.03),
    ),
    _C.ROAD: _Cover(_EM.LEAF, ((_EM.URBAN, 1.0),), (1, 180), (0.03, 0.05), (0.02, 0.02)),
    _C.ROCK: _Cover(
        _EM.LEAF,
        ((_EM.ROCK, 0.85), (_EM.SOIL, 0.15)),
        (15, 150, 240, 330),
        (0.02, 0.08, 0.06, 0.02),
        (0.05, 0.05, 0.08, 0.05),
    ),
    _C.WATER: _Cover(_EM.LEAF, ((_EM.WATER, 1.0),), (1, 180), (0.0, 0.0), (0.0, 0.0), vigour=0.0),
}

#: WorldCover class of each cover.
_COVER_CLASS = {
    _C.BROADLEAF_FOREST: 10,
    _C.NEEDLELEAF_FOREST: 10,
    _C.MIXED_FOREST: 10,
    _C.SHRUB: 20,
    _C.PASTURE: 30,
    _C.MEADOW: 30,
    _C.WINTER_CEREAL: 40,
    _C.MAIZE: 40,
    _C.SOYBEAN: 40,
    _C.RAPESEED: 40,
    _C.BUILT: 50,
    _C.ROAD: 50,
    _C.ROCK: 60,
    _C.WATER: 80,
}


class _S(IntEnum):
    """Layout slots: what the landscape layout puts at a pixel before covers are drawn."""

    FARM = 0  # an agricultural parcel: crop, meadow or fallow
    FOREST = 1
    SHRUB = 2
    PASTURE = 3
    BUILT = 4
    ROAD = 5
    ROCK = 6
    WATER = 7


_N_SLOTS = len(_S)
_FARM_COVERS = (_C.WINTER_CEREAL, _C.MAIZE, _C.SOYBEAN, _C.RAPESEED, _C.MEADOW, _C.SHRUB)
_FARM_P = (0.26, 0.26, 0.10, 0.08, 0.25, 0.05)
_FOREST_COVERS = (_C.BROADLEAF_FOREST, _C.NEEDLELEAF_FOREST, _C.MIXED_FOREST)
_FOREST_P = (0.45, 0.25, 0.30)
_SLOT_COVER = {
    _S.SHRUB: _C.SHRUB,
    _S.PASTURE: _C.PASTURE,
    _S.BUILT: _C.BUILT,
    _S.ROAD: _C.ROAD,
    _S.ROCK: _C.ROCK,
    _S.WATER: _C.WATER,
}


def _compose(cover: _Cover, doy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Endmember fractions of ``len(doy)`` units of one cover, and their change per unit vigour."""
    n, k = doy.size, len(_EM)
    g = np.interp(doy, cover.doy, cover.g, period=365)
    dry = np.interp(doy, cover.doy, cover.dry, period=365)
    flower = np.interp(doy, cover.doy, cover.flower, period=365) if cover.flower else np.zeros(n)
    rest = 1.0 - g - dry - flower
    base = np.zeros(k)
    for em, w in cover.base:
        base[em] = w
    frac = rest[:, None] * base[None, :]  # (n, K)
    frac[:, cover.green] += g
    frac[:, _EM.DRY] += dry
    frac[:, _EM.FLOWER] += flower
    # vigour moves a share of the green canopy to and from the base material
    toward_green = -base
    toward_green[cover.green] += 1.0
    dfrac = (cover.vigour * g)[:, None] * toward_green[None, :]
    return frac, dfrac


# ------------------------------------------------------------------------------------- noise fields


def _fast_len(n: int) -> int:
    """Smallest 5-smooth integer >= n (a fast FFT size)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _field(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, *, beta: float | None = None
) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field (float32) by spectral synthesis.

    With ``beta=None`` the spectrum is Gaussian (smooth blobs of about ``scale`` pixels);
    otherwise a power law ``k**-beta`` rolled off below ``1/scale`` (fractal detail at every
    scale up to ``scale``). The field is periodic over a fast FFT size >= ``shape``, then cropped.
    """
    h, w = shape
    fh, fw = _fast_len(h), _fast_len(w)
    spec = np.fft.rfft2(rng.standard_normal((fh, fw), dtype=np.float32))
    k2 = np.fft.fftfreq(fh)[:, None] ** 2 + np.fft.rfftfreq(fw)[None, :] ** 2
    if beta is None:
        spec *= np.exp(-2.0 * math.pi**2 * scale**2 * k2)
    else:
        spec *= (k2 + scale**-2) ** (-beta / 4.0)
    spec[0, 0] = 0.0
    f = np.fft.irfft2(spec, s=(fh, fw))[:h, :w]
    f -= f.mean()
    return (f / max(f.std(), 1e-12)).astype(np.float32)


def _voronoi(
    rng: np.random.Generator, n: int, cell: tuple[float, float], angle: float
) -> np.ndarray:
    """Ids of anisotropic Voronoi cells over an ``(n, n)`` grid: elongated parcels.

    Seeds are jittered on a grid of ``cell`` (along, across) pixels rotated by ``angle``; each pixel
    checks the 3x3 neighbouring grid cells only.
    """
    yy, xx = np.indices((n, n), dtype=np.float32)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx * c + yy * s) / cell[0]
    v = (-xx * s + yy * c) / cell[1]
    iu, iv = np.floor(u).astype(np.int32), np.floor(v).astype(np.int32)
    u0, v0 = iu.min() - 1, iv.min() - 1
    nu, nv = iu.max() - u0 + 2, iv.max() - v0 + 2
    jitter = rng.uniform(0.1, 0.9, size=(2, nu, nv)).astype(np.float32)
    best = np.full((n, n), np.inf, dtype=np.float32)
    ids = np.zeros((n, n), dtype=np.int64)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            cu, cv = iu + du - u0, iv + dv - v0
            d = (u - (cu + u0) - jitter[0, cu, cv]) ** 2 + (v - (cv + v0) - jitter[1, cu, cv]) ** 2
            closer = d < best
            best[closer] = d[closer]
            ids[closer] = (cu * nv + cv)[closer]
    return ids


def _meander(
    rng: np.random.Generator, n: int, wavelength: tuple[float, float], amplitude: float
) -> np.ndarray:
    """Distance (pixels) of every pixel of an ``(n, n)`` grid to a meandering line across it."""
    yy, xx = np.indices((n, n), dtype=np.float32)
    theta = rng.uniform(0.0, math.pi)
    cx, cy = n * rng.uniform(0.3, 0.7, size=2)
    along = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    across = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    offset = np.zeros_like(along)
    for _ in range(3):
        lam = rng.uniform(*wavelength)
        offset += (
            amplitude
            * lam
            * rng.uniform(0.3, 1.0)
            * np.sin(2.0 * math.pi * along / lam + rng.uniform(0.0, 2.0 * math.pi))
        )
    return np.abs(across - offset)


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over ``k x k`` blocks of the last two axes (sizes divisible by ``k``)."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // k, k, w // k, k).mean(axis=(-3, -1))


def _psf(img: np.ndarray) -> np.ndarray:
    """The sensor's point spread: a separable [0.2, 0.6, 0.2] blur of ``(B, H, W)``, edges held."""
    for axis in (1, 2):
        out = 0.6 * img
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(hi)] += 0.2 * img[tuple(lo)]  # from the previous row (column)
        out[tuple(lo)] += 0.2 * img[tuple(hi)]  # from the next one
        for edge in (0, -1):  # beyond the edge, the edge pixel itself
            idx = [slice(None)] * 3
            idx[axis] = edge
            out[tuple(idx)] += 0.2 * img[tuple(idx)]
        img = out
    return img


def _solar_position(when: dt.datetime, lon: float, lat: float) -> tuple[float, float]:
    """Sun azimuth (degrees clockwise from north) and elevation (degrees) at ``when`` (UTC).

    NOAA's low-precision formulas (declination and equation of time as Fourier series), good to a
    fraction of a degree.
    """
    when = when.astimezone(dt.UTC)
    hour = when.hour + when.minute / 60 + when.second / 3600
    g = 2 * math.pi / 365 * (when.timetuple().tm_yday - 1 + (hour - 12) / 24)
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    hour_angle = math.radians((hour * 60 + eqtime + 4 * lon) / 4 - 180)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    elevation = 90 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zen))))
    azimuth = math.degrees(
        math.atan2(
            math.sin(hour_angle),
            math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi),
        )
    )
    return (azimuth + 180.0) % 360.0, elevation


# -------------------------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class DemoScene:
    """One simulated Sentinel-2 L2A acquisition of a :class:`DemoLandscape`."""

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


# ---------------------------------------------------------------------------------------- landscape


class DemoLandscape:
    """A synthetic landscape of ``size x size`` 10 m pixels and its Sentinel-2 L2A scenes.

    Everything is drawn from ``np.random.default_rng`` streams seeded with ``seed`` (and, for a
    scene, its date), so the same arguments give the same arrays on every run.

    Args:
        seed: the landscape's seed.
        size: tile side in 10 m pixels (>= 16).
        lon: longitude of the tile centre, degrees (for the sun's position).
        lat: latitude of the tile centre, degrees (for the sun's position).

    Attributes:
        landcover: ``(size, size)`` uint8 map of :data:`LANDCOVER_CLASSES` codes at 10 m.
    """

    def __init__(self, *, seed: int, size: int, lon: float = 15.0, lat: float = 46.0) -> None:
        if size < 16:
            raise ValueError(f"size={size} is too small for a demo tile; use at least 16 pixels")
        self.seed, self.size, self.lon, self.lat = seed, size, lon, lat
        # generate on a side divisible by 6, so 20 m and 60 m pixels are whole blocks of 10 m pixels
        self._n = n = -(-size // 6) * 6
        rng = np.random.default_rng([seed, 1])

        slot, region = self._layout(rng, n)
        units, unit = np.unique(region * _N_SLOTS + slot, return_inverse=True)
        self._unit = unit.reshape(n, n).astype(np.int32)  # (n, n) index into the unit table
        self._draw_units(rng, (units % _N_SLOTS).astype(np.int64))
        self.landcover = self._unit_class[self._unit[:size, :size]]

        # per-pixel vigour (std 1, coherent at a few pixels and within-parcel gradients) and texture
        vig = sum(w * _field(rng, (n, n), sc) for w, sc in ((0.5, 20), (0.6, 3), (0.4, 1)))
        self._vigour = np.clip(vig / vig.std(), -2.5, 2.5)
        fine, medium = _field(rng, (n, n), 0.7), _field(rng, (n, n), 8)
        urban = np.isin(self._unit_cover[self._unit], (_C.BUILT, _C.ROAD))
        self._texture = np.where(
            urban, np.clip(1.0 + 0.22 * fine, 0.5, 1.6), 1.0 + 0.025 * fine + 0.03 * medium
        ).astype(np.float32)

        # the swath edge of the orbit that sees the tile only in part: a line tilted like the ground
        # track, no data on one side; the valid side covers 55-80 % of the tile
        tilt = math.radians(rng.uniform(8.0, 16.0)) * rng.choice((-1.0, 1.0))
        side = float(rng.choice((-1.0, 1.0)))  # +1: no data east of the edge
        covered = rng.uniform(0.55, 0.80)
        self._swath = (size * (covered if side > 0 else 1.0 - covered), math.tan(tilt), side)

    # --------------------------------------------------------------------------------- layout

    def _layout(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Slot and region id of every pixel: what is where, and which parcel or stand it is in."""
        area_km2 = (n * 0.01) ** 2
        terrain = _field(rng, (n, n), 120, beta=3.0)
        natural = 0.75 * terrain + 0.65 * _field(rng, (n, n), 40)
        f_forest, f_shrub, f_pasture = rng.uniform(0.28, 0.45), *rng.uniform(0.03, 0.07, size=2)
        q_pasture, q_shrub, q_forest = np.quantile(
            natural,
            [1 - f_forest - f_shrub - f_pasture, 1 - f_forest - f_shrub, 1 - f_forest],
        )
        slot = np.full((n, n), _S.FARM, dtype=np.int64)
        slot[natural > q_pasture] = _S.PASTURE
        slot[natural > q_shrub] = _S.SHRUB
        slot[natural > q_forest] = _S.FOREST
        slot[terrain > np.quantile(terrain, 0.992)] = _S.ROCK

        # a river with riparian trees and gravel bars; sometimes a lake in a low spot
        river = _meander(rng, n, (60.0, 200.0), 0.12)
        width = rng.uniform(4.0, 9.0) / 2
        banks = _field(rng, (n, n), 2)
        slot[(river < width + 2.5 + 1.5 * banks) & (slot == _S.FARM)] = _S.FOREST
        water = river < width
        if rng.random() < 0.6:
            yy, xx = np.indices((n, n), dtype=np.float32)
            cand = rng.integers(0, n, size=(32, 2))
            cy, cx = cand[np.argmin(terrain[cand[:, 0], cand[:, 1]])]
            ry, rx = rng.uniform(12.0, 35.0, size=2)
            shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.35 * _field(rng, (n, n), 6)
            water |= shape < 1.0

        # roads across the tile, villages along them
        roads = np.zeros((n, n), dtype=bool)
        for _ in range(max(1, round(n / 250)) + int(rng.integers(0, 2))):  # one per ~2.5 km
            roads |= _meander(rng, n, (150.0, 400.0), 0.04) < rng.uniform(0.6, 1.0)
        on_road = np.flatnonzero(roads)
        density = np.zeros((n, n), dtype=np.float32)
        for _ in range(max(1, round(area_km2 / 6))):
            cy, cx = divmod(int(on_road[rng.integers(0, on_road.size)]), n)
            sigma = rng.uniform(10.0, 30.0)
            r = math.ceil(4 * sigma)
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r, n), max(cx - r, 0), min(cx + r, n)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            density[y0:y1, x0:x1] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        built = density * (1.0 + 0.4 * _field(rng, (n, n), 4)) > 0.55
        slot[built] = _S.BUILT
        slot[roads] = _S.ROAD
        slot[(river >= width) & (river < width + 2.0) & (banks > 1.0)] = _S.ROCK
        slot[water] = _S.WATER

        # regions: farm parcels in two cadastral orientations, coarser stands elsewhere
        angle = rng.uniform(0.0, math.pi)
        cell_a = (rng.uniform(22.0, 40.0), rng.uniform(8.0, 14.0))
        cell_b = (rng.uniform(22.0, 40.0), rng.uniform(8.0, 14.0))
        parcels_a = _voronoi(rng, n, cell_a, angle)
        parcels_b = _voronoi(rng, n, cell_b, angle + rng.uniform(0.5, 1.2))
        parcels = np.where(_field(rng, (n, n), 150) > 0, parcels_a, parcels_b + parcels_a.max() + 1)
        stands = _voronoi(rng, n, (35.0, 35.0), 0.0) + parcels.max() + 1
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
        """Cloud opacity, cloud thickness and shadow strength, each ``(n, n)`` in [0, 1].

        The opacity is 0 outside clouds, rises over a soft edge (thin cirrus) to 1; a fraction
        ``fraction`` of the tile has opacity > 0. Shadows are cast by the cloud bodies that stand
        ``height / tan(elevation)`` towards the sun, so they come in from beyond the tile too.
        """
        n = self._n
        length = min(rng.uniform(600.0, 1500.0) / math.tan(math.radians(max(elevation, 5.0))), 2500)
        drow = length / 10 * math.cos(math.radians(azimuth))  # pixels; rows grow southwards
        dcol = -length / 10 * math.sin(math.radians(azimuth))
        pr, pc = math.ceil(abs(drow)), math.ceil(abs(dcol))
        dom = (n + 2 * pr, n + 2 * pc)
        tau = _field(rng, dom, 250, beta=4.0) + 0.05 * _field(rng, dom, 2)
        tile = tau[pr : pr + n, pc : pc + n]
        if fraction <= 0:
            zeros = np.zeros((n, n), dtype=np.float32)
            return zeros, zeros, zeros
        t = np.quantile(tile, 1.0 - fraction)
        alpha = np.clip((tau - t) / 0.5, 0.0, 1.0)
        # only the body of a cloud casts a shadow one can see; its thin edges do not
        r0, c0 = pr - round(drow), pc - round(dcol)
        shadow = np.clip((tau[r0 : r0 + n, c0 : c0 + n] - t - 0.3) / 0.5, 0.0, 1.0)
        thick = np.clip((tile - t) / 1.5, 0.0, 1.0)
        return alpha[pr : pr + n, pc : pc + n], thick, shadow

    def _nodata(self, resolution: int, shape: tuple[int, int]) -> np.ndarray:
        """``shape`` mask of the pixels at ``resolution`` m beyond the swath edge."""
        x0, slope, side = self._swath
        k = resolution / 10
        y = (np.arange(shape[0]) + 0.5)[:, None] * k
        x = (np.arange(shape[1]) + 0.5)[None, :] * k
        return side * (x - (x0 + slope * (y - self.size / 2))) > 0

    def _footprint(self, partial: bool) -> tuple[tuple[float, float], ...]:
        s = float(self.size)
        poly = [(0.0, 0.0), (s, 0.0), (s, s), (0.0, s)]
        if not partial:
            return tuple(poly)
        x0, slope, side = self._swath

        def f(p: tuple[float, float]) -> float:  # > 0 beyond the edge
            return side * (p[0] - (x0 + slope * (p[1] - s / 2)))

        out = []
        for a, b in zip(poly, poly[1:] + poly[:1], strict=True):
            fa, fb = f(a), f(b)
            if fa <= 0:
                out.append(a)
            if (fa <= 0) != (fb <= 0):
                t = fa / (fa - fb)
                out.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
        return tuple(out)

    def scene(self, when: dt.datetime, *, cloud_cover: float, partial: bool = False) -> DemoScene:
        """Simulate the acquisition at ``when``.

        Args:
            when: overpass time (timezone-aware; it sets the season and the sun).
            cloud_cover: mean cloud fraction in [0, 1]; this date's fraction is drawn around it.
            partial: whether the orbit sees the tile only in part (no data beyond a swath edge).

        Returns:
            The scene; its :attr:`DemoScene.cloud_cover` is measured on its SCL.
        """
        if not 0.0 <= cloud_cover <= 1.0:
            raise ValueError(f"cloud_cover={cloud_cover} is not a fraction in [0, 1]")
        size = self.size
        rng = np.random.default_rng([self.seed, 2, when.date().toordinal()])
        azimuth, elevation = _solar_position(when, self.lon, self.lat)
        doy = when.timetuple().tm_yday

        # surface: unit spectra gathered to pixels, vigour and texture, the sensor's blur
        spectra, dspectra = self._unit_spectra(
            doy, moisture=rng.uniform(0.8, 1.05), turbidity=rng.normal(0.0, 0.15)
        )
        surf = np.take(spectra.T, self._unit, axis=1)  # (B, n, n)
        surf += self._vigour * np.take(dspectra.T, self._unit, axis=1)
        surf = _psf(surf * self._texture)
        red, nir = surf[_BAND_INDEX["red"]], surf[_BAND_INDEX["nir08"]]
        ndvi = _block_mean((nir - red) / (nir + red + 1e-6), 2)
        water = _block_mean(nir, 2) < 0.05

        # weather: clouds over the surface, their shadows on it
        fraction = min(cloud_cover * rng.gamma(3.0, 1 / 3), 0.95)
        alpha, thick, shadow = self._clouds(rng, fraction, azimuth, elevation)
        depth = np.interp(_CENTRES, *zip(*_SHADOW_DEPTH, strict=True)).astype(np.float32)
        surf *= 1.0 - shadow[None] * depth[:, None, None]
        cloud = np.asarray(_CLOUD, dtype=np.float32)[:, None, None] * (0.55 + 0.45 * thick)[None]
        img = surf * (1.0 - alpha[None]) + cloud * alpha[None]

        # native resolutions, sensor noise, no data beyond the swath edge
        reflectance = {}
        for i, b in enumerate(BANDS):
            k = b.resolution // 10
            side = -(-size // k)
            band = _block_mean(img[i], k)[:side, :side] if k > 1 else img[i, :size, :size]
            band = band + rng.standard_normal(band.shape, dtype=np.float32) * (0.001 + 0.005 * band)
            band = np.clip(band, 1e-4, 1.5).astype(np.float32)
            if partial:
                band[self._nodata(b.resolution, band.shape)] = np.nan
            reflectance[b.key] = band

        # scene classification at 20 m, from the same fields
        side = -(-size // 2)
        a20, s20 = _block_mean(alpha, 2)[:side, :side], _block_mean(shadow, 2)[:side, :side]
        scl = np.full((side, side), 5, dtype=np.uint8)  # not vegetated
        scl[ndvi[:side, :side] > 0.4] = 4
        scl[water[:side, :side]] = 6
        scl[s20 > 0.3] = 3
        scl[a20 > 0.04] = 10
        scl[a20 >= 0.35] = 8
        scl[a20 >= 0.75] = 9
        if partial:
            scl[self._nodata(20, scl.shape)] = 0
        return DemoScene(
            reflectance=reflectance,
            scl=scl,
            footprint=self._footprint(partial),
            sun_azimuth=azimuth,
            sun_elevation=elevation,
        )
