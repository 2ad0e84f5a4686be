"""The tile cache's resampling plans against GDAL's warper and an independent bilinear, and the
shared decoded-pixel cache."""

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform
from scipy.ndimage import map_coordinates

from geogfm.data.tile_plan import plan
from geogfm.data.tile_reader import SourceCache
from geogfm.data.tile_resample import CellMasks, SourceGrid

ROOT = Path(__file__).resolve().parents[1]
PATCH = "S2A_MSIL2A_20170613T101031_87_48"  # BigEarthNet, EPSG:32633, corner (404400, 5342400)
BEN = ROOT / ".." / ".." / "shared" / "realdata" / "bigearthnet_s2l2a_patches"
BEN = BEN / "BigEarthNet-S2-Example" / PATCH
CELLS = [(404_640, 5_342_160), (404_080, 5_342_720), (405_280, 5_341_520)]


def _href(name: str) -> str:
    return str(BEN / f"{PATCH}_{name}.tif")


def _cell(left: float, top: float, size: int = 64, epsg: int = 32633) -> GeoBox:
    return GeoBox((size, size), Affine(10, 0, left, 0, -10, top), CRS(f"EPSG:{epsg}"))


def _grid(ds) -> SourceGrid:
    return SourceGrid(ds.crs.to_wkt(), ds.transform, ds.height, ds.width)


def _warp(href: str, cell: GeoBox, kernel: str) -> np.ndarray:
    with rasterio.open(href) as ds:
        out = np.zeros(cell.shape, ds.dtypes[0])
        reproject(
            rasterio.band(ds, 1), out, src_nodata=0, dst_crs=str(cell.crs),
            dst_transform=cell.affine, dst_nodata=0, resampling=Resampling[kernel],
        )  # fmt: skip
    return out


def _resample(href: str, cell: GeoBox, kernel: str, data: np.ndarray | None = None) -> np.ndarray:
    """The plan's answer as GDAL's warper writes it: rounded half up, 0 where no data."""
    with rasterio.open(href) as ds:
        p = plan(_grid(ds), cell, kernel)
        data = ds.read(1) if data is None else data
    r0, r1, c0, c1 = p.window
    values, missing = p.resample([data[r0:r1, c0:c1]], [0])
    v = np.floor(values[0] + 0.5) if values.dtype.kind == "f" else values[0]
    return v.astype(int) if missing[0] is None else np.where(missing[0], 0, v).astype(int)


@pytest.mark.parametrize(("left", "top"), CELLS)
@pytest.mark.parametrize("name", ["B02", "B8A", "B09"])  # 10 m (slice), 20 m, 60 m (blocks)
@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "average"])
def test_aligned_grids_give_the_warpers_values(left, top, name, kernel):
    cell = _cell(left, top)
    got, expected = (
        _resample(_href(name), cell, kernel),
        _warp(_href(name), cell, kernel).astype(int),
    )
    if kernel == "average":  # the warper's average also fills the row and column just outside
        rim = (expected > 0) & (got == 0)
        assert rim.sum() <= 2 * 64 and not ((got > 0) & (expected == 0)).any()
        expected = np.where(rim, 0, expected)
    np.testing.assert_array_equal(got == 0, expected == 0)  # the same footprint
    assert np.abs(got - expected).max() <= (1 if kernel == "bilinear" else 0)


def test_bilinear_next_to_nodata_is_the_warpers():
    """Taps on nodata are left out and the rest renormalised; a pixel whose centre falls on
    nodata is nodata (GDAL's rule), so the footprint is GDAL's to the pixel."""
    with rasterio.open(_href("B8A")) as ds:
        data = ds.read(1)
    data[:, :30] = 0
    data[40:44, 40:] = 0
    cell = _cell(404_640, 5_342_160)
    got = _resample(_href("B8A"), cell, "bilinear", data)
    with rasterio.open(_href("B8A")) as ds:
        expected = np.zeros(cell.shape, np.uint16)
        reproject(
            data, expected, src_transform=ds.transform, src_crs=ds.crs, src_nodata=0,
            dst_crs=str(cell.crs), dst_transform=cell.affine, dst_nodata=0,
            resampling=Resampling.bilinear,
        )  # fmt: skip
    np.testing.assert_array_equal(got == 0, expected == 0)
    assert np.abs(got - expected).max() <= 1
    assert (got == 0).any() and (got > 0).mean() > 0.3


