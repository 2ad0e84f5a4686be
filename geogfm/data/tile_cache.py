"""The tile cache: every scene's bands on one grid, in one reflectance encoding, with a mask.

The grid is a CRS (the dominant UTM zone of the items unless configured), a resolution, and square
cells of ``cell_size`` pixels whose corners are multiples of ``cell_size * resolution``. A cell is
named by its EPSG code and its left and top edges in CRS units: ``32633_0512000_5120000``.

The pieces: :mod:`geogfm.data.tile_items` describes the items once (the grid CRS, where each band
is and how it is encoded, whatever the catalog); :mod:`geogfm.data.tile_load` loads a cell, one
solar day per time step, every band resampled onto the cell's grid by
:mod:`geogfm.data.tile_resample` from pixels :mod:`geogfm.data.tile_reader` decodes, and re-encoded
to the cache encoding below (:func:`to_cache_dn`); :mod:`geogfm.data.tile_store` writes it.

Each cell is one Zarr v3 store (:func:`geogfm.data.tile_store.write_cell`). Chunks are one time
step of every band over the whole cell, ``(1, C, H, W)`` (``valid`` and ``scl``: ``(1, H, W)``), so
any training window inside a cell is read from exactly one chunk; with the default 256-pixel cells
a chunk is 1.3 MB for ten bands. The codec is Blosc LZ4 with byte shuffle, chosen by
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

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import odc.stac
import pystac
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box, unary_union
from zarr.codecs import BloscCodec

from geogfm.core.errors import DataError
from geogfm.data.datasets.sentinel2 import (
    NODATA,
    REFLECTANCE_SCALE,
    SCL_KEY,
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

__all__ = [
    "CACHE_NODATA",
    "CACHE_OFFSET",
    "CACHE_SCALE",
    "CODEC",
    "SCL_BAND",
    "Cell",
    "band_encoding",
    "band_sources",
    "cell_id",
    "check_items",
    "choose_epsg",
    "item_epsg",
    "item_footprints",
    "plan_cells",
    "processing_baseline",
    "to_cache_band",
    "to_cache_dn",
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


def to_cache_band(
    out: np.ndarray,
    values: np.ndarray,
    missing: np.ndarray | None,
    source_dtype: np.dtype,
    *,
    scale: float,
    offset: float,
) -> np.ndarray | None:
    """Write one band, resampled onto a cell, into ``out`` in cache DN (see :func:`to_cache_dn`).

    The usual cases -- DN of a whole-number offset at the cache's scale, as Sentinel-2's -- take
    one pass each, in place: bilinear values ``v`` (float32, unrounded) become ``floor(v + 0.5)``
    (GDAL's rounding, half up) plus the offset in DN, clipped to 1..65535; integer DN are shifted
    with saturation in their own type.

    Args:
        out: ``(H, W)`` uint16, written.
        values: ``(H, W)`` the file's DN on the cell's grid: its integer type, or float32 (may be
            overwritten).
        missing: ``(H, W)`` True where the band has no data; ``None``: it has data everywhere.
        source_dtype: the file's data type (integer files' bilinear values are rounded).
        scale: the source's reflectance per DN.
        offset: the source's reflectance at DN 0.

    Returns:
        Where ``out`` is nodata (0): ``missing`` itself (the same object) or, where the values
        held NaN, a new mask; ``None`` where every pixel has data.
    """
    shift = offset / CACHE_SCALE
    k = round(shift)
    whole = scale == CACHE_SCALE and abs(shift - k) < 1e-9
    if whole and values.dtype == np.float32 and source_dtype.kind in "ui":
        np.add(values, 0.5 + k, out=values)  # floor by the cast below
        np.clip(values, 1, 65535, out=values)
        np.copyto(out, values, casting="unsafe")
    elif whole and values.dtype in (np.uint8, np.uint16) and -65535 < k < 65535:
        if k <= 0:  # max(v, 1 - k) + k: at least 1, at most v
            np.maximum(values, np.uint16(1 - k), out=out)
            np.subtract(out, np.uint16(-k), out=out)
        else:  # min(v, 65535 - k) + k, at least 1
            np.minimum(values, np.uint16(65535 - k), out=out)
            np.add(out, np.uint16(k), out=out)
            np.maximum(out, 1, out=out)
    else:
        if values.dtype.kind == "f" and source_dtype.kind in "ui":
            values = np.floor(values + 0.5)
        out[...] = to_cache_dn(values, scale=scale, offset=offset, nodata=None)
        if values.dtype.kind == "f" and np.isnan(values).any():  # NaN: no data too
            nan = np.isnan(values)
            missing = nan if missing is None else missing | nan
    if missing is not None:
        np.copyto(out, CACHE_NODATA, where=missing)
    return missing


# -------------------------------------------------------------------------------------------- grid


def item_footprints(items: Sequence[pystac.Item], epsg: int) -> dict[str, Geometry]:
    """Each item's footprint (its ``geometry``, else its grid) in the grid CRS, by time and id.

    Raises:
        DataError: if an item has neither.
    """
    crs = CRS(f"EPSG:{epsg}")
    ordered = sorted(items, key=lambda i: (item_datetime(i), i.id))
    footprints: dict[str, Geometry] = {}
    by_grid: dict[tuple, Geometry | None] = {}  # the dates of a tile share its grids: one each
    for item, parsed in zip(ordered, odc.stac.parse_items(ordered), strict=True):
        grids = parsed.geoboxes()
        if any(g.crs is not None for g in grids):  # the footprint of the grids (odc's rule)
            if grids not in by_grid:
                by_grid[grids] = parsed.safe_geometry(crs)
            geom = by_grid[grids]
        else:  # the item's geometry
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
    footprints: dict[str, Geometry] | None = None,
) -> list[Cell]:
    """Tile the union of the items' footprints (within ``bbox``) into grid cells.

    Args:
        items: the items to cache.
        epsg: EPSG code of the grid CRS (see :func:`choose_epsg`).
        resolution: pixel side in CRS units.
        cell_size: cell side in pixels; cell corners are multiples of ``cell_size * resolution``.
        bbox: ``[west, south, east, north]`` in degrees (the query's); ``None`` for no limit.
        footprints: the items' footprints in the grid CRS, if already computed
            (:func:`item_footprints`).

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
    if footprints is None:
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
            hit: dict[int, bool] = {}  # by footprint: the dates of a tile share theirs
            for fp in footprints.values():
                if id(fp) not in hit:
                    hit[id(fp)] = fp.intersection(outline).area > min_area
            ids = tuple(i for i, fp in footprints.items() if hit[id(fp)])
            geobox = GeoBox(
                (cell_size, cell_size), Affine(resolution, 0.0, x0, 0.0, -resolution, y1), crs
            )
            cells.append(Cell(cell_id(epsg, x0, y1), epsg, geobox, ids))
    return cells
