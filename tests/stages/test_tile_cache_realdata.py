"""The tile cache on real Sentinel-2 files and real STAC metadata from ``../shared/realdata``.

Each cached value is compared with what rasterio reads from the source file after its scale and
offset: a plain windowed read where the grids align, GDAL's warp onto the cell's grid otherwise.
The STAC Items of Earth Search (v0, v1) and the Planetary Computer are parsed without pixels (their
hrefs point at cloud storage).
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import from_bounds

from geogfm.core.config import config_from_dict
from geogfm.data.datasets.sentinel2 import DEFAULT_BANDS
from geogfm.data.tile_cache import (
    band_encoding,
    band_sources,
    check_items,
    choose_epsg,
    item_epsg,
    plan_cells,
    processing_baseline,
)
from geogfm.stages import tile_cache

try:  # tests/ as a package or as rootdir-relative modules
    from . import _realdata_stac as rd
except ImportError:
    import _realdata_stac as rd

ALL_BANDS = list(rd.KEYS.values())  # the twelve L2A bands, coastal..swir22


def _cache(tmp_path: Path, items: list[pystac.Item], **tile_cache_kw) -> Path:
    bands = tile_cache_kw.pop("bands", list(DEFAULT_BANDS))
    cfg = config_from_dict(
        {"tile_cache": {"bands": bands, **tile_cache_kw}, "data": {"bands": list(DEFAULT_BANDS)}}
    )
    items_json = rd.write_items(items, tmp_path / "stac" / "items.json")
    tile_cache.run(cfg, items=items_json, out=tmp_path / "cache")
    return tmp_path / "cache"


def _cells(cache: Path):
    index = json.loads((cache / "index.json").read_text())
    for cell in index["cells"]:
        yield cell, xr.open_zarr(cache / f"{cell['id']}.zarr", consolidated=False)


def _warp(href: Path, bidx: int, cell: dict, kernel: Resampling, dtype, nodata) -> np.ndarray:
    minx, _, _, maxy = cell["bounds"]
    fill = np.nan if np.dtype(dtype).kind == "f" else 0
    out = np.full(cell["shape"], fill, dtype)
    with rasterio.open(href) as src:
        reproject(
            rasterio.band(src, bidx), out, src_nodata=nodata, dst_crs=cell["crs"],
            dst_transform=rasterio.Affine(10, 0, minx, 0, -10, maxy), dst_nodata=fill,
            resampling=kernel,
        )  # fmt: skip
    return out


def _read(href: Path, bidx: int, cell: dict) -> np.ndarray:
    """A plain windowed read of a file on the cell's grid (same CRS and 10 m pixels)."""
    with rasterio.open(href) as src:
        window = from_bounds(*cell["bounds"], transform=src.transform)
        return src.read(bidx, window=window, boundless=True, fill_value=0)


# ---------------------------------------------------------------------------------- BigEarthNet


@pytest.mark.parametrize(
    "patch",
    ["S2A_MSIL2A_20170613T101031_87_48", "S2B_MSIL2A_20180204T94161_57_38"],  # farmland; snow
)
def test_bigearthnet_patch_is_cached_as_read(tmp_path, patch):
    """One file per band at 10, 20 and 60 m; cells of 640 m cut the 1200 m patch anywhere.

    The 20 m and 60 m bands take the aligned fast path (GDAL's resampled read), which agrees
    with GDAL's warper to the DN: both round a bilinear mean, in different orders.
    """
    item = rd.bigearthnet_item(patch, tmp_path)
    cache = _cache(tmp_path, [item], bands=ALL_BANDS, cell_size=64)
    assert json.loads((cache / "index.json").read_text())["crs"] == item.properties["proj:code"]
    checked = 0
    for cell, ds in _cells(cache):
        assert [str(i) for i in ds.item_id.values] == [patch]
        refl, valid = ds.reflectance.values[0].astype(int), ds.valid.values[0]
        for c, key in enumerate(ALL_BANDS):
            href = Path(item.assets[key].href)
            with rasterio.open(href) as src:
                res = src.res[0]
            if res == 10:  # the cell's own pixels: a plain read (DN * 1e-4, no offset)
                expected = _read(href, 1, cell).astype(int)
                np.testing.assert_array_equal(refl[c][valid], expected[valid], err_msg=key)
            else:  # 20 m, 60 m: GDAL's bilinear warp onto the 10 m grid, to its rounding
                expected = _warp(href, 1, cell, Resampling.bilinear, np.uint16, 0).astype(int)
                assert np.abs(refl[c][valid] - expected[valid]).max() <= 1, key
            assert (refl[c][~valid] == 0).all() or key != "blue"
            checked += int(valid.sum())
        # valid: inside the patch, where every band has data
        inside = _read(Path(item.assets["blue"].href), 1, cell) > 0
        np.testing.assert_array_equal(valid, inside)
    assert checked == 12 * 120 * 120


