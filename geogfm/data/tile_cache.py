"""The tile cache: every scene's bands on one grid, in one reflectance encoding, with a mask.

The grid is a CRS (the dominant UTM zone of the items unless configured), a resolution, and square
cells of ``cell_size`` pixels whose corners are multiples of ``cell_size * resolution``. A cell is
named by its EPSG code and its left and top edges in CRS units: ``32633_0512000_5120000``.

Items are described once (:mod:`geogfm.data.tile_items`: the grid CRS, where each band is and how
it is encoded, whatever the catalog). For each cell, :func:`load_cell` reads the items that overlap
it one solar day at a time, every band onto the cell's grid (:mod:`geogfm.data.tile_reader`):
reflectance with the configured kernel
(bilinear by default), ``scl`` with nearest, whatever the item's own CRS and resolution. Each item's
DN are turned into reflectance with *that item's* ``raster:bands`` scale and offset (or, where a
catalog has none, the Sentinel-2 rule: scale 1e-4 and the processing-baseline offset), then
re-encoded to the one cache encoding ``reflectance = DN * 1e-4``: the +1000 DN of baseline 04.00 is
removed exactly once, valid data are clipped to 1..65535 and 0 stays "no data". A pixel is valid
when every band has data and its ``scl`` class is not masked.

Items of one solar day (a datatake cut into tiles, often in two UTM zones) become one time step:
items on the cell's own grid first (they are not resampled twice), then the others, each group by
``(datetime, id)``; a pixel takes the first item where it is valid, else the first with data. An
item of the same datatake (same datetime and platform) as one already merged sees the same clouds,
so it can only fill pixels without data: when there are none it is not read at all. Days without a
valid pixel are dropped.

Each cell is one Zarr v3 store (:func:`write_cell`). Chunks are one time step of every band over the
whole cell, ``(1, C, H, W)`` (``valid`` and ``scl``: ``(1, H, W)``), so any training window inside a
cell is read from exactly one chunk; with the default 256-pixel cells a chunk is 1.3 MB for ten
bands. The codec is Blosc LZ4 with byte shuffle, chosen by
``python benchmarks/tile_cache_throughput.py --codecs`` (2 shared cores, 2026-11; best of 3; write
of the whole array, read of one time-step chunk):

====================  =================================  =================================
codec                 demo cell, 6 x 10 x 256 x 256      BigEarthNet, 6 x 12 x 120 x 120
                      7.86 MB: size MB, write, read ms   2.07 MB: size MB, write, read ms
====================  =================================  =================================
none                  7.86, 17, 0.90                     2.07, 11, 0.65
zstd level 1          6.58, 23, 2.16                     1.04, 13, 1.08
zstd level 3          6.47, 41, 2.39                     0.95, 16, 0.99
blosc lz4 shuffle     5.72, 23, 1.55                     1.01, 12, 0.76
blosc zstd-1 shuffle  5.22, 29, 2.72                     0.91, 14, 1.16
====================  =================================  =================================

On real imagery LZ4 with shuffle halves the cache for a sixth more read time than no compression,
about as small as plain zstd and faster to read; zstd inside Blosc saves another 10 % at 1.5x the
read time, which the loaders would pay on every patch. (The demo's sensor noise compresses less.)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import odc.stac
import pystac
import xarray as xr
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box, unary_union
from rasterio.features import geometry_mask
from zarr.codecs import BloscCodec

from geogfm.core.errors import DataError
from geogfm.data.datasets.sentinel2 import (
    NODATA,
    REFLECTANCE_SCALE,
    SCL_KEY,
    band,
    unknown_scl_classes,
)
from geogfm.data.stac import item_datetime
from geogfm.data.tile_items import (
    band_encoding,
    band_sources,
    check_items,
    choose_epsg,
    item_epsg,
    processing_baseline,
)
from geogfm.data.tile_reader import READ_ERRORS, BandSource, SourceCache, read_band, read_error

__all__ = [
    "CACHE_NODATA",
    "CACHE_OFFSET",
    "CACHE_SCALE",
    "CODEC",
    "SCL_BAND",
    "Cell",
    "CellResult",
    "FailedRead",
    "UnreadableAsset",
    "band_encoding",
    "band_sources",
    "cell_id",
    "check_items",
    "choose_epsg",
    "item_epsg",
    "item_footprints",
    "load_cell",
    "plan_cells",
    "processing_baseline",
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
SCL_BAND: str = SCL_KEY
#: Compressor of the data arrays (see the module docstring for the benchmark that chose it).
CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


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


def to_cache_dn(dn: np.ndarray, *, scale: float, offset: float, nodata: float | None) -> np.ndarray:
    """Re-encode DN of one encoding to cache DN (``reflectance = DN * 1e-4``).

    Args:
        dn: raw DN of one band (integer, or float with NaN for no data).
        scale: the source's reflectance per DN.
        offset: the source's reflectance at DN 0 (-0.1 for Sentinel-2 baseline >= 04.00).
        nodata: the source's nodata DN (``None``: none besides NaN).

    Returns:
        uint16 cache DN: valid data rounded and clipped to 1..65535, nodata 0.
    """
    missing = np.isnan(dn) if dn.dtype.kind == "f" else None
    if nodata is not None:
        missing = dn == nodata if missing is None else missing | (dn == nodata)
    shift = offset / CACHE_SCALE
    if dn.dtype.kind in "ui" and scale == CACHE_SCALE and abs(shift - round(shift)) < 1e-9:
        v = dn.astype(np.int32) + round(shift)  # the usual case: whole DN, integer arithmetic
    else:
        with np.errstate(invalid="ignore"):
            v = np.rint((dn.astype(np.float64) * scale + offset) / CACHE_SCALE)
        if missing is not None:
            v[missing] = 1.0
    out = np.clip(v, 1, 65535).astype(np.uint16)
    if missing is not None:
        out[missing] = CACHE_NODATA
    return out


# -------------------------------------------------------------------------------------------- grid


def item_footprints(items: Sequence[pystac.Item], epsg: int) -> dict[str, Geometry]:
    """Each item's footprint (its ``geometry``, else its grid) in the grid CRS, by time and id.

    Raises:
        DataError: if an item has neither.
    """
    crs = CRS(f"EPSG:{epsg}")
    ordered = sorted(items, key=lambda i: (item_datetime(i), i.id))
    footprints: dict[str, Geometry] = {}
    for item, parsed in zip(ordered, odc.stac.parse_items(ordered), strict=True):
        geom = parsed.safe_geometry(crs)
        if geom is None:
            raise DataError(f"item {item.id!r} has no footprint (geometry or proj:* metadata)")
        footprints[item.id] = geom
    return footprints


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
    footprints = item_footprints(items, epsg)
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


@dataclass(frozen=True)
class FailedRead:
    """An item left out of a cell because one of its assets could not be read."""

    item: str  #: item id
    asset: str  #: asset key
    href: str  #: the file or URL
    error: str  #: what GDAL said


@dataclass(frozen=True)
class CellResult:
    """What :func:`load_cell` made of a cell."""

    dataset: xr.Dataset | None  #: the cell's dataset, or ``None``: no time step has a valid pixel
    failed: tuple[FailedRead, ...] = ()  #: items skipped as unreadable (``fail_on_error=False``)
    pixels_with_data: int = 0  #: (time, y, x) pixels with data, valid or masked
    stats: dict[str, int] = field(default_factory=dict)  #: items read and skipped, for the log


class UnreadableAsset(DataError):
    """An asset that cannot be read (``fail_on_error=True``); the message names it and the fix."""

    def __init__(self, item: pystac.Item, failure: FailedRead) -> None:
        self.failure = failure
        super().__init__(
            f"item {item.id!r} asset {failure.asset!r} cannot be read ({failure.href}): "
            f"{failure.error}. The file is missing, truncated or corrupt: download it again (rerun "
            "stac_query for a fresh copy), or set tile_cache.fail_on_error: false to skip "
            "unreadable items, at most tile_cache.max_failed_fraction of them"
        )


def _solar_day(t: dt.datetime, lon: float) -> dt.date:
    # As odc-stac's groupby="solar_day": UTC shifted by whole hours of longitude / 15.
    return (t + dt.timedelta(hours=int(lon / 15))).date()


def _solar_day_groups(
    items: Sequence[pystac.Item], lon: float, epsg: int
) -> list[list[pystac.Item]]:
    """Items by solar day, days in order; in a day, items on the grid's own CRS first."""
    groups: dict[dt.date, list[pystac.Item]] = {}
    for item in sorted(items, key=lambda i: (item_epsg(i) != epsg, item_datetime(i), i.id)):
        groups.setdefault(_solar_day(item_datetime(item), lon), []).append(item)
    return [groups[d] for d in sorted(groups)]


