"""The tile cache: every scene's bands on one grid, in one reflectance encoding, with a mask.

The grid is a CRS (the dominant UTM zone of the items unless configured), a resolution, and square
cells of ``cell_size`` pixels whose corners are multiples of ``cell_size * resolution``. A cell is
named by its EPSG code and its left and top edges in CRS units: ``32633_0512000_5120000``.

For each cell, :func:`load_cell` reads every overlapping item onto the cell's GeoBox with odc-stac,
bands resampled with the configured kernel and ``scl`` with nearest, as raw DN, one time slice per
item. Each item's DN are turned into reflectance with *that item's* ``raster:bands`` scale and
offset (or, where a catalog has none, the Sentinel-2 rule: scale 1e-4 and the processing-baseline
offset), then re-encoded to the single cache encoding ``reflectance = DN * 1e-4``: the +1000 DN of
baseline 04.00 is removed exactly once, valid data are clipped to 1..65535 and 0 stays "no data".
odc-stac 0.5 does not apply scale/offset itself, and fusing same-day items in raw DN would mix
encodings, so items are loaded one per slice and mosaicked here, after conversion: items of one
solar day are merged per pixel, taking the first item in ``(datetime, id)`` order where the pixel is
valid, else the first with data. A pixel is valid when every band has data and its ``scl`` class is
not masked. Days without a valid pixel are dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import odc.stac
import pystac
import xarray as xr
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box, unary_union
from rasterio.errors import NotGeoreferencedWarning

from geogfm.core.errors import DataError
from geogfm.data.datasets.sentinel2 import NODATA, REFLECTANCE_SCALE, baseline_offset
from geogfm.data.stac import item_datetime

__all__ = [
    "CACHE_NODATA",
    "CACHE_OFFSET",
    "CACHE_SCALE",
    "SCL_BAND",
    "Cell",
    "band_encoding",
    "cell_id",
    "check_items",
    "choose_epsg",
    "item_epsg",
    "load_cell",
    "plan_cells",
    "to_cache_dn",
    "write_cell",
]

log = logging.getLogger(__name__)

#: Reflectance per cache DN.
CACHE_SCALE: float = REFLECTANCE_SCALE
#: Reflectance at cache DN 0 (no offset: the processing-baseline offset is removed on load).
CACHE_OFFSET: float = 0.0
#: Cache DN of "no data".
CACHE_NODATA: int = NODATA
#: Asset key of the scene classification layer.
SCL_BAND: str = "scl"

_CHUNK = 256  # Zarr chunk side, pixels
_LOAD_BUDGET = 512 * 2**20  # bytes of raw and float pixels per odc-stac load call


@dataclass(frozen=True)
class Cell:
    """One grid cell and the items whose footprints overlap it."""

    id: str  #: ``<EPSG>_<left>_<top>``, e.g. ``"32633_0512000_5120000"``
    epsg: int  #: EPSG code of the grid CRS
    geobox: GeoBox  #: the cell's pixel grid
    item_ids: tuple[str, ...]  #: overlapping items, in ``(datetime, id)`` order

    @property
    def crs(self) -> str:
        """``"EPSG:<code>"``."""
        return f"EPSG:{self.epsg}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in CRS units."""
        b = self.geobox.boundingbox
        return (b.left, b.bottom, b.right, b.top)


def cell_id(epsg: int, left: float, top: float) -> str:
    """The id of the cell whose top-left corner is ``(left, top)``: ``32633_0512000_5120000``."""
    return f"{epsg}_{round(left):07d}_{round(top):07d}"


# ------------------------------------------------------------------------------------------- items


def _epsg_of(fields: dict) -> int | None:
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


def choose_epsg(items: Sequence[pystac.Item], crs: str = "auto") -> int:
    """The EPSG code of the cache grid.

    Args:
        items: the items to cache.
        crs: ``"auto"`` for the most common native EPSG among the items (ties: the lowest code;
            items without projection metadata: the UTM zone of their centre), or
            ``"EPSG:<code>"``.

    Raises:
        ValueError: if ``crs`` is neither.
    """
    if crs != "auto":
        head, _, code = crs.partition(":")
        if head.upper() != "EPSG" or not code.isdigit():
            raise ValueError(
                f'tile_cache.crs={crs!r} is not "auto" or "EPSG:<code>" (e.g. "EPSG:32633")'
            )
        return int(code)
    counts = Counter(e for e in map(item_epsg, items) if e is not None)
    if counts:
        return min(counts, key=lambda e: (-counts[e], e))
    union = unary_union(Geometry(i.geometry, "EPSG:4326") for i in items if i.geometry)
    if union is None:
        raise DataError("items have neither proj:code/proj:epsg nor a geometry: set tile_cache.crs")
    epsg = CRS.utm(union).epsg
    assert epsg is not None, union
    return epsg


