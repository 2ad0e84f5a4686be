"""The tile cache's reader: each fast path against a plain read or GDAL's warper onto the cell."""

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform
from rasterio.windows import from_bounds

from geogfm.data.tile_reader import BandSource, SourceCache, read_band

ROOT = Path(__file__).resolve().parents[1]
PATCH = "S2A_MSIL2A_20170613T101031_87_48"  # BigEarthNet, EPSG:32633, corner (404400, 5342400)
BEN = ROOT / ".." / ".." / "shared" / "realdata" / "bigearthnet_s2l2a_patches"
BEN = BEN / "BigEarthNet-S2-Example" / PATCH


def _ben(name: str) -> BandSource:
    return BandSource(name, str(BEN / f"{PATCH}_{name}.tif"), 1, 1e-4, 0.0, 0.0)


def _cell(left: float, top: float, size: int = 64, epsg: int = 32633) -> GeoBox:
    return GeoBox((size, size), Affine(10, 0, left, 0, -10, top), CRS(f"EPSG:{epsg}"))


def _warp(src: BandSource, cell: GeoBox, kernel: str) -> np.ndarray:
    with rasterio.open(src.href) as ds:
        out = np.zeros(cell.shape, ds.dtypes[0])
        reproject(
            rasterio.band(ds, 1), out, src_nodata=src.nodata, dst_crs=str(cell.crs),
            dst_transform=cell.affine, dst_nodata=0, resampling=Resampling[kernel],
        )  # fmt: skip
    return out


@pytest.fixture
def sources():
    cache = SourceCache()
    yield cache
    cache.close()


# cells: inside the patch, across its top-left corner, across its bottom-right corner
CELLS = [(404_640, 5_342_160), (404_080, 5_342_720), (405_280, 5_341_520)]


@pytest.mark.parametrize(("left", "top"), CELLS)
def test_same_grid_is_a_plain_read(sources, left, top):
    cell = _cell(left, top)
    got, nodata = read_band(sources, _ben("B02"), cell, resampling="bilinear")
    with rasterio.open(_ben("B02").href) as ds:
        window = from_bounds(*cell.boundingbox, transform=ds.transform)
        expected = ds.read(1, window=window, boundless=True, fill_value=0)
    assert nodata == 0 and got.dtype == np.uint16
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, _warp(_ben("B02"), cell, "bilinear"))


@pytest.mark.parametrize(("left", "top"), CELLS)
@pytest.mark.parametrize("name", ["B8A", "B09"])  # 20 m (2 x 2 blocks), 60 m (6 x 6 blocks)
@pytest.mark.parametrize("kernel", ["nearest", "average", "bilinear"])
def test_block_upsampling_is_the_warpers(sources, left, top, name, kernel):
    cell = _cell(left, top)
    got, _ = read_band(sources, _ben(name), cell, resampling=kernel)
    expected = _warp(_ben(name), cell, kernel)
    if kernel == "average":  # the warper's average also fills the row and column just outside
        rim = (expected > 0) & (got == 0)  # the source, where the read leaves nodata
        assert rim.sum() <= 2 * 64 and not ((got > 0) & (expected == 0)).any()
        expected = np.where(rim, 0, expected)
    np.testing.assert_array_equal(got == 0, expected == 0)  # the same footprint
    diff = np.abs(got.astype(int) - expected)
    if kernel == "bilinear":  # GDAL's resampled read and its warper round the mean differently
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05
    else:
        assert diff.max() == 0


def test_bilinear_next_to_nodata_and_cubic_are_the_warpers(sources, tmp_path):
    # a 20 m band with nodata in its left half: the read's kernel would mix 0 in, the warper not
    src = _ben("B8A")
    with rasterio.open(src.href) as ds:
        data, profile = ds.read(1), ds.profile
    data[:, :30] = 0
    profile.update(nodata=0)
    with rasterio.open(tmp_path / "strip.tif", "w", **profile) as dst:
        dst.write(data, 1)
    strip = BandSource("B8A", str(tmp_path / "strip.tif"), 1, 1e-4, 0.0, 0.0)
    cell = _cell(404_640, 5_342_160)  # across the nodata edge (x = 405000)
    for kernel in ("bilinear", "cubic"):
        got, _ = read_band(sources, strip, cell, resampling=kernel)
        np.testing.assert_array_equal(got, _warp(strip, cell, kernel))
    assert (got[:, :36] == 0).all() and (got[:, 40:] > 0).all()


def test_another_utm_zone_is_warped(sources):
    (x,), (y,) = warp_transform("EPSG:32633", "EPSG:32632", [405_000], [5_341_800])
    cell = _cell(round(x / 10) * 10 - 320, round(y / 10) * 10 + 320, epsg=32632)
    got, _ = read_band(sources, _ben("B04"), cell, resampling="bilinear")
    np.testing.assert_array_equal(got, _warp(_ben("B04"), cell, "bilinear"))
    assert (got > 0).mean() > 0.9


def test_a_cell_away_from_the_source_is_nodata(sources):
    got, nodata = read_band(sources, _ben("B04"), _cell(500_000, 5_000_000), resampling="bilinear")
    assert nodata == 0 and not got.any()
    (x,), (y,) = warp_transform("EPSG:32633", "EPSG:32632", [500_000], [5_000_000])
    far = _cell(round(x), round(y), epsg=32632)
    assert not read_band(sources, _ben("B04"), far, resampling="bilinear")[0].any()


def test_datasets_are_lent_one_thread_at_a_time_and_kept_until_closed():
    cache = SourceCache(max_open=2)
    href = _ben("B02").href
    other: list = []

    def read_beside() -> None:
        with cache.lend(href) as ds:
            other.append(ds)

    with cache.lend(href) as first:
        t = threading.Thread(target=read_beside)
        t.start()
        t.join()
        assert other[0] is not first  # in use: the other thread got a handle of its own
    with cache.lend(href) as again:
        assert again is first and not other[0].closed  # returned, then lent: not opened again
    with cache.lend(_ben("B03").href), cache.lend(_ben("B04").href):
        pass
    assert first.closed and other[0].closed  # four kept, max_open=2: the oldest are closed
    with pytest.raises(RasterioError), cache.lend(href) as ds:
        raise RasterioError("read failed")
    assert ds.closed  # a handle whose read failed is not kept
    kept = [d for lent in cache._lent.values() for d in lent]
    cache.close()
    assert kept and all(d.closed for d in kept)