# ---------------------------------------------------------------------------- eo-learn Slovenia


def test_slovenia_float_multiband_scenes_are_cached_as_warped(tmp_path):
    """13-band float32 reflectance (0..1) on a 9.99 m grid not aligned to the 10 m cells (GDAL's
    bilinear warp, to the DN, is the reference: there its kernel is the plain 4-tap one); bands
    found in one asset by their eo:bands names; the two fully clouded dates are dropped."""
    items = rd.slovenia_items(tmp_path)
    cache = _cache(tmp_path, items, cell_size=64)
    clear = {i.id for i in items} - {"S2_L1C_SLOVENIA_20150731", "S2_L1C_SLOVENIA_20150820"}
    by_id = {i.id: i for i in items}
    checked = 0
    for cell, ds in _cells(cache):
        assert {str(i) for i in ds.item_id.values} <= clear
        for t, item_id in enumerate(str(i) for i in ds.item_id.values):
            href = Path(by_id[item_id].assets["toa"].href)
            valid = ds.valid.values[t]
            for c, key in enumerate(DEFAULT_BANDS):
                bidx = rd.L1C_NAMES.index(next(n for n, k in rd.KEYS.items() if k == key)) + 1
                toa = _warp(href, bidx, cell, Resampling.bilinear, np.float32, None)
                expected = np.clip(np.rint(toa.astype(np.float64) / 1e-4), 1, 65535)
                # the cache's bilinear weighs in float32, GDAL's in float64: to the DN
                diff = np.abs(ds.reflectance.values[t, c][valid] - expected[valid])
                assert diff.max() <= 1 and (diff > 0).mean() < 0.01, key
            assert np.isfinite(toa[valid]).all() and not np.isfinite(toa[~valid]).any()
            checked += int(valid.sum())
    times = {str(t)[:10] for _, ds in _cells(cache) for t in ds.time.values}
    assert times == {"2015-07-11", "2015-08-30", "2015-09-09"}
    assert checked > 3 * 0.9 * 101 * 100


# ------------------------------------------------------------------------------------ ukis-pysat


def test_n0400_offset_is_removed_to_match_the_toa_reference(tmp_path):
    """Baseline 04.00 (from the product id; no raster:bands): DN - 1000 is ukis-pysat's TOA."""
    stem = "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549"
    item = rd.ukis_item(stem, tmp_path)
    assert band_encoding(item, "red") == (1e-4, -0.1, None)  # nodata: the file's, 65535
    cache = _cache(tmp_path, [item], cell_size=16)
    checked = 0
    for cell, ds in _cells(cache):
        valid = ds.valid.values[0]
        for c, key in enumerate(DEFAULT_BANDS):
            bidx = rd.L1C_NAMES.index(next(n for n, k in rd.KEYS.items() if k == key)) + 1
            with rasterio.open(rd.UKIS / f"{stem}_toa.tif") as ref:
                window = from_bounds(*cell["bounds"], transform=ref.transform)
                toa = ref.read(bidx, window=window, boundless=True, fill_value=np.nan)
            np.testing.assert_allclose(
                ds.reflectance.values[0, c][valid] * 1e-4, toa[valid], atol=1e-6, err_msg=key
            )
            checked += int(valid.sum())
    assert checked == len(DEFAULT_BANDS) * 9 * 8


def test_n0209_60m_patch_has_no_offset_and_upsamples_by_blocks(tmp_path):
    stem = "S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159"
    item = rd.ukis_item(stem, tmp_path)
    assert processing_baseline(item) == "02.09"
    cache = _cache(tmp_path, [item], cell_size=64, resampling="nearest")
    checked = 0
    for cell, ds in _cells(cache):
        valid = ds.valid.values[0]
        c = list(DEFAULT_BANDS).index("red")
        with rasterio.open(rd.UKIS / f"{stem}_toa.tif") as ref:  # each 60 m pixel: 6 x 6 cells
            left, _, _, top = cell["bounds"]
            rows = ((top - 5 - 10 * np.arange(64)) - ref.transform.f) // ref.transform.e
            cols = ((left + 5 + 10 * np.arange(64)) - ref.transform.c) // ref.transform.a
            toa = ref.read(4)
        inside = (rows >= 0) & (rows < 10), (cols >= 0) & (cols < 10)
        expected = np.zeros((64, 64))
        r, k = rows.astype(int).clip(0, 9), cols.astype(int).clip(0, 9)
        expected[:] = toa[np.ix_(r, k)]
        mask = valid & np.outer(*inside)
        np.testing.assert_allclose(
            ds.reflectance.values[0, c][mask] * 1e-4, expected[mask], atol=1e-6
        )
        checked += int(mask.sum())
    assert checked > 0.9 * 600 * 600 / 100  # the 600 m patch, 95 of 100 pixels with data


