"""Loading one tile-cache cell: every item that overlaps it, one solar day at a time, in cache DN.

For each cell, :func:`load_cell` reads the items that overlap it one solar day at a time, every
band onto the cell's grid: reflectance with the configured kernel (bilinear by default), ``scl``
with nearest, whatever the item's own CRS and resolution. Bands on one source grid (an MGRS tile's
10 m bands, its 20 m bands, ...) are resampled together, with a plan made once per cell and reused
for every date (:mod:`geogfm.data.tile_resample`), over the part of the cell the source reaches;
the pixels come from :meth:`~geogfm.data.tile_reader.SourceCache.window`, which decodes each file
once for all cells. The cell's arrays are written as they are (:class:`~.tile_store.CellArrays`),
without building an xarray Dataset.
Each item's DN are turned into reflectance with *that item's* ``raster:bands`` scale and offset
(or, where a catalog has none, the Sentinel-2 rule: scale 1e-4 and the processing-baseline
offset), then re-encoded to the one cache encoding ``reflectance = DN * 1e-4``: the +1000 DN of
baseline 04.00 is removed exactly once, valid data are clipped to 1..65535 and 0 stays "no data".
A pixel is valid when every band has data and its ``scl`` class is not masked.

Items of one solar day (a datatake cut into tiles, often in two UTM zones) become one time step:
items on the cell's own grid first (they are not resampled twice), then the others, each group by
``(datetime, id)``; a pixel takes the first item where it is valid, else the first with data. An
item of the same datatake (same datetime and platform) as one already merged sees the same clouds,
so it can only fill pixels without data: when there are none it is not read at all. Days without a
valid pixel are dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pystac
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.features import geometry_mask

from geogfm.core.errors import DataError
from geogfm.data.datasets.sentinel2 import unknown_scl_classes
from geogfm.data.stac import item_datetime
from geogfm.data.tile_cache import (
    SCL_BAND,
    Cell,
    to_cache_band,
)
from geogfm.data.tile_items import item_epsg
from geogfm.data.tile_plan import plan
from geogfm.data.tile_reader import READ_ERRORS, BandSource, SourceCache, read_band, read_error
from geogfm.data.tile_resample import CellMasks
from geogfm.data.tile_store import CellArrays

__all__ = ["CellResult", "FailedRead", "UnreadableAsset", "load_cell"]

log = logging.getLogger(__name__)


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

    arrays: CellArrays | None  #: the cell's arrays, or ``None``: no time step has a valid pixel
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
    plans: dict,
    refl: np.ndarray,
    scl: np.ndarray,
    zeroed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One item on a cell: cache DN into ``refl`` ``(C, H, W)`` and ``scl`` ``(H, W)``.

    Bands on one source grid are resampled together with one :class:`~.tile_resample.Plan`
    (kept in ``plans`` for the cell's other items); those without a plan are warped by GDAL.
    A plan's values cover its box of the cell; outside it the bands are 0 (no data) and scl 0,
    written unless ``zeroed`` says ``refl`` and ``scl`` are 0 already.

    Returns:
        ``(valid, has_data)``, ``(H, W)`` bool: every band has data and the scl class is not
        masked; some band has data.

    Raises:
        UnreadableAsset: (with the :class:`FailedRead`) if an asset cannot be read.
        DataError: if the scl layer holds values that are not SCL classes.
    """
    C, (H, W) = len(bands), geobox.shape
    src = srcs[SCL_BAND]
    holes: dict[int, np.ndarray] = {}  # the bands' distinct no-data masks, by identity
    full = False  # some band has data everywhere
    try:
        groups: dict[tuple, list[int]] = {}
        keys = (*bands, SCL_BAND)
        for c, key in enumerate(keys):
            src = srcs[key]
            kernel = "nearest" if key == SCL_BAND else resampling
            groups.setdefault((sources.grid(src.href), kernel), []).append(c)
        for (grid, kernel), members in groups.items():
            if (grid, kernel) not in plans:
                plans[grid, kernel] = plan(grid, geobox, kernel, centres=plans)
            p = plans[grid, kernel]
            box = None
            if p is None:  # no plan for this kernel and grid: GDAL warps band by band
                results = []
                for c in members:
                    src = srcs[keys[c]]
                    dn, nodata = read_band(sources, src, geobox, resampling=kernel)
                    results.append((c, dn, None if nodata is None else dn == nodata, dn.dtype))
            else:
                windows, nodata = [], []
                for c in members:
                    src = srcs[keys[c]]
                    windows.append(sources.window(src.href, src.bidx, *p.window) if not p.empty()
                                   else np.zeros((0, 0), np.uint16))  # fmt: skip
                    nodata.append(_nodata(sources, src))
                values, missing = p.resample(windows, nodata, boxed=True)
                results = [(c, values[k], missing[k], windows[k].dtype)
                           for k, c in enumerate(members)]  # fmt: skip
                box = p.box  # the values are of these cell pixels; the others have no data
            inner = (slice(None),) * 2 if box is None else (slice(*box[:2]), slice(*box[2:]))
            in_cell = None if box is None else CellMasks(box, (H, W))
            for c, v, m, dtype in results:
                src = srcs[keys[c]]
                if c == C:
                    if box is not None and not zeroed:
                        scl[...] = 0
                    _store_scl(scl[inner], v, m, dtype)
                    continue
                if box is not None and not zeroed:
                    _zero_outside(refl[c], box)
                m = to_cache_band(refl[c][inner], v, m, dtype, scale=src.scale, offset=src.offset)
                if in_cell is not None:  # the box's mask as a mask of the cell
                    m = in_cell(m)
                if m is None:
                    full = True
                else:
                    holes.setdefault(id(m), m)
    except READ_ERRORS as e:
        failure = FailedRead(item.id, src.asset, src.href, read_error(e))
        raise UnreadableAsset(item, failure) from e
    except _NotScl as e:
        src = srcs[SCL_BAND]
        raise DataError(
            f"item {item.id!r} asset {src.asset!r} ({src.href}) holds values {e.values[:10]} that "
            "are not Sentinel-2 scene classes (0..11), so it is not a scene classification "
            "(SCL) layer: point the item's 'scl' asset at the L2A SCL file, or use a catalog "
            "that has one (e.g. Earth Search sentinel-2-l2a)"
        ) from None
    # a band lacks data exactly where its cache DN is 0: combine the distinct masks only
    valid = ~np.take(masked, scl)
    masks = list(holes.values())
    for m in masks:
        valid &= ~m
    if full or not masks:
        has_data = np.ones((H, W), bool)
    else:
        gone = masks[0].copy()
        for m in masks[1:]:
            gone &= m
        has_data = ~gone
    return valid, has_data


