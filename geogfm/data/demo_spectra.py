"""What the demo landscape is made of: land-cover classes, material spectra, covers and seasons.

Every pixel of :mod:`geogfm.data.demo_landscape` is a mixture of a few *endmembers* (green leaf,
canopies, dry vegetation, soil, rock, roofs, water, flowers) whose surface reflectance is tabulated
by wavelength and sampled at the Sentinel-2 band centres. A *cover* (winter cereal, maize, broadleaf
forest, ...) says, for any day of the year, which fractions of which endmembers it shows: its
phenology calendar. The landscape's layout puts covers on *slots* (farm parcels, forest stands,
villages, roads, rock, water), and each cover belongs to an ESA WorldCover class.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from geogfm.data.datasets.sentinel2 import BANDS

__all__ = ["LANDCOVER_CLASSES", "LANDCOVER_COLORS"]

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