def test_another_utm_zone_is_plain_bilinear():
    (x,), (y,) = warp_transform("EPSG:32633", "EPSG:32632", [405_000], [5_341_800])
    cell = _cell(round(x / 10) * 10 - 320, round(y / 10) * 10 + 320, epsg=32632)
    got = _resample(_href("B04"), cell, "bilinear")
    with rasterio.open(_href("B04")) as ds:  # an independent bilinear at exactly mapped centres
        data, inv = ds.read(1).astype(float), ~ds.transform
    jj, ii = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
    to_src = Transformer.from_crs("EPSG:32632", "EPSG:32633", always_xy=True)
    col, row = inv * to_src.transform(cell.affine.c + 10 * jj, cell.affine.f - 10 * ii)
    exact = map_coordinates(data, [row - 0.5, col - 0.5], order=1, mode="constant", cval=np.nan)
    inner = ~np.isnan(exact)
    assert inner.mean() > 0.8
    assert np.abs(got[inner] - np.floor(exact[inner] + 0.5)).max() <= 1
    warped = _warp(_href("B04"), cell, "bilinear")  # GDAL: the same footprint, close values
    np.testing.assert_array_equal(got == 0, warped == 0)
    assert np.median(np.abs(got - warped.astype(int))[inner]) <= 3


def test_kernels_without_a_plan_are_left_to_gdal():
    with rasterio.open(_href("B02")) as ds:
        grid = _grid(ds)
    assert plan(grid, _cell(404_640, 5_342_160), "cubic") is None
    coarse = GeoBox((16, 16), Affine(60, 0, 404_640, 0, -60, 5_342_160), CRS("EPSG:32633"))
    assert plan(grid, coarse, "bilinear") is None  # downsampling: GDAL's widened kernel
    assert plan(grid, coarse, "nearest") is not None
    other = _cell(500_000, 5_000_000)  # far away: nothing to read
    assert plan(grid, other, "bilinear").empty()


def test_decoded_pixels_are_shared_by_threads_and_decoded_once(monkeypatch):
    cache = SourceCache()
    reads = []
    real = rasterio.io.DatasetReader.read

    def counting(self, *a, **k):
        reads.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", counting)
    href = _href("B02")
    got: list = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.window(href, 1, 10, 90, 5, 100)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", real)
    with rasterio.open(href) as ds:
        expected = ds.read(1)[10:90, 5:100]
    assert len(reads) == 1 and len(got) == 4
    for g in got:
        np.testing.assert_array_equal(g, expected)
    cache.close()


def test_decoded_units_are_dropped_beyond_the_limit():
    cache = SourceCache(max_bytes=1)  # keeps only the last unit
    a = cache.window(_href("B02"), 1, 0, 10, 0, 10)
    b = cache.window(_href("B03"), 1, 0, 10, 0, 10)
    assert len(cache._units) == 1 and not np.array_equal(a, b)
    cache.close()


def _other_zone_cell(x: float, y: float) -> GeoBox:
    """A 64-pixel cell of EPSG:32632 around the point ``(x, y)`` of EPSG:32633."""
    (u,), (v,) = warp_transform("EPSG:32633", "EPSG:32632", [x], [y])
    return _cell(round(u / 10) * 10 - 320, round(v / 10) * 10 + 320, epsg=32632)