def _zero_outside(a: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Set ``a`` ``(H, W)`` to 0 outside ``box`` ``(y0, y1, x0, x1)``."""
    y0, y1, x0, x1 = box
    a[:y0] = 0
    a[y1:] = 0
    a[y0:y1, :x0] = 0
    a[y0:y1, x1:] = 0


def _nodata(sources: SourceCache, src: BandSource) -> float | None:
    """A band's nodata value: ``raster:bands``', else the file's; ``None`` for none or NaN."""
    nodata = src.nodata if src.nodata is not None else sources.nodata(src.href, src.bidx)
    return None if nodata is None or math.isnan(nodata) else nodata


class _NotScl(Exception):
    def __init__(self, values: list) -> None:
        self.values = values


def _store_scl(
    scl: np.ndarray, values: np.ndarray, missing: np.ndarray | None, source_dtype: np.dtype
) -> None:
    """Put the resampled scl layer into ``scl``: whole classes, no data is class 0.

    Raises:
        _NotScl: if the values are not all scene classes.
    """
    if values.dtype.kind == "f":
        if source_dtype.kind in "ui":
            values = np.floor(values + 0.5)
        values = np.where(np.isnan(values), 0, values)
    if values.size and missing is not None:
        values = np.where(missing, 0, values)
    if values.size and (values.min() < 0 or values.max() > 11):
        raise _NotScl(unknown_scl_classes(values))
    scl[...] = values


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
    r, s = np.empty((C, H, W), np.uint16), np.empty((H, W), np.uint8)  # a day's later items
    kept: list[tuple[int, dt.datetime, str]] = []
    plans: dict = {}  # resampling plans of this cell, by source grid and kernel
    inside: dict[int, np.ndarray] = {}  # footprints on the cell, by footprint
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
                    fp = footprints[item.id]  # a tile's dates share theirs: rasterised once
                    if id(fp) not in inside:
                        inside[id(fp)] = _inside(fp, cell.geobox)
                    need &= inside[id(fp)]
                if not need.any():
                    stats["skipped"] += 1
                    continue
            try:
                # the day's first item goes straight into the day: where it has no data, its
                # bands are 0 (nodata) already; its scl there is set to 0 below
                v, d = _read_item(
                    sources, item, band_srcs[item.id], cell.geobox, bands, resampling, masked,
                    plans, *((r, s, False) if used else (refl, scl, True)),
                )  # fmt: skip
            except UnreadableAsset as e:
                if fail_on_error:
                    raise
                log.warning("cell %s: %s", cell.id, e)
                failed.append(e.failure)
                if not used:  # what the day's first item may have left
                    refl[...] = 0
                    scl[...] = 0
                continue
            stats["read"] += 1
            if not used:
                if not d.any():
                    refl[...] = 0
                    scl[...] = 0
                    continue
                np.copyto(scl, 0, where=~d)
                valid[...] = v
                has_data[...] = d
            else:
                take = ~valid & (v | (~has_data & d))  # (H, W)
                if not take.any():
                    continue
                np.copyto(refl, r, where=take)
                np.copyto(scl, s, where=take)
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
    arrays = CellArrays(
        cell,
        tuple(bands),
        refl_t[idx] if len(idx) < T else refl_t,
        valid_t[idx] if len(idx) < T else valid_t,
        scl_t[idx] if len(idx) < T else scl_t,
        tuple(k[1] for k in kept),
        tuple(k[2] for k in kept),
        tuple(mask_scl_classes),
    )
    return CellResult(arrays, tuple(failed), with_data, dict(stats))