# -------------------------------------------------------------------------- real STAC metadata


def _load(name: str, migrate: bool = True) -> pystac.Item:
    doc = json.loads((rd.STAC_ITEMS / name).read_text())
    with warnings.catch_warnings():  # pystac's storage extension cannot migrate S3 https hrefs
        warnings.filterwarnings("ignore", message="Could not parse bucket", category=UserWarning)
        return pystac.Item.from_dict(doc, migrate=migrate)


PC = "odc-stac/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
PC_RASTER = "odc-stac/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531_raster_ext.json"
ES_V0 = "odc-stac/S2A_28QCH_20200714_0_L2A.json"
ES_V1 = "stacchip/sentinel-2-l2a-S2A_T20HNJ_20240311T140636_L2A.json"


@pytest.mark.parametrize("migrate", [True, False])  # pystac turns proj:epsg into proj:code
def test_crs_from_proj_code_or_proj_epsg(migrate):
    assert item_epsg(_load(PC, migrate)) == 32606
    assert item_epsg(_load(ES_V0, migrate)) == 32628
    assert item_epsg(_load(ES_V1, migrate)) == 32720
    assert ("proj:code" in _load(PC, migrate).properties) == migrate


def test_planetary_computer_item_bands_by_esa_name():
    item = _load(PC)
    srcs = band_sources(item, list(DEFAULT_BANDS))
    assert {k: s.asset for k, s in srcs.items()} == {
        "blue": "B02",
        "green": "B03",
        "red": "B04",
        "rededge1": "B05",
        "rededge2": "B06",
        "rededge3": "B07",
        "nir": "B08",
        "nir08": "B8A",
        "swir16": "B11",
        "swir22": "B12",
        "scl": "SCL",
    }  # fmt: skip  (B8A is "rededge" in PC's eo:bands: the asset key decides)
    assert all(s.bidx == 1 and s.href.startswith("https://") for s in srcs.values())
    # no raster:bands: scale 1e-4 and the offset of baseline 02.12 (none); nodata from the file
    assert band_encoding(item, "red") == (1e-4, 0.0, None)
    assert band_encoding(_load(PC_RASTER), "red") == (1e-4, 0.0, 0.0)  # nodata 0 declared


def test_earth_search_v0_item_without_eo_bands():
    item = _load(ES_V0)
    assert not any("eo:bands" in a.extra_fields for a in item.assets.values())
    assert processing_baseline(item) == "02.14"  # from sentinel:product_id
    srcs = band_sources(item, list(DEFAULT_BANDS))
    assert srcs["nir08"].asset == "B8A" and srcs["scl"].asset == "SCL"
    assert band_encoding(item, "swir22") == (1e-4, 0.0, None)


def test_earth_search_v1_item_raster_bands():
    item = _load(ES_V1)
    srcs = band_sources(item, list(DEFAULT_BANDS))
    assert all(s.asset == k for k, s in srcs.items())  # common-name keys; "visual" never used
    assert all((s.scale, s.offset, s.nodata) == (1e-4, -0.1, 0.0) for k, s in srcs.items()
               if k != "scl")  # fmt: skip
    assert processing_baseline(item) == "05.10"


def test_planetary_computer_series_plans_cells_in_its_utm_zone():
    items = list(
        pystac.ItemCollection.from_file(
            str(rd.STAC_ITEMS / "odc-stac/site2-2020_jun_jul-35MNM.geojson")
        )
    )
    assert len(items) == 13
    check_items(items, list(DEFAULT_BANDS))
    epsg = choose_epsg(items)
    assert epsg == 32735
    bbox = [27.5, -7.75, 27.55, -7.7]  # inside tile 35MNM
    cells = plan_cells(items, epsg=epsg, resolution=10.0, cell_size=256, bbox=bbox)
    assert 4 <= len(cells) <= 16 and all(c.crs == "EPSG:32735" for c in cells)  # 5.5 km

    assert all(len(c.item_ids) == 13 for c in cells)