def check_items(items: Sequence[pystac.Item], bands: Sequence[str]) -> None:
    """Check that every item has an asset for every band and for ``scl``.

    Also logs a warning for items of processing baseline >= 04.00 whose ``raster:bands`` give a
    scale but no offset (taken as 0, the STAC default).

    Raises:
        DataError: naming the items and bands that are missing, and the fix.
    """
    missing: dict[str, list[str]] = {}
    for item in items:
        lacks = [b for b in (*bands, SCL_BAND) if b not in item.assets]
        if lacks:
            missing[item.id] = lacks
    if missing:
        shown = dict(list(missing.items())[:5])
        raise DataError(
            f"{len(missing)} item(s) lack band assets, e.g. {shown}; remove the band(s) from "
            "tile_cache.bands or query only a collection that has them (stac_query.collections)"
        )
    # raster:bands with a scale but no offset means offset 0 (the STAC default); for baseline
    # >= 04.00 that is only right if the catalog already removed the +1000: say so once.
    suspicious = [
        item.id
        for item in items
        if baseline_offset(str(item.properties.get("s2:processing_baseline", "00.00"))) != 0
        and any(_declares_scale_without_offset(item, b) for b in bands)
    ]
    if suspicious:
        log.warning(
            "%d item(s) with processing baseline >= 04.00 declare a raster:bands scale but no "
            "offset, so no -0.1 offset is applied to them (e.g. %s)",
            len(suspicious),
            suspicious[:3],
        )


def _declares_scale_without_offset(item: pystac.Item, band: str) -> bool:
    rb = (item.assets[band].extra_fields.get("raster:bands") or [{}])[0]
    return "scale" in rb and "offset" not in rb


def band_encoding(item: pystac.Item, band: str) -> tuple[float, float, float]:
    """``(scale, offset, nodata)`` of an item's band: reflectance = DN * scale + offset.

    From the asset's ``raster:bands``; where it gives no scale, the Sentinel-2 L2A rule (scale 1e-4,
    offset -0.1 from processing baseline 04.00 on, see :func:`baseline_offset`).

    Raises:
        DataError: if neither ``raster:bands`` scale nor ``s2:processing_baseline`` is available.
    """
    rb = (item.assets[band].extra_fields.get("raster:bands") or [{}])[0]
    nodata = rb.get("nodata")
    nodata = float(nodata) if nodata is not None and not math.isnan(float(nodata)) else NODATA
    if "scale" in rb:
        return float(rb["scale"]), float(rb.get("offset", 0.0)), nodata
    baseline = item.properties.get("s2:processing_baseline")
    if baseline is None:
        raise DataError(
            f"item {item.id!r} band {band!r} has no raster:bands scale and no "
            "s2:processing_baseline, so its DN cannot be turned into reflectance; use a catalog "
            "with raster:bands (e.g. Earth Search sentinel-2-l2a)"
        )
    return REFLECTANCE_SCALE, baseline_offset(str(baseline)), nodata


def to_cache_dn(dn: np.ndarray, *, scale: float, offset: float, nodata: float) -> np.ndarray:
    """Re-encode DN of one encoding to cache DN (``reflectance = DN * 1e-4``).

    Args:
        dn: raw DN of one band.
        scale: the source's reflectance per DN.
        offset: the source's reflectance at DN 0 (-0.1 for Sentinel-2 baseline >= 04.00).
        nodata: the source's nodata DN.

    Returns:
        uint16 cache DN: valid data rounded and clipped to 1..65535, nodata 0.
    """
    reflectance = dn.astype(np.float64) * scale + offset
    out = np.clip(np.rint(reflectance / CACHE_SCALE), 1, 65535).astype(np.uint16)
    out[dn == nodata] = CACHE_NODATA
    return out


# -------------------------------------------------------------------------------------------- grid


