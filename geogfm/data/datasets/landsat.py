"""Landsat surface reflectance: band tables, scale/offset, QA masks, and a time-series reader.

What a Landsat band is depends on the sensor (TM on Landsat 4-5, ETM+ on 7, OLI/TIRS on 8-9): the
tables here give, per sensor, each band's STAC asset key (as USGS and Planetary Computer name
them), its product band number, centre wavelength, width and native resolution. Two encodings of
surface reflectance are stated:

- **Collection 2 Level-2** (what USGS distributes today): ``reflectance = DN * 0.0000275 - 0.2``,
  ``uint16`` with 0 = fill; surface temperature ``K = DN * 0.00341802 + 149.0``. Pixel quality is
  the ``QA_PIXEL`` bit field (:data:`QA_PIXEL_BITS`, :func:`qa_pixel_valid`).
- **ESPA surface reflectance** (pre-collection, e.g. the eo-box sample series):
  ``reflectance = DN * 0.0001``, ``int16`` with -9999 = fill and a valid range of -2000..16000;
  pixel quality is the CFmask class layer (:data:`FMASK_CLASSES`, :func:`fmask_valid`).

:mod:`geogfm.data.datasets.landsat_series` reads a folder of such scenes as a dated series and
serves its windows as samples.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "C2L2_NODATA",
    "C2L2_SR_OFFSET",
    "C2L2_SR_SCALE",
    "C2L2_ST_OFFSET",
    "C2L2_ST_SCALE",
    "ESPA_SR_NODATA",
    "ESPA_SR_SCALE",
    "ESPA_SR_VALID_RANGE",
    "ETM_BANDS",
    "FMASK_CLASSES",
    "FMASK_INVALID_DEFAULT",
    "OLI_BANDS",
    "QA_PIXEL_BITS",
    "QA_PIXEL_INVALID_DEFAULT",
    "SENSOR_BANDS",
    "TM_BANDS",
    "LandsatBand",
    "LandsatScene",
    "fmask_valid",
    "parse_scene_id",
    "qa_pixel_field",
    "qa_pixel_valid",
    "sensor_bands",
]


@dataclass(frozen=True)
class LandsatBand:
    """One Landsat band of one sensor."""

    key: str  #: STAC asset key (USGS / Planetary Computer), e.g. ``"nir08"``
    number: int  #: band number in the product: ``SR_B<number>``, ESPA ``_b<number>``
    center_wavelength: float  #: micrometres
    full_width_half_max: float  #: micrometres
    resolution: int  #: native ground sampling distance, metres (products are all on 30 m)


#: Landsat 8-9 OLI reflective bands and the TIRS band 10 (surface temperature).
OLI_BANDS: tuple[LandsatBand, ...] = (
    LandsatBand("coastal", 1, 0.443, 0.016, 30),
    LandsatBand("blue", 2, 0.482, 0.060, 30),
    LandsatBand("green", 3, 0.562, 0.057, 30),
    LandsatBand("red", 4, 0.655, 0.037, 30),
    LandsatBand("nir08", 5, 0.865, 0.028, 30),
    LandsatBand("swir16", 6, 1.609, 0.085, 30),
    LandsatBand("swir22", 7, 2.201, 0.187, 30),
    LandsatBand("lwir11", 10, 10.895, 0.590, 100),
)
#: Landsat 7 ETM+ reflective bands and band 6 (surface temperature).
ETM_BANDS: tuple[LandsatBand, ...] = (
    LandsatBand("blue", 1, 0.483, 0.070, 30),
    LandsatBand("green", 2, 0.560, 0.080, 30),
    LandsatBand("red", 3, 0.662, 0.060, 30),
    LandsatBand("nir08", 4, 0.835, 0.130, 30),
    LandsatBand("swir16", 5, 1.648, 0.200, 30),
    LandsatBand("swir22", 7, 2.206, 0.260, 30),
    LandsatBand("lwir", 6, 11.335, 2.100, 60),
)
#: Landsat 4-5 TM reflective bands and band 6 (surface temperature).
TM_BANDS: tuple[LandsatBand, ...] = (
    LandsatBand("blue", 1, 0.485, 0.070, 30),
    LandsatBand("green", 2, 0.560, 0.080, 30),
    LandsatBand("red", 3, 0.660, 0.060, 30),
    LandsatBand("nir08", 4, 0.830, 0.140, 30),
    LandsatBand("swir16", 5, 1.650, 0.200, 30),
    LandsatBand("swir22", 7, 2.215, 0.270, 30),
    LandsatBand("lwir", 6, 11.450, 2.100, 120),
)
#: Band table per sensor code (the first and fourth characters of a C2 product id, e.g. ``LC08``).
SENSOR_BANDS: dict[str, tuple[LandsatBand, ...]] = {
    "LC08": OLI_BANDS,
    "LC09": OLI_BANDS,
    "LO08": OLI_BANDS,
    "LE07": ETM_BANDS,
    "LT05": TM_BANDS,
    "LT04": TM_BANDS,
}

#: Collection 2 Level-2 surface reflectance: reflectance per DN, and at DN 0.
C2L2_SR_SCALE: float = 0.0000275
C2L2_SR_OFFSET: float = -0.2
#: Collection 2 Level-2 surface temperature: kelvin per DN, and at DN 0.
C2L2_ST_SCALE: float = 0.00341802
C2L2_ST_OFFSET: float = 149.0
#: DN of fill in every Collection 2 Level-2 band.
C2L2_NODATA: int = 0

#: ESPA (pre-collection) surface reflectance: reflectance per DN (offset 0).
ESPA_SR_SCALE: float = 0.0001
#: DN of fill in ESPA surface reflectance.
ESPA_SR_NODATA: int = -9999
#: DN range ESPA documents as valid; outside is fill (-9999) or saturation (20000).
ESPA_SR_VALID_RANGE: tuple[int, int] = (-2000, 16000)

#: Collection 2 ``QA_PIXEL`` bit fields: name -> (first bit, number of bits).
QA_PIXEL_BITS: dict[str, tuple[int, int]] = {
    "fill": (0, 1),
    "dilated_cloud": (1, 1),
    "cirrus": (2, 1),
    "cloud": (3, 1),
    "cloud_shadow": (4, 1),
    "snow": (5, 1),
    "clear": (6, 1),
    "water": (7, 1),
    "cloud_confidence": (8, 2),
    "cloud_shadow_confidence": (10, 2),
    "snow_ice_confidence": (12, 2),
    "cirrus_confidence": (14, 2),
}
#: ``QA_PIXEL`` flags that make a pixel invalid by default: fill, clouds, cirrus and shadows.
QA_PIXEL_INVALID_DEFAULT: tuple[str, ...] = (
    "fill",
    "dilated_cloud",
    "cirrus",
    "cloud",
    "cloud_shadow",
)

#: CFmask classes (ESPA ``fmask`` layer).
FMASK_CLASSES: dict[int, str] = {
    0: "clear_land",
    1: "water",
    2: "cloud_shadow",
    3: "snow",
    4: "cloud",
    255: "fill",
}
#: CFmask classes masked as invalid by default: shadows, clouds and fill (snow is a surface).
FMASK_INVALID_DEFAULT: tuple[int, ...] = (2, 4, 255)


def sensor_bands(sensor: str) -> tuple[LandsatBand, ...]:
    """The band table of a sensor code (``"LC08"``, ``"LE07"``, ``"LT05"``, ...).

    Raises:
        KeyError: for an unknown code, naming the known ones.
    """
    try:
        return SENSOR_BANDS[sensor]
    except KeyError:
        raise KeyError(
            f"unknown Landsat sensor {sensor!r}; known: {sorted(SENSOR_BANDS)}"
        ) from None


def qa_pixel_field(qa: np.ndarray, name: str) -> np.ndarray:
    """Value of one ``QA_PIXEL`` bit field (0/1 flags, 0-3 confidences), per pixel."""
    if name not in QA_PIXEL_BITS:
        raise KeyError(f"unknown QA_PIXEL field {name!r}; fields: {list(QA_PIXEL_BITS)}")
    first, length = QA_PIXEL_BITS[name]
    return (np.asarray(qa).astype(np.uint16) >> first) & ((1 << length) - 1)


def qa_pixel_valid(qa: np.ndarray, mask: Sequence[str] = QA_PIXEL_INVALID_DEFAULT) -> np.ndarray:
    """True where none of the ``mask`` flags of ``QA_PIXEL`` is set.

    Args:
        qa: ``QA_PIXEL`` values, any shape.
        mask: one-bit fields that make a pixel invalid.

    Raises:
        ValueError: if a field is unknown or is a two-bit confidence.
    """
    bits = 0
    for name in mask:
        if QA_PIXEL_BITS.get(name, (0, 2))[1] != 1:
            flags = [k for k, (_, n) in QA_PIXEL_BITS.items() if n == 1]
            raise ValueError(f"{name!r} is not a one-bit QA_PIXEL flag; flags: {flags}")
        bits |= 1 << QA_PIXEL_BITS[name][0]
    return (np.asarray(qa).astype(np.uint16) & bits) == 0


def fmask_valid(fmask: np.ndarray, mask: Sequence[int] = FMASK_INVALID_DEFAULT) -> np.ndarray:
    """True where the CFmask class is not one of ``mask``.

    Raises:
        ValueError: for a class that CFmask does not have.
    """
    unknown = [c for c in mask if c not in FMASK_CLASSES]
    if unknown:
        raise ValueError(f"unknown CFmask class(es) {unknown}; classes: {FMASK_CLASSES}")
    return ~np.isin(fmask, list(mask))


@dataclass(frozen=True)
class LandsatScene:
    """What a Landsat scene id says."""

    id: str  #: the id as given
    sensor: str  #: ``"LC08"``, ``"LE07"``, ``"LT05"``, ...
    path: int  #: WRS-2 path
    row: int  #: WRS-2 row
    date: dt.date  #: acquisition date


_PRE_COLLECTION = re.compile(r"^L([CTEO])(\d)(\d{3})(\d{3})(\d{4})(\d{3})[A-Z]{3}\d{2}$")
_COLLECTION = re.compile(r"^L([CTEO])(\d{2})_\w{4}_(\d{3})(\d{3})_(\d{8})_\d{8}_\d{2}_\w{2}")


def parse_scene_id(scene_id: str) -> LandsatScene:
    """Parse a Landsat scene id or product id.

    Pre-collection scene ids (``LE70350322008118EDC00``: sensor, path, row, year, day of year,
    station, version) and Collection 1/2 product ids (``LC08_L2SP_028030_20200114_...``).

    Raises:
        ValueError: if ``scene_id`` is neither.
    """
    m = _PRE_COLLECTION.match(scene_id)
    if m:
        kind, sat, path, row, year, doy = m.groups()
        date = dt.date(int(year), 1, 1) + dt.timedelta(days=int(doy) - 1)
        return LandsatScene(scene_id, f"L{kind}{int(sat):02d}", int(path), int(row), date)
    m = _COLLECTION.match(scene_id)
    if m:
        kind, sat, path, row, ymd = m.groups()
        date = dt.datetime.strptime(ymd, "%Y%m%d").date()
        return LandsatScene(scene_id, f"L{kind}{sat}", int(path), int(row), date)
    raise ValueError(
        f"{scene_id!r} is not a Landsat scene id (like LE70350322008118EDC00) or product id "
        "(like LC08_L2SP_028030_20200114_20200824_02_T1)"
    )