@pytest.mark.parametrize(
    ("name", "kernel", "cell", "kind"),
    [
        ("B02", "bilinear", _cell(405_280, 5_341_520), "slice"),
        ("B8A", "bilinear", _cell(405_280, 5_341_520), "axes"),
        ("B8A", "nearest", _cell(404_080, 5_342_720), "axes"),
        ("B04", "bilinear", _other_zone_cell(405_600, 5_341_200), "bilinear"),
        ("B04", "nearest", _other_zone_cell(404_400, 5_342_400), "gather"),
    ],
)
def test_a_source_over_part_of_a_cell_is_planned_for_that_part(name, kernel, cell, kind):
    """Across a source's corner the plan covers the box of cell pixels whose centres can fall in
    the source: the values there, nothing outside."""
    with rasterio.open(_href(name)) as ds:
        p = plan(_grid(ds), cell, kernel)
        data = ds.read(1)
    assert p.kind == kind and p.box is not None and p.cell_shape == cell.shape
    y0, y1, x0, x1 = p.box
    assert p.shape == (y1 - y0, x1 - x0) and p.shape[0] * p.shape[1] < 0.8 * 64 * 64
    r0, r1, c0, c1 = p.window
    boxed, boxed_missing = p.resample([data[r0:r1, c0:c1]], [0], boxed=True)
    values, missing = p.resample([data[r0:r1, c0:c1]], [0])
    assert boxed.shape == (1, *p.shape) and values.shape == (1, 64, 64)
    np.testing.assert_array_equal(values[0, y0:y1, x0:x1], boxed[0])
    outside = np.ones((64, 64), bool)
    outside[y0:y1, x0:x1] = False
    assert missing[0][outside].all() and not values[0][outside].any()
    has_data = ~missing[0][y0:y1, x0:x1]
    if boxed_missing[0] is not None:
        np.testing.assert_array_equal(boxed_missing[0], missing[0][y0:y1, x0:x1])
    # the box is tight: its edge rows and columns have data
    for edge in (has_data[0], has_data[-1], has_data[:, 0], has_data[:, -1]):
        assert edge.any()
    # the same values as GDAL's warper, as for a cell the source covers
    got = _resample(_href(name), cell, kernel)
    warped = _warp(_href(name), cell, kernel).astype(int)
    np.testing.assert_array_equal(got == 0, warped == 0)


def test_grids_and_units_share_one_handle_per_file_across_threads(monkeypatch):
    opened = []
    real = rasterio.open

    def counting(*a, **k):
        opened.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(rasterio, "open", counting)
    cache = SourceCache()
    hrefs = [_href(n) for n in ("B02", "B03", "B8A")]

    def work(order):
        for h in order:
            cache.grid(h)
            cache.window(h, 1, 0, 10, 0, 10)

    threads = [threading.Thread(target=work, args=(o,)) for o in (hrefs, hrefs[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each file once, but for a thread that found the others' handle busy
    assert sorted(set(opened)) == sorted(hrefs) and len(opened) <= 2 * len(hrefs)
    work(hrefs)  # nothing new to open: grids and units are kept
    assert len(opened) <= 2 * len(hrefs)
    assert cache._n_lent == len(opened)  # every handle lent back
    cache.close()
    assert cache._n_lent == 0


def test_cell_masks_widen_a_box_mask_and_keep_shared_masks_shared():
    in_cell = CellMasks((1, 3, 2, 5), (4, 6))
    m = np.array([[True, False, False], [False, False, True]])
    full = in_cell(m)
    expected = np.ones((4, 6), bool)
    expected[1:3, 2:5] = m
    np.testing.assert_array_equal(full, expected)
    assert in_cell(m) is full  # bands that shared a mask still do
    none = in_cell(None)  # none missing in the box: missing only outside it
    assert none.sum() == 4 * 6 - 2 * 3 and not none[1:3, 2:5].any()
    assert in_cell(None) is none
    # a mask made for one band and dropped by the caller cannot stand in for a later one
    first = in_cell(np.zeros((2, 3), bool))
    later = in_cell(np.ones((2, 3), bool))
    assert not first[1:3, 2:5].any() and later[1:3, 2:5].all()