def plan_cells(
    items: Sequence[pystac.Item],
    *,
    epsg: int,
    resolution: float,
    cell_size: int,
    bbox: Sequence[float] | None = None,
) -> list[Cell]:
    """Tile the union of the items' footprints (within ``bbox``) into grid cells.

    Args:
        items: the items to cache.
        epsg: EPSG code of the grid CRS (see :func:`choose_epsg`).
        resolution: pixel side in CRS units.
        cell_size: cell side in pixels; cell corners are multiples of ``cell_size * resolution``.
        bbox: ``[west, south, east, north]`` in degrees (the query's); ``None`` for no limit.

    Returns:
        The cells that overlap the area by more than half a pixel, top row first, left to right.

    Raises:
        ValueError: if ``cell_size * resolution`` is not a whole number of CRS units.
        DataError: if the footprints do not overlap ``bbox``.
    """
    step = cell_size * resolution
    if step != round(step):
        raise ValueError(
            f"tile_cache.cell_size * tile_cache.resolution = {cell_size} * {resolution} = {step} "
            "is not a whole number of metres; pick a cell_size that makes it one"
        )
    crs = CRS(f"EPSG:{epsg}")
    min_area = 0.5 * resolution**2
    ordered = sorted(items, key=lambda i: (item_datetime(i), i.id))
    footprints: dict[str, Geometry] = {}
    for item, parsed in zip(ordered, odc.stac.parse_items(ordered), strict=True):
        geom = parsed.safe_geometry(crs)
        if geom is None:
            raise DataError(f"item {item.id!r} has no footprint (geometry or proj:* metadata)")
        footprints[item.id] = geom
    area = unary_union(footprints.values())
    assert area is not None
    if bbox is not None:
        w, s, e, n = bbox
        query = box(w, s, e, n, "EPSG:4326").to_crs(crs, resolution=max(e - w, n - s) / 100)
        area = area.intersection(query)
    if area.is_empty or area.area <= min_area:
        raise DataError(
            f"the items' footprints do not overlap the query bbox {list(bbox or [])}; "
            "rerun stac_query or fix stac_query.bbox"
        )
    left, bottom, right, top = area.boundingbox
    ix = range(math.floor(left / step), math.ceil(right / step))
    iy = range(math.ceil(top / step) - 1, math.floor(bottom / step) - 1, -1)
    cells = []
    for y in iy:
        for x in ix:
            x0, y1 = x * step, (y + 1) * step
            outline = box(x0, y1 - step, x0 + step, y1, crs)
            if area.intersection(outline).area <= min_area:
                continue
            ids = tuple(
                i for i, fp in footprints.items() if fp.intersection(outline).area > min_area
            )
            geobox = GeoBox(
                (cell_size, cell_size), Affine(resolution, 0.0, x0, 0.0, -resolution, y1), crs
            )
            cells.append(Cell(cell_id(epsg, x0, y1), epsg, geobox, ids))
    return cells


# -------------------------------------------------------------------------------------------- load


def _solar_day(t: dt.datetime, lon: float) -> dt.date:
    # As odc-stac's groupby="solar_day": UTC shifted by whole hours of longitude / 15.
    return (t + dt.timedelta(hours=int(lon / 15))).date()


def _solar_day_groups(items: Sequence[pystac.Item], lon: float) -> list[list[pystac.Item]]:
    groups: dict[dt.date, list[pystac.Item]] = {}
    for item in sorted(items, key=lambda i: (item_datetime(i), i.id)):
        groups.setdefault(_solar_day(item_datetime(item), lon), []).append(item)
    return [groups[d] for d in sorted(groups)]


def _batches(groups: list[list[pystac.Item]], max_items: int) -> Iterator[list[list[pystac.Item]]]:
    batch: list[list[pystac.Item]] = []
    n = 0
    for g in groups:
        if batch and n + len(g) > max_items:
            yield batch
            batch, n = [], 0
        batch.append(g)
        n += len(g)
    if batch:
        yield batch


