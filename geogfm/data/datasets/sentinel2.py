"""Sentinel-2 L2A band metadata, as Earth Search v1 (``sentinel-2-l2a``) names and scales it.

The band table is the single place geogfm learns what a Sentinel-2 band is: its Earth Search asset
key, its ESA band name, its centre wavelength, its native resolution and how its digital numbers
(DN) map to surface reflectance. Everything else (the demo catalog, the tile cache, the model's band
count) reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BANDS",
    "BASELINE_OFFSET_FROM",
    "DEFAULT_BANDS",
    "NODATA",
    "REFLECTANCE_SCALE",
    "SCL_CLASSES",
    "SCL_INVALID_DEFAULT",
    "SCL_KEY",
    "Band",
    "asset_keys",
    "baseline_offset",
    "band",
    "unknown_scl_classes",
]


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 L2A band."""

    key: str  #: Earth Search v1 asset key, e.g. ``"nir08"``
    name: str  #: ESA band name, e.g. ``"B8A"``
    common_name: str  #: STAC ``eo:bands`` common name
    center_wavelength: float  #: micrometres
    full_width_half_max: float  #: micrometres
    resolution: int  #: native ground sampling distance, metres


#: The twelve L2A reflectance bands in Earth Search v1 order (B10, cirrus, is not in L2A).
BANDS: tuple[Band, ...] = (
    Band("coastal", "B01", "coastal", 0.443, 0.027, 60),
    Band("blue", "B02", "blue", 0.490, 0.098, 10),
    Band("green", "B03", "green", 0.560, 0.045, 10),
    Band("red", "B04", "red", 0.665, 0.038, 10),
    Band("rededge1", "B05", "rededge", 0.704, 0.019, 20),
    Band("rededge2", "B06", "rededge", 0.740, 0.018, 20),
    Band("rededge3", "B07", "rededge", 0.783, 0.028, 20),
    Band("nir", "B08", "nir", 0.842, 0.145, 10),
    Band("nir08", "B8A", "nir08", 0.865, 0.033, 20),
    Band("nir09", "B09", "nir09", 0.945, 0.026, 60),
    Band("swir16", "B11", "swir16", 1.610, 0.143, 20),
    Band("swir22", "B12", "swir22", 2.190, 0.242, 20),
)

#: The ten 10 m and 20 m bands most GFMs train on (the 60 m atmospheric bands left out).
DEFAULT_BANDS: tuple[str, ...] = (
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "swir16",
    "swir22",
)

#: DN of "no data" in every L2A reflectance band.
NODATA: int = 0
#: Reflectance per DN (``raster:bands`` ``scale``).
REFLECTANCE_SCALE: float = 1e-4
#: Processing baseline from which L2A DNs carry a +1000 offset (``raster:bands`` ``offset`` = -0.1).
BASELINE_OFFSET_FROM: str = "04.00"

#: Scene classification (``scl``) classes.
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}
#: SCL classes masked as invalid by default: no data, saturated, shadows, clouds and cirrus.
SCL_INVALID_DEFAULT: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
#: Earth Search v1 asset key of the scene classification layer.
SCL_KEY: str = "scl"

_BY_KEY = {b.key: b for b in BANDS}


def band(key: str) -> Band:
    """Look up a band by its Earth Search asset key.

    Raises:
        KeyError: if ``key`` is not a Sentinel-2 L2A band, with the valid keys in the message.
    """
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(
            f"{key!r} is not a Sentinel-2 L2A band; valid bands are {', '.join(_BY_KEY)}"
        ) from None


def baseline_offset(processing_baseline: str) -> float:
    """Reflectance offset for a processing baseline: -0.1 from 04.00 on, else 0.

    Args:
        processing_baseline: the ``s2:processing_baseline`` property, e.g. ``"05.09"``.
    """
    major, minor = (int(p) for p in processing_baseline.split("."))
    first_major, first_minor = (int(p) for p in BASELINE_OFFSET_FROM.split("."))
    return -0.1 if (major, minor) >= (first_major, first_minor) else 0.0


def asset_keys(key: str) -> tuple[str, ...]:
    """The asset keys catalogs use for a band, in the order to try them.

    Earth Search v1 keys assets by common name (``"red"``, ``"scl"``); Earth Search v0 and the
    Planetary Computer by ESA band name (``"B04"``, ``"SCL"``).

    Args:
        key: an Earth Search v1 band key (see :data:`BANDS`) or :data:`SCL_KEY`.

    Raises:
        KeyError: if ``key`` is neither.
    """
    if key == SCL_KEY:
        return (SCL_KEY, "SCL")
    return (key, band(key).name)


def unknown_scl_classes(values: object) -> list[int]:
    """The values among ``values`` (an array or a list) that are not Sentinel-2 SCL classes."""
    present = np.unique(np.asarray(values))
    return [int(v) for v in present if int(v) not in SCL_CLASSES]
