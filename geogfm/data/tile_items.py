"""Which grid a set of STAC items goes on, and where each band of an item is and how it is encoded.

Catalogs describe the same Sentinel-2 product in different ways: Earth Search v1 keys assets by
common name (``red``) and gives ``raster:bands`` scale and offset; the Planetary Computer and Earth
Search v0 key them by ESA name (``B04``), the first without ``raster:bands`` (the processing
baseline then decides the offset), the second without ``eo:bands`` either; other collections put
several bands in one file listed by ``eo:bands``; ``proj:epsg`` became ``proj:code``. This module
reads all of them into one description per band (:class:`~geogfm.data.tile_reader.BandSource`),
once, at the boundary of the tile cache.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import pystac
from odc.geo.crs import CRS
from odc.geo.geom import Geometry, unary_union
from pyproj.exceptions import CRSError

from geogfm.core.errors import DataError
from geogfm.data.datasets.sentinel2 import (
    REFLECTANCE_SCALE,
    SCL_KEY,
    asset_keys,
    band,
    baseline_offset,
)
from geogfm.data.tile_reader import BandSource

__all__ = [
    "band_encoding",
    "band_sources",
    "check_items",
    "choose_epsg",
    "item_epsg",
    "processing_baseline",
    "utm_epsg",
]

log = logging.getLogger(__name__)

_NOT_DATA_ROLES = {"visual", "overview", "thumbnail"}  # rendered 8-bit products, not reflectance


def _epsg_of(fields: Mapping) -> int | None:
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].isdigit():
        return int(code[5:])
    epsg = fields.get("proj:epsg")
    return epsg if isinstance(epsg, int) and not isinstance(epsg, bool) else None


def item_epsg(item: pystac.Item) -> int | None:
    """EPSG code of an item's native grid: ``proj:code`` or ``proj:epsg`` (item, else assets)."""
    epsg = _epsg_of(item.properties)
    if epsg is not None:
        return epsg
    codes = sorted({e for a in item.assets.values() if (e := _epsg_of(a.extra_fields)) is not None})
    return codes[0] if codes else None