def _inside(footprint: Geometry, geobox: GeoBox) -> np.ndarray:
    """``(H, W)`` mask of the cell pixels a footprint touches."""
    return geometry_mask(
        [footprint.geom], out_shape=geobox.shape, transform=geobox.affine, all_touched=True,
        invert=True,
    )  # fmt: skip


def _take(item: pystac.Item) -> tuple[dt.datetime, str]:
    return item_datetime(item), str(item.properties.get("platform", "")).lower()


def _read_item(
    sources: SourceCache,
    item: pystac.Item,
    srcs: Mapping[str, BandSource],
    geobox: GeoBox,
    bands: Sequence[str],
    resampling: str,
    masked: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One item on a cell: cache DN ``(C, H, W)``, scl, valid and has-data ``(H, W)``.

    Raises:
        UnreadableAsset: (with the :class:`FailedRead`) if an asset cannot be read.
        DataError: if the scl layer holds values that are not SCL classes.
    """
    C, (H, W) = len(bands), geobox.shape
    refl = np.empty((C, H, W), dtype=np.uint16)
    for c, key in enumerate((*bands, SCL_BAND)):
        src = srcs[key]
        try:
            dn, nodata = read_band(
                sources, src, geobox, resampling="nearest" if key == SCL_BAND else resampling
            )
        except READ_ERRORS as e:
            failure = FailedRead(item.id, src.asset, src.href, read_error(e))
            raise UnreadableAsset(item, failure) from e
        if key != SCL_BAND:
            refl[c] = to_cache_dn(dn, scale=src.scale, offset=src.offset, nodata=nodata)
            continue
        if dn.dtype.kind == "f":  # a float SCL file: whole classes, NaN is no data
            dn = np.where(np.isnan(dn), 0, dn)
        if nodata is not None and nodata != 0:  # the file's nodata is SCL class 0
            dn = np.where(dn == nodata, 0, dn)
        if dn.size and (dn.min() < 0 or dn.max() > 11):
            bad = unknown_scl_classes(dn)
            raise DataError(
                f"item {item.id!r} asset {src.asset!r} ({src.href}) holds values {bad[:10]} that "
                "are not Sentinel-2 scene classes (0..11), so it is not a scene classification "
                "(SCL) layer: point the item's 'scl' asset at the L2A SCL file, or use a catalog "
                "that has one (e.g. Earth Search sentinel-2-l2a)"
            )
        scl = dn.astype(np.uint8)
    has_data = (refl != CACHE_NODATA).any(0)
    valid = (refl != CACHE_NODATA).all(0) & ~masked[scl]
    return refl, scl, valid, has_data


def load_cell(
    cell: Cell,
    items: Sequence[pystac.Item],
    *,
    sources: SourceCache,
    band_srcs: Mapping[str, Mapping[str, BandSource]],
    bands: Sequence[str],
    resampling: str = "bilinear",
    mask_scl_classes: Sequence[int] = (),
    fail_on_error: bool = True,
    footprints: Mapping[str, Geometry] | None = None,
) -> CellResult:
    """Load one cell: all its items on its grid, in cache DN, one time step per solar day.

    Args:
        cell: the cell (see :func:`plan_cells`); only its ``item_ids`` are read.
        items: items by which the cell's ``item_ids`` are resolved.
        sources: the reading thread's open datasets.
        band_srcs: item id -> band -> where it is (see :func:`check_items`).
        bands: asset keys of the bands to cache, in order.
        resampling: kernel for the bands (``scl`` is always resampled with nearest).
        mask_scl_classes: SCL classes whose pixels are invalid.
        fail_on_error: whether an unreadable asset stops the load (``True``) or its item is left
            out of the cell and reported in :attr:`CellResult.failed`.
        footprints: item id -> footprint in the cell's CRS (see :func:`item_footprints`); an item
            whose footprint covers none of the pixels a day still lacks is not read.

    Returns:
        The cell's dataset (see the tile cache contract: ``reflectance`` (time, band, y, x) uint16,
        ``valid`` (time, y, x) bool, ``scl`` (time, y, x) uint8, coords ``time``, ``band``, ``y``,
        ``x``, ``item_id``, ``center_wavelength``, ``spatial_ref``), or ``None`` if no time step
        has a valid pixel, with the items that failed.

    Raises:
        UnreadableAsset: with ``fail_on_error``, for the first asset that cannot be read.
        DataError: if an scl layer holds values that are not SCL classes.
    """
    by_id = {i.id: i for i in items}
    ((lon, _),) = cell.geobox.extent.centroid.to_crs("EPSG:4326").points
    groups = _solar_day_groups([by_id[i] for i in cell.item_ids], lon, cell.epsg)
    masked = np.zeros(256, dtype=bool)
    masked[list(mask_scl_classes)] = True
    C, (H, W) = len(bands), cell.geobox.shape
    T = len(groups)
    refl_t = np.zeros((T, C, H, W), dtype=np.uint16)
    scl_t = np.zeros((T, H, W), dtype=np.uint8)
    valid_t = np.zeros((T, H, W), dtype=bool)
    kept: list[tuple[int, dt.datetime, str]] = []
    failed: list[FailedRead] = []
    stats = Counter(read=0, skipped=0)
    with_data = 0
    for t, group in enumerate(groups):
        refl, scl, valid = refl_t[t], scl_t[t], valid_t[t]  # views, filled in place
        has_data = np.zeros((H, W), dtype=bool)
        used: list[pystac.Item] = []
        for item in group:
            if used:  # pixels this item could still fill: none, and it is not read at all
                same_take = any(_take(item) == _take(u) for u in used)
                need = ~has_data if same_take else ~valid
                if footprints is not None and need.any():
                    need &= _inside(footprints[item.id], cell.geobox)
                if not need.any():
                    stats["skipped"] += 1
                    continue
            try:
                r, s, v, d = _read_item(
                    sources, item, band_srcs[item.id], cell.geobox, bands, resampling, masked
                )
            except UnreadableAsset as e:
                if fail_on_error:
                    raise
                log.warning("cell %s: %s", cell.id, e)
                failed.append(e.failure)
                continue
            stats["read"] += 1
            take = ~valid & (v | (~has_data & d))  # (H, W)
            if not take.any():
                continue
            refl[:, take] = r[:, take]
            scl[take] = s[take]
            valid |= take & v
            has_data |= take
            used.append(item)
        with_data += int(has_data.sum())
        if valid.any():
            when = min(item_datetime(u) for u in used)
            kept.append((t, when, ",".join(u.id for u in used)))
        elif used:
            log.debug("cell %s: %s has no valid pixel, dropped", cell.id, used[0].id)
    if not kept:
        return CellResult(None, tuple(failed), with_data, dict(stats))
    idx = [k[0] for k in kept]
    ds = _dataset(
        cell,
        bands,
        refl_t[idx] if len(idx) < T else refl_t,
        valid_t[idx] if len(idx) < T else valid_t,
        scl_t[idx] if len(idx) < T else scl_t,
        [k[1] for k in kept],
        [k[2] for k in kept],
        mask_scl_classes,
    )
    return CellResult(ds, tuple(failed), with_data, dict(stats))


def _dataset(
    cell: Cell,
    bands: Sequence[str],
    refl: np.ndarray,
    valid: np.ndarray,
    scl: np.ndarray,
    times: Sequence[dt.datetime],
    item_ids: Sequence[str],
    mask_scl_classes: Sequence[int],
) -> xr.Dataset:
    """The cell's arrays as the cache's xarray Dataset, with coordinates and CF grid mapping."""
    H, W = cell.geobox.shape
    res = cell.geobox.resolution.x
    left, top = cell.geobox.affine.c, cell.geobox.affine.f
    wkt = cell.geobox.crs.to_wkt()
    grid = {"grid_mapping": "spatial_ref"}
    time = np.array([t.astimezone(dt.UTC).replace(tzinfo=None) for t in times], "datetime64[ns]")
    return xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                refl,
                {
                    "long_name": "surface reflectance / scale",
                    "scale": CACHE_SCALE,
                    "offset": CACHE_OFFSET,
                    "nodata": CACHE_NODATA,
                    **grid,
                },
            ),
            "valid": (
                ("time", "y", "x"),
                valid,
                {
                    "long_name": "all bands have data and scl is not masked",
                    "mask_scl_classes": [int(c) for c in mask_scl_classes],
                    **grid,
                },
            ),
            "scl": (("time", "y", "x"), scl, {"long_name": "scene classification", **grid}),
        },
        coords={
            "time": time,
            "band": np.array(list(bands), dtype=object),
            "y": top - (np.arange(H) + 0.5) * abs(cell.geobox.resolution.y),
            "x": left + (np.arange(W) + 0.5) * res,
            "item_id": ("time", np.array(item_ids, dtype=object)),
            "center_wavelength": (
                "band",
                np.array([band(b).center_wavelength for b in bands]),
                {"long_name": "band centre wavelength", "units": "um"},
            ),
            "spatial_ref": (
                (),
                np.int32(0),
                {
                    "crs_wkt": wkt,
                    "spatial_ref": wkt,
                    "GeoTransform": f"{left} {res} 0.0 {top} 0.0 {-abs(cell.geobox.resolution.y)}",
                },
            ),
        },
        attrs={
            "crs": cell.crs,
            "transform": [float(v) for v in tuple(cell.geobox.affine)[:6]],
            "resolution": float(res),
            "cell_id": cell.id,
        },
    )


def write_cell(ds: xr.Dataset, path: str) -> None:
    """Write a cell's dataset as a Zarr v3 store: one chunk per time step (see the module doc)."""
    C, H, W = ds.sizes["band"], ds.sizes["y"], ds.sizes["x"]
    encoding = {
        "reflectance": {"chunks": (1, C, H, W), "compressors": [CODEC]},
        "valid": {"chunks": (1, H, W), "compressors": [CODEC]},
        "scl": {"chunks": (1, H, W), "compressors": [CODEC]},
    }
    ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
