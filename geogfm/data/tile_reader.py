"""Reading one raster band onto a tile-cache cell's pixel grid.

Each (item, band) a cell needs is read with rasterio onto the cell's :class:`~odc.geo.geobox.GeoBox`
in the fastest of three ways that gives GDAL's warper's answer:

- the source's pixels *are* the cell's (same CRS and resolution, whole-pixel offset): a windowed
  read, as a bare rasterio decode does (odc-stac's "paste" case);
- each source pixel is a whole ``k x k`` block of the cell's (same CRS, resolution ``k`` times the
  cell's, aligned: Sentinel-2's 20 m and 60 m bands on a 10 m grid): a windowed read that GDAL
  resamples on the way (``out_shape=``) with the cell's kernel. GDAL's resampled read mixes nodata
  into a bilinear kernel where its warper does not, so a bilinear read whose window holds nodata,
  and any cubic read (the two cubic kernels differ), go to the warper instead;
- anything else (another UTM zone, another resolution, a rotated or sub-pixel-shifted grid):
  GDAL's warper, :func:`rasterio.warp.reproject`, as odc-stac does.

The tests check the fast paths against the warper: plain reads and nearest upsampling agree pixel
for pixel, bilinear to the DN (the two round the mean in different orders), average alike except
that the warper also fills the row or column just beyond a source's edge. Datasets stay open
across cells and threads (:class:`SourceCache`), so an asset that several cells share is opened
once and its pixels decoded once. These fast paths are why the tile
cache reads its sources itself rather than through ``odc.stac.load``, which reopens every asset for
every band and cell and warps aligned 20 m bands; ``benchmarks/tile_cache_throughput.py`` measures
both.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from geogfm.data.tile_resample import SourceGrid

__all__ = ["READ_ERRORS", "GDAL_OPTIONS", "BandSource", "SourceCache", "read_band", "read_error"]

#: Errors of an unreadable asset: missing, truncated or corrupt file, HTTP failure.
READ_ERRORS: tuple[type[BaseException], ...] = (RasterioError, CPLE_BaseError)

#: GDAL options for the reading threads: no directory listing on open (COGs have no side-cars),
#: the CRS as the file's GeoTIFF keys state it (by default GDAL also builds the CRS of the keys'
#: EPSG code from PROJ's database to compare the two: 40 % of an open, with the GIL held by
#: rasterio; the CRS is the same for files whose keys agree with their code, as Sentinel-2's do),
#: retries on HTTP errors, merged range requests.
GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GTIFF_SRS_SOURCE": "GEOKEYS",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}

_EPS = 1e-6  # pixels: offsets and ratios closer than this to whole numbers are whole
_UNIT = 512  # least side, in pixels, of the part of a file decoded at once


@dataclass(frozen=True)
class BandSource:
    """Where one band of one item is, and how its numbers map to reflectance."""

    asset: str  #: the item's asset key, e.g. ``"red"`` or ``"B04"``
    href: str  #: file path or URL
    bidx: int  #: 1-based band index in the file
    scale: float  #: reflectance per DN (1.0 for a layer that is not reflectance)
    offset: float  #: reflectance at DN 0
    nodata: float | None  #: nodata DN from ``raster:bands``; ``None``: the file's own, if any


def read_error(exc: BaseException) -> str:
    """The message of a read error with its GDAL cause ("Read failed. See previous ...": why)."""
    msg = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in msg:
        msg = f"{msg} ({cause})"
    return msg


class SourceCache:
    """Open rasterio datasets and decoded pixels, shared by all threads.

    Datasets are lent to one thread at a time (:meth:`lend`; a GDAL handle is not thread-safe):
    a file is opened once, not once per thread (an open costs as much as decoding a 512 x 512
    tile), and a second handle only while two threads read it at once. Up to ``max_open``
    handles are kept, the least recently returned closed first. Pixels (:meth:`window`): each
    file is decoded in units of whole internal blocks, at least ``_UNIT`` pixels on a side, once
    for all threads and cells (a thread that wants a unit another is decoding waits for it), and
    kept up to ``max_bytes``, the least recently used dropped first.

    Args:
        max_open: datasets kept open.
        max_bytes: decoded pixels kept, in bytes.
    """

    def __init__(self, max_open: int = 256, max_bytes: int = 1 << 30) -> None:
        self.max_open = max_open
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._epsg: dict[str, int | None] = {}  # ds.crs.to_epsg() costs 30 us a call
        self._grids: dict[str, SourceGrid] = {}
        self._blocks: dict[tuple[str, int], tuple[int, int]] = {}  # so window() need not open
        self._nodata: dict[tuple[str, int], float | None] = {}
        self._units: OrderedDict[tuple, Future] = OrderedDict()
        self._held = 0
        self._lent: OrderedDict[str, list[rasterio.DatasetReader]] = OrderedDict()  # not in use
        self._n_lent = 0

    @contextmanager
    def lend(self, href: str) -> Iterator[rasterio.DatasetReader]:
        """A dataset of ``href`` for this thread alone while the block runs (opened if need be).

        A handle whose read failed is closed, not kept.
        """
        with self._lock:
            free = self._lent.get(href)
            ds = free.pop() if free else None
            if ds is not None:
                self._n_lent -= 1
                if not free:
                    del self._lent[href]
        if ds is None:
            ds = rasterio.open(href, sharing=False)
            if href not in self._epsg:
                self._epsg[href] = ds.crs.to_epsg() if ds.crs is not None else None
        try:
            yield ds
        except BaseException:
            ds.close()
            raise
        drop = []
        with self._lock:
            self._lent.setdefault(href, []).append(ds)
            self._lent.move_to_end(href)
            self._n_lent += 1
            while self._n_lent > self.max_open:
                old_href, old = next(iter(self._lent.items()))
                drop.append(old.pop())
                self._n_lent -= 1
                if not old:
                    del self._lent[old_href]
        for d in drop:
            d.close()

    def epsg(self, href: str) -> int | None:
        """The EPSG code of an opened dataset's CRS (``None``: none or not an EPSG code)."""
        return self._epsg[href]

    def grid(self, href: str) -> SourceGrid:
        """The pixel grid of the file at ``href`` (opened if need be)."""
        grid = self._grids.get(href)
        if grid is None:
            with self.lend(href) as ds:
                crs = ds.crs.to_wkt() if ds.crs is not None else ""
                for b, shape in enumerate(ds.block_shapes, 1):
                    self._blocks[href, b] = shape
                    self._nodata[href, b] = ds.nodatavals[b - 1]
                grid = self._grids[href] = SourceGrid(crs, ds.transform, ds.height, ds.width)
        return grid

    def nodata(self, href: str, bidx: int) -> float | None:
        """The file's nodata value of band ``bidx`` (``None``: none).

        Raises:
            IndexError: if the file has no band ``bidx``.
        """
        self.grid(href)
        if (href, bidx) not in self._nodata:
            raise IndexError(f"{href} has no band {bidx}")
        return self._nodata[href, bidx]

    def window(self, href: str, bidx: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Pixels ``[r0:r1, c0:c1]`` of band ``bidx`` (inside the file), decoded once.

        Integer files keep their type, floating-point ones become float32. The array may be a
        view of the decoded unit: do not write to it.

        Raises:
            rasterio.errors.RasterioError: if the file cannot be read (see :data:`READ_ERRORS`);
                every later call for the same unit raises it again.
        """
        shape = self._blocks.get((href, bidx))
        if shape is None:  # once per file: the other threads take it from here, without opening
            self.grid(href)
            shape = self._blocks[href, bidx]
        bh, bw = shape
        uh, uw = bh * -(-_UNIT // bh), bw * -(-_UNIT // bw)
        rows = range(r0 // uh, (r1 - 1) // uh + 1)
        cols = range(c0 // uw, (c1 - 1) // uw + 1)
        if len(rows) == 1 and len(cols) == 1:
            ur, uc = rows[0], cols[0]
            unit = self._unit(href, bidx, ur, uc, uh, uw)
            return unit[r0 - ur * uh : r1 - ur * uh, c0 - uc * uw : c1 - uc * uw]
        out = None
        for ur in rows:
            for uc in cols:
                unit = self._unit(href, bidx, ur, uc, uh, uw)
                if out is None:
                    out = np.empty((r1 - r0, c1 - c0), unit.dtype)
                y0, y1 = max(r0, ur * uh), min(r1, ur * uh + unit.shape[0])
                x0, x1 = max(c0, uc * uw), min(c1, uc * uw + unit.shape[1])
                out[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = unit[
                    y0 - ur * uh : y1 - ur * uh, x0 - uc * uw : x1 - uc * uw
                ]
        return out

    def _unit(self, href: str, bidx: int, ur: int, uc: int, uh: int, uw: int) -> np.ndarray:
        key = (href, bidx, ur, uc)
        with self._lock:
            future = self._units.get(key)
            mine = future is None
            if mine:
                future = self._units[key] = Future()
            else:
                self._units.move_to_end(key)
        if not mine:
            return future.result()
        try:
            with self.lend(href) as ds:
                x0, y0 = uc * uw, ur * uh
                window = Window(x0, y0, min(uw, ds.width - x0), min(uh, ds.height - y0))
                data = ds.read(bidx, window=window)
            if data.dtype.kind == "f" and data.dtype != np.float32:
                data = data.astype(np.float32)
        except BaseException as e:
            future.set_exception(e)
            raise
        future.set_result(data)
        with self._lock:
            self._held += data.nbytes
            while self._held > self.max_bytes and len(self._units) > 1:
                old_key, old = next(iter(self._units.items()))
                if not old.done():
                    break
                del self._units[old_key]
                if old.exception() is None:
                    self._held -= old.result().nbytes
        return data

    def close(self) -> None:
        """Close every dataset (when no thread reads any more) and drop the decoded pixels."""
        with self._lock:
            for lent in self._lent.values():
                for ds in lent:
                    ds.close()
            self._lent.clear()
            self._n_lent = 0
            self._units.clear()
            self._held = 0


def _whole(v: float) -> int | None:
    r = round(v)
    return r if abs(v - r) < _EPS else None


def _block_factor(
    ds: rasterio.DatasetReader, epsg: int | None, geobox: GeoBox
) -> tuple[int, int, int] | None:
    """``(k, row, col)`` if each source pixel is a ``k x k`` block of cell pixels, else ``None``.

    ``epsg`` is the source's; ``(row, col)`` is the cell's top-left pixel in cell-sized pixels
    from the source's corner.
    """
    src, dst = ds.transform, geobox.affine
    if epsg is None or geobox.crs is None or epsg != geobox.crs.epsg:
        return None
    if (src.b, src.d, dst.b, dst.d) != (0, 0, 0, 0):
        return None
    if src.a <= 0 or src.e >= 0 or dst.a <= 0 or dst.e >= 0:
        return None
    k, ky = _whole(src.a / dst.a), _whole(src.e / dst.e)
    row, col = _whole((src.f - dst.f) / -dst.e), _whole((dst.c - src.c) / dst.a)
    if k is None or k != ky or k < 1 or row is None or col is None:
        return None
    return k, row, col


def read_band(
    sources: SourceCache, src: BandSource, geobox: GeoBox, *, resampling: str
) -> tuple[np.ndarray, float | None]:
    """Read one band onto a cell's pixel grid.

    Args:
        sources: the open datasets and decoded pixels.
        src: the band.
        geobox: the cell's grid.
        resampling: GDAL kernel name (``"nearest"``, ``"bilinear"``, ``"average"``, ``"cubic"``).

    Returns:
        ``(H, W)`` pixels (the file's integer type, or float32 for floating-point files) and the
        nodata value they use (pixels outside the source are nodata; NaN for floats without one).

    Raises:
        rasterio.errors.RasterioError: if the file cannot be opened or read (see
            :data:`READ_ERRORS`).
    """
    with sources.lend(src.href) as ds:
        return _read_band(sources, ds, src, geobox, resampling)


def _read_band(
    sources: SourceCache,
    ds: rasterio.DatasetReader,
    src: BandSource,
    geobox: GeoBox,
    resampling: str,
) -> tuple[np.ndarray, float | None]:
    dtype = np.dtype(ds.dtypes[src.bidx - 1])
    out_dtype = dtype if dtype.kind in "ui" else np.dtype(np.float32)
    nodata = src.nodata if src.nodata is not None else ds.nodatavals[src.bidx - 1]
    if nodata is not None and math.isnan(nodata):
        nodata = None
    fill = (0 if nodata is None else nodata) if out_dtype.kind in "ui" else np.nan
    out = np.full(geobox.shape, fill, dtype=out_dtype)
    kernel = Resampling[resampling]

    block = _block_factor(ds, sources.epsg(src.href), geobox)
    if block is not None and not (block[0] > 1 and kernel == Resampling.cubic):
        k, row, col = block
        if _read_blocks(ds, src.bidx, out, k, row, col, kernel, nodata):
            return out, (fill if nodata is None else nodata)
    # the source's bounds in the cell's CRS (edges densified), from the handle lent for the read
    left, bottom, right, top = transform_bounds(ds.crs, str(geobox.crs), *ds.bounds, densify_pts=21)
    b = geobox.boundingbox
    if not (left < b.right and right > b.left and bottom < b.top and top > b.bottom):
        return out, (fill if nodata is None else nodata)  # the source does not reach the cell
    # the warp always covers the whole cell: GDAL's bilinear weights depend on the destination's
    # extent, so warping a part of a cell would not give the values of warping all of it
    reproject(
        rasterio.band(ds, src.bidx),
        out,
        src_nodata=nodata,
        dst_crs=str(geobox.crs),
        dst_transform=geobox.affine,
        dst_nodata=fill,
        resampling=kernel,
    )
    return out, (fill if nodata is None else nodata)


def _read_blocks(
    ds: rasterio.DatasetReader,
    bidx: int,
    out: np.ndarray,
    k: int,
    row: int,
    col: int,
    kernel: Resampling,
    nodata: float | None,
) -> bool:
    """Fill ``out`` from source pixels that are ``k x k`` blocks of it; ``False``: use the warper.

    ``(row, col)``: the cell's top-left pixel, in cell pixels from the source's top-left corner.
    """
    H, W = out.shape
    # source pixels covering the cell, clipped to the source
    r0, r1 = max(row // k, 0), min(-(-(row + H) // k), ds.height)
    c0, c1 = max(col // k, 0), min(-(-(col + W) // k), ds.width)
    if r0 >= r1 or c0 >= c1:
        return True  # no overlap: all nodata
    window = Window(c0, r0, c1 - c0, r1 - r0)
    if k == 1:
        data = ds.read(bidx, window=window, out_dtype=out.dtype)
    else:
        if kernel == Resampling.bilinear:
            # GDAL's resampled read would mix nodata into the kernel: then the warper decides
            br0, br1 = max(r0 - 1, 0), min(r1 + 1, ds.height)
            bc0, bc1 = max(c0 - 1, 0), min(c1 + 1, ds.width)
            raw = ds.read(bidx, window=Window(bc0, br0, bc1 - bc0, br1 - br0))
            if (nodata is not None and (raw == nodata).any()) or (
                raw.dtype.kind == "f" and np.isnan(raw).any()
            ):
                return False
        shape = ((r1 - r0) * k, (c1 - c0) * k)
        data = ds.read(bidx, window=window, out_shape=shape, resampling=kernel, out_dtype=out.dtype)
    # the read's top-left is cell pixel (r0 * k - row, c0 * k - col), possibly above/left of it
    y, x = r0 * k - row, c0 * k - col
    ys, xs = max(y, 0), max(x, 0)
    ye, xe = min(y + data.shape[0], H), min(x + data.shape[1], W)
    out[ys:ye, xs:xe] = data[ys - y : ye - y, xs - x : xe - x]
    return True