def _check_crs(epsg: int, what: str, fix: str) -> None:
    try:
        crs = CRS(f"EPSG:{epsg}")
    except CRSError:
        raise DataError(f"{what}: EPSG:{epsg} is not a known CRS; {fix}") from None
    if not crs.projected:
        raise DataError(
            f"{what}: EPSG:{epsg} is not a projected CRS (its units are degrees, tile_cache."
            f"resolution is in metres); {fix}"
        )


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone of a point.

    The plain 6-degree zones, as PROJ's database (and ``odc.geo``'s ``CRS.utm``) gives them,
    without the Norway and Svalbard exceptions.
    """
    zone = int((lon + 180) // 6) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def choose_epsg(items: Sequence[pystac.Item], crs: str = "auto") -> int:
    """The EPSG code of the cache grid.

    Args:
        items: the items to cache.
        crs: ``"EPSG:<code>"`` (a projected CRS), or ``"auto"``: the most common native EPSG among
            the items; on a tie the UTM zone of the centre of their footprints if it is among the
            tied, else the lowest code; items without projection metadata: the UTM zone of the
            centre of their footprints.

    Raises:
        ValueError: if ``crs`` is neither, or not a known projected CRS.
        DataError: if an item declares an unknown CRS, or nothing locates the items.
    """
    if crs != "auto":
        head, _, code = crs.partition(":")
        if head.upper() != "EPSG" or not code.isdigit():
            raise ValueError(
                f'tile_cache.crs={crs!r} is not "auto" or "EPSG:<code>" (e.g. "EPSG:32633")'
            )
        try:
            _check_crs(int(code), f"tile_cache.crs={crs!r}", 'use a UTM zone, e.g. "EPSG:32633"')
        except DataError as e:
            raise ValueError(str(e)) from None
        return int(code)
    counts = Counter(e for e in map(item_epsg, items) if e is not None)
    for epsg in counts:
        item = next(i for i in items if item_epsg(i) == epsg)
        _check_crs(
            epsg, f"item {item.id!r} proj:code/proj:epsg", 'set tile_cache.crs, e.g. "EPSG:32633"'
        )
    centre = None
    union = unary_union(Geometry(i.geometry, "EPSG:4326") for i in items if i.geometry)
    if union is not None:
        ((lon, lat),) = union.centroid.points
        centre = utm_epsg(lon, lat)
    if counts:
        top = max(counts.values())
        tied = sorted(e for e, n in counts.items() if n == top)
        return centre if centre in tied else tied[0]
    if centre is None:
        raise DataError("items have neither proj:code/proj:epsg nor a geometry: set tile_cache.crs")
    return centre


def processing_baseline(item: pystac.Item) -> str | None:
    """The item's processing baseline, e.g. ``"04.00"``, or ``None`` if it does not say.

    From ``s2:processing_baseline``, else from the ``_N0400_`` part of its product id (Earth Search
    v0's ``sentinel:product_id``, ``s2:product_uri``).
    """
    p = item.properties
    if isinstance(p.get("s2:processing_baseline"), str):
        return p["s2:processing_baseline"]
    for key in ("s2:product_uri", "sentinel:product_id", "s2:product_id"):
        m = re.search(r"_N(\d\d)(\d\d)_", str(p.get(key, "")))
        if m:
            return f"{m[1]}.{m[2]}"
    return None


def _eo_index(eo_bands: Sequence[Mapping], key: str) -> int | None:
    """1-based index of band ``key`` in an asset's ``eo:bands`` (by ESA name or asset key)."""
    names = {"SCL", SCL_KEY} if key == SCL_KEY else {band(key).name, key}
    for i, b in enumerate(eo_bands):
        if b.get("name") in names:
            return i + 1
    return None


def _locate(item: pystac.Item, key: str) -> tuple[str, int] | None:
    """``(asset key, 1-based band index)`` of a band in an item, or ``None``."""
    for name in asset_keys(key):  # Earth Search v1 key, then the ESA name (PC, Earth Search v0)
        asset = item.assets.get(name)
        if asset is not None:
            eo = asset.extra_fields.get("eo:bands") or []
            return name, (_eo_index(eo, key) or 1) if len(eo) > 1 else 1
    for name, asset in item.assets.items():  # a multi-band data asset that lists the band
        if _NOT_DATA_ROLES & set(asset.roles or []) or name in _NOT_DATA_ROLES | {"preview"}:
            continue
        idx = _eo_index(asset.extra_fields.get("eo:bands") or [], key)
        if idx is not None:
            return name, idx
    return None


def band_encoding(item: pystac.Item, key: str) -> tuple[float, float, float | None]:
    """``(scale, offset, nodata)`` of an item's band: reflectance = DN * scale + offset.

    From the asset's ``raster:bands`` (the entry of the band); where it gives no scale, the
    Sentinel-2 L2A rule (scale 1e-4, offset -0.1 from processing baseline 04.00 on, see
    :func:`baseline_offset` and :func:`processing_baseline`). ``scl`` is not scaled. ``nodata`` is
    ``None`` where ``raster:bands`` gives none: the file's own applies, else 0.

    Raises:
        DataError: if the item lacks the band, or a reflectance band has neither a
            ``raster:bands`` scale nor a processing baseline.
    """
    where = _locate(item, key)
    if where is None:
        raise DataError(f"item {item.id!r} has no asset for band {key!r}")
    asset, bidx = where
    rbs = item.assets[asset].extra_fields.get("raster:bands") or []
    rb = rbs[bidx - 1] if len(rbs) >= bidx else {}
    nodata = rb.get("nodata")
    nodata = float(nodata) if nodata is not None and not math.isnan(float(nodata)) else None
    if key == SCL_KEY:
        return 1.0, 0.0, nodata
    if "scale" in rb:
        return float(rb["scale"]), float(rb.get("offset", 0.0)), nodata
    baseline = processing_baseline(item)
    if baseline is None:
        raise DataError(
            f"item {item.id!r} band {key!r} has no raster:bands scale and no "
            "s2:processing_baseline, so its DN cannot be turned into reflectance; use a catalog "
            "with raster:bands (e.g. Earth Search sentinel-2-l2a)"
        )
    return REFLECTANCE_SCALE, baseline_offset(baseline), nodata


def band_sources(item: pystac.Item, bands: Sequence[str]) -> dict[str, BandSource]:
    """Where each band (and ``scl``) of an item is and how it is encoded (see :func:`_locate`).

    Raises:
        DataError: as :func:`band_encoding`.
    """
    out = {}
    for key in (*bands, SCL_KEY):
        asset, bidx = _locate(item, key) or ("", 0)
        scale, offset, nodata = band_encoding(item, key)
        href = item.assets[asset].get_absolute_href() or item.assets[asset].href
        out[key] = BandSource(asset, href, bidx, scale, offset, nodata)
    return out


def check_items(items: Sequence[pystac.Item], bands: Sequence[str]) -> dict[str, dict]:
    """Check that every item has every band and ``scl``, and map them (see :func:`band_sources`).

    Also logs a warning for items of processing baseline >= 04.00 whose ``raster:bands`` give a
    scale but no offset (taken as 0, the STAC default).

    Returns:
        item id -> band -> :class:`~geogfm.data.tile_reader.BandSource`.

    Raises:
        DataError: naming the items and bands that are missing, and the fix.
    """
    missing: dict[str, list[str]] = {}
    for item in items:
        lacks = [b for b in (*bands, SCL_KEY) if _locate(item, b) is None]
        if lacks:
            missing[item.id] = lacks
    if missing:
        shown = dict(list(missing.items())[:5])
        raise DataError(
            f"{len(missing)} item(s) lack band assets, e.g. {shown}; remove the band(s) from "
            "tile_cache.bands or query only a collection that has them (stac_query.collections)"
        )
    sources = {item.id: band_sources(item, bands) for item in items}
    # raster:bands with a scale but no offset means offset 0 (the STAC default); for baseline
    # >= 04.00 that is only right if the catalog already removed the +1000: say so once.
    suspicious = [
        item.id
        for item in items
        if baseline_offset(processing_baseline(item) or "00.00") != 0
        and any(_declares_scale_without_offset(item, b) for b in bands)
    ]
    if suspicious:
        log.warning(
            "%d item(s) with processing baseline >= 04.00 declare a raster:bands scale but no "
            "offset, so no -0.1 offset is applied to them (e.g. %s)",
            len(suspicious),
            suspicious[:3],
        )
    return sources


def _declares_scale_without_offset(item: pystac.Item, key: str) -> bool:
    asset, bidx = _locate(item, key) or ("", 0)
    rbs = item.assets[asset].extra_fields.get("raster:bands") or []
    rb = rbs[bidx - 1] if len(rbs) >= bidx else {}
    return "scale" in rb and "offset" not in rb