def _mosaic(
    layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge same-day layers: per pixel the first valid one, else the first with data."""
    refl, scl, valid = (a.copy() for a in layers[0])  # (C, H, W), (H, W), (H, W)
    has_data = (refl != CACHE_NODATA).any(0)
    for r, s, v in layers[1:]:
        take = ~valid & (v | (~has_data & (r != CACHE_NODATA).any(0)))
        refl[:, take] = r[:, take]
        scl[take] = s[take]
        valid |= take & v
        has_data |= take
    return refl, scl, valid


def _item_layer(
    item: pystac.Item, raw: dict[str, np.ndarray], bands: Sequence[str], mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One item's raw DN (per band, (H, W)) -> cache DN (C, H, W), scl (H, W), valid (H, W)."""
    refl = []
    for b in bands:
        scale, offset, nodata = band_encoding(item, b)
        refl.append(to_cache_dn(raw[b], scale=scale, offset=offset, nodata=nodata))
    cache_dn = np.stack(refl)  # (C, H, W)
    scl = raw[SCL_BAND].astype(np.uint8)  # (H, W)
    valid = (cache_dn != CACHE_NODATA).all(0) & ~np.isin(scl, mask)  # (H, W)
    return cache_dn, scl, valid


def load_cell(
    cell: Cell,
    items: Sequence[pystac.Item],
    *,
    bands: Sequence[str],
    resampling: str = "bilinear",
    mask_scl_classes: Sequence[int] = (),
    pool: int | None = None,
) -> xr.Dataset | None:
    """Load one cell: all its items on its grid, in cache DN, one time step per solar day.

    Args:
        cell: the cell (see :func:`plan_cells`); only its ``item_ids`` are read.
        items: items by which the cell's ``item_ids`` are resolved.
        bands: asset keys of the bands to cache, in order.
        resampling: kernel for the bands (``scl`` is always resampled with nearest).
        mask_scl_classes: SCL classes whose pixels are invalid.
        pool: threads for odc-stac reads (``None``: one).

    Returns:
        The cell's dataset (see the tile cache contract: ``reflectance`` (time, band, y, x) uint16,
        ``valid`` (time, y, x) bool, ``scl`` (time, y, x) uint8, coords ``time``, ``band``, ``y``,
        ``x``, ``item_id``), or ``None`` if no time step has a valid pixel.
    """
    by_id = {i.id: i for i in items}
    ((lon, _),) = cell.geobox.extent.centroid.to_crs("EPSG:4326").points
    groups = _solar_day_groups([by_id[i] for i in cell.item_ids], lon)
    H, W = cell.geobox.shape
    C = len(bands)
    per_item = (C + 1) * H * W * 2 + C * H * W * 8  # raw uint16 + one float64 band at a time
    mask = np.asarray(list(mask_scl_classes), dtype=np.uint8)
    steps: list[tuple[dt.datetime, str, np.ndarray, np.ndarray, np.ndarray]] = []
    for batch in _batches(groups, max(1, _LOAD_BUDGET // per_item)):
        flat = [i for g in batch for i in g]
        with warnings.catch_warnings():
            # odc-loader reprojects into in-memory arrays that rasterio reports as ungeoreferenced
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = odc.stac.load(
                flat,
                bands=[*bands, SCL_BAND],
                geobox=cell.geobox,
                resampling={"*": resampling, SCL_BAND: "nearest"},
                groupby=None,  # one slice per item, in input order: mosaicked after conversion
                dtype="uint16",
                fail_on_error=True,
                pool=pool,
            )
        assert ds.sizes["time"] == len(flat), (ds.sizes, [i.id for i in flat])
        raw = {b: ds[b].values for b in (*bands, SCL_BAND)}  # each (N, H, W) uint16
        k = 0
        for group in batch:
            layers = []
            for item in group:
                layers.append(_item_layer(item, {b: a[k] for b, a in raw.items()}, bands, mask))
                k += 1
            refl, scl, valid = _mosaic(layers)
            if valid.any():
                ids = ",".join(i.id for i in group)
                steps.append((item_datetime(group[0]), ids, refl, scl, valid))
            else:
                log.debug("cell %s: %s has no valid pixel, dropped", cell.id, group[0].id)
    if not steps:
        return None
    t, ids, refl, scl, valid = zip(*steps, strict=True)
    res = cell.geobox.resolution.x
    left, top = cell.geobox.affine.c, cell.geobox.affine.f
    time = np.array([ti.astimezone(dt.UTC).replace(tzinfo=None) for ti in t], "datetime64[ns]")
    return xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                np.stack(refl),
                {
                    "long_name": "surface reflectance / scale",
                    "scale": CACHE_SCALE,
                    "offset": CACHE_OFFSET,
                    "nodata": CACHE_NODATA,
                },
            ),
            "valid": (
                ("time", "y", "x"),
                np.stack(valid),
                {
                    "long_name": "all bands have data and scl is not masked",
                    "mask_scl_classes": [int(c) for c in mask],
                },
            ),
            "scl": (("time", "y", "x"), np.stack(scl), {"long_name": "scene classification"}),
        },
        coords={
            "time": time,
            "band": np.array(list(bands), dtype=object),
            "y": top - (np.arange(H) + 0.5) * abs(cell.geobox.resolution.y),
            "x": left + (np.arange(W) + 0.5) * res,
            "item_id": ("time", np.array(ids, dtype=object)),
        },
        attrs={
            "crs": cell.crs,
            "transform": [float(v) for v in tuple(cell.geobox.affine)[:6]],
            "resolution": float(res),
            "cell_id": cell.id,
        },
    )


def write_cell(ds: xr.Dataset, path: str) -> None:
    """Write a cell's dataset as a Zarr v3 store (chunks of one time step, all bands, 256 x 256)."""
    H, W = ds.sizes["y"], ds.sizes["x"]
    ch, cw = min(_CHUNK, H), min(_CHUNK, W)
    encoding = {
        "reflectance": {"chunks": (1, ds.sizes["band"], ch, cw)},
        "valid": {"chunks": (1, ch, cw)},
        "scl": {"chunks": (1, ch, cw)},
    }
    ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
