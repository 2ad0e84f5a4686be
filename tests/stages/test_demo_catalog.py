"""The demo_catalog stage: a real static STAC catalog of real COGs, checked as a reader sees it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pystac.validation import validate_dict
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform
from shapely.geometry import shape

from geogfm.core.config import config_from_dict
from geogfm.core.errors import ConfigError
from geogfm.data.datasets.sentinel2 import BANDS, band
from geogfm.data.demo_landscape import LANDCOVER_CLASSES, DemoLandscape
from geogfm.stages.demo_catalog import processing_baseline, run

SIZE = 128
DATES = ["2021-08-14", "2022-02-20", "2022-07-30"]  # 03.01, 04.00 (partial swath), 04.00
S2_KEYS = {b.key for b in BANDS} | {"scl"}
CLOUDS = (8, 9, 10)
HOME, OTHER = "33TTL", "32TQR"  # the tiles at the default centre, 12.04 E 46 N, size 128


def _cfg(**demo):
    return config_from_dict({"demo_catalog": demo})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    run(_cfg(seed=42, size=SIZE, dates=DATES, cloud_cover=0.25), out=out)
    return out


@pytest.fixture(scope="module")
def all_items(root) -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(root / "catalog.json"))
    return sorted(cat.get_child("sentinel-2-l2a").get_items(), key=lambda it: (it.datetime, it.id))


@pytest.fixture(scope="module")
def items(all_items) -> list[pystac.Item]:
    """The home tile's items (the per-scene checks hold for either tile)."""
    return [it for it in all_items if HOME in it.id]


@pytest.fixture(scope="module")
def landcover_items(root) -> dict[str, pystac.Item]:
    cat = pystac.Catalog.from_file(str(root / "catalog.json"))
    return {it.properties["grid:code"][5:]: it for it in cat.get_child("landcover").get_items()}


@pytest.fixture(scope="module")
def landcover(landcover_items) -> np.ndarray:
    return _read(landcover_items[HOME], "map")


def _read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


def _reflectance(item: pystac.Item, key: str) -> np.ndarray:
    """Reflectance with the asset's own scale/offset, NaN where nodata."""
    rb = item.assets[key].extra_fields["raster:bands"][0]
    dn = _read(item, key)
    return np.where(dn == rb["nodata"], np.nan, dn * rb["scale"] + rb["offset"])


def _scl10(item: pystac.Item) -> np.ndarray:
    """The 20 m SCL on the 10 m grid."""
    scl = _read(item, "scl")
    return np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)[:SIZE, :SIZE]


def _item(items: list[pystac.Item], day: str) -> pystac.Item:
    return next(it for it in items if it.datetime.date().isoformat() == day)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------ structure


def test_catalog_layout_and_core_schemas(root, items):
    cat = pystac.Catalog.from_file(str(root / "catalog.json"))
    assert {c.id for c in cat.get_children()} == {"sentinel-2-l2a", "landcover"}
    assert [it.datetime.date().isoformat() for it in items] == DATES
    all_items = list(cat.get_child("sentinel-2-l2a").get_items())
    assert len(all_items) == 2 * len(DATES)
    for it in all_items:
        assert re.fullmatch(r"S2[AB]_\d\d[C-X][A-Z]{2}_\d{8}_0_L2A", it.id), it.id
        assert set(it.assets) == S2_KEYS
    for path in root.rglob("*.json"):  # core STAC 1.1 schemas ship with pystac: offline
        doc = json.loads(path.read_text())
        validate_dict(doc, extensions=[])
        hrefs = [ln["href"] for ln in doc["links"]] + [
            a["href"] for a in doc.get("assets", {}).values()
        ]
        assert all(h.startswith(("./", "../")) for h in hrefs), (path, hrefs)
        assert "created" not in doc.get("properties", {})


def test_catalog_is_relocatable(root, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    cat = pystac.Catalog.from_file(str(moved / "catalog.json"))
    item = next(cat.get_child("sentinel-2-l2a").get_items())
    href = item.assets["red"].get_absolute_href()
    assert href.startswith(str(moved))
    assert _read(item, "red").shape == (SIZE, SIZE)


def test_item_metadata_is_earth_search_like(items):
    for it in items:
        p = it.properties
        assert p["constellation"] == "sentinel-2" and p["platform"] in (
            "sentinel-2a",
            "sentinel-2b",
        )
        assert p["proj:code"] == "EPSG:32633" and p["proj:shape"] == [SIZE, SIZE]
        w, s, e, n = it.bbox
        if p["s2:nodata_pixel_percentage"] == 0:  # the whole tile
            assert w < 12.04 < e and s < 46.0 < n  # the default centre
        ring = it.geometry["coordinates"][0]
        assert ring[0] == ring[-1]
        for key in S2_KEYS - {"scl"}:
            asset = it.assets[key].to_dict()
            assert asset["roles"] == ["data", "reflectance"]
            (eo,) = asset["eo:bands"]
            ref = band(key)
            assert (eo["name"], eo["common_name"], eo["center_wavelength"]) == (
                ref.name,
                ref.common_name,
                ref.center_wavelength,
            )
            (rb,) = asset["raster:bands"]
            assert rb["nodata"] == 0 and rb["data_type"] == "uint16" and rb["scale"] == 1e-4
            assert rb["spatial_resolution"] == ref.resolution


def test_every_asset_is_a_cog_on_its_declared_grid(all_items, landcover_items):
    for it in [*all_items, *landcover_items.values()]:
        for key, asset in it.assets.items():
            d = asset.to_dict()
            (rb,) = d["raster:bands"]
            shape = d.get("proj:shape", it.properties["proj:shape"])
            transform = d.get("proj:transform", it.properties["proj:transform"])
            with rasterio.open(asset.get_absolute_href()) as src:
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG", (it.id, key)
                assert src.profile["tiled"] and src.overviews(1), (it.id, key)
                assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
                assert src.nodata == 0
                assert src.dtypes[0] == rb["data_type"]
                assert src.res == (rb["spatial_resolution"],) * 2
                assert list(src.shape) == shape
                assert list(src.transform)[:6] == transform
                assert f"EPSG:{src.crs.to_epsg()}" == it.properties["proj:code"]
                # 10, 20 and 60 m grids share the top-left corner
                assert (src.transform.c, src.transform.f) == (transform[2], transform[5])


# ------------------------------------------------------------------------------------- radiometry


def test_baseline_offset_present_exactly_from_04_00(items, landcover):
    for it in items:
        baseline = it.properties["s2:processing_baseline"]
        new = (int(baseline[:2]), int(baseline[3:])) >= (4, 0)
        assert new == (it.datetime.date() >= dt.date(2022, 1, 25))
        assert baseline == processing_baseline(it.datetime.date())
        for key in S2_KEYS - {"scl"}:
            assert it.assets[key].extra_fields["raster:bands"][0]["offset"] == (
                -0.1 if new else 0.0
            )
        dn = _read(it, "swir22")  # dark water: DN well under 1000 unless the offset is there
        assert (dn[dn > 0].min() >= 1000) == new, (it.id, dn[dn > 0].min())

    # after scale/offset a stable land class reads the same under both baselines
    old, new = _item(items, "2021-08-14"), _item(items, "2022-07-30")
    means = []
    for it in (old, new):
        clear = np.isin(_scl10(it), (4, 5)) & (landcover == 50)
        assert clear.sum() > 50
        means.append(np.nanmean(_reflectance(it, "red")[clear]))
    assert abs(means[0] - means[1]) < 0.03, means  # a missed offset would be 0.1


def test_vegetation_and_water_spectra(items, landcover):
    for day in ("2021-08-14", "2022-07-30"):
        it = _item(items, day)
        red, nir = _reflectance(it, "red"), _reflectance(it, "nir")
        clear = np.isin(_scl10(it), (4, 5, 6))
        trees, water = clear & (landcover == 10), clear & (landcover == 80)
        assert trees.sum() > 100 and water.sum() > 20
        assert np.nanmedian(nir[trees]) > 4 * np.nanmedian(red[trees])
        assert np.nanmedian(nir[water]) < np.nanmedian(red[water])


def test_phenology_greens_up_in_summer(items, landcover):
    ndvi = {}
    for day in ("2022-02-20", "2022-07-30"):
        it = _item(items, day)
        red, nir = _reflectance(it, "red"), _reflectance(it, "nir")
        clear = (_scl10(it) == 4) | (_scl10(it) == 5)
        crop = clear & np.isin(landcover, (10, 30, 40))
        ndvi[day] = np.nanmean(((nir - red) / (nir + red))[crop])
    assert ndvi["2022-07-30"] > ndvi["2022-02-20"] + 0.05, ndvi


# ---------------------------------------------------------------------------- clouds, SCL, no data


def test_cloud_cover_is_measured_on_the_scl(items):
    for it in items:
        scl = _read(it, "scl")
        expected = 100.0 * np.isin(scl, CLOUDS).sum() / (scl != 0).sum()
        assert it.properties["eo:cloud_cover"] == pytest.approx(expected, abs=1e-3)
    assert max(it.properties["eo:cloud_cover"] for it in items) > 5.0


def test_clouds_are_bright_where_the_scl_says_so(items):
    blue, nir, scl = [], [], []
    for it in items:
        b = _reflectance(it, "blue")
        blue.append(b.reshape(SIZE // 2, 2, SIZE // 2, 2).mean(axis=(1, 3)))  # to 20 m
        nir.append(_reflectance(it, "nir08"))
        scl.append(_read(it, "scl"))
    blue, nir, scl = np.stack(blue), np.stack(nir), np.stack(scl)
    assert (scl == 9).sum() > 100 and (scl == 3).sum() > 100
    assert np.nanmedian(blue[scl == 9]) > 0.3
    assert np.nanmedian(blue[scl == 4]) < 0.08
    assert np.nanmedian(nir[scl == 3]) < 0.75 * np.nanmedian(nir[np.isin(scl, (4, 5))])


def test_partial_swath_is_nodata_in_every_band_and_the_scl(items):
    partial = [it for it in items if it.properties["s2:nodata_pixel_percentage"] > 5.0]
    assert partial, "no item with a swath edge"
    for it in items:
        scl = _read(it, "scl")
        for key in S2_KEYS - {"scl"}:
            dn = _read(it, key)
            if it.assets[key].extra_fields["raster:bands"][0]["spatial_resolution"] == 20:
                np.testing.assert_array_equal(dn == 0, scl == 0, err_msg=f"{it.id} {key}")
            nodata = (dn == 0).mean() * 100
            assert nodata == pytest.approx(it.properties["s2:nodata_pixel_percentage"], abs=3.0)


def test_landcover_layer(landcover, landcover_items, all_items):
    assert landcover.shape == (SIZE, SIZE) and landcover.dtype == np.uint8
    present = set(np.unique(landcover).tolist())
    assert present <= set(LANDCOVER_CLASSES) and len(present) >= 5
    assert set(landcover_items) == {HOME, OTHER}  # one label item per tile, on the tile's grid
    for tile, item in landcover_items.items():
        classes = item.assets["map"].extra_fields["classification:classes"]
        assert [c["value"] for c in classes] == list(LANDCOVER_CLASSES)
        scene = next(it for it in all_items if tile in it.id)
        for key in ("proj:code", "proj:transform", "proj:shape"):
            assert item.properties[key] == scene.properties[key]
        assert (_read(item, "map") > 0).all()


# -------------------------------------------------------------------------------- two UTM zones


def test_two_tiles_in_two_utm_zones_cover_the_area_together(all_items):
    by_tile: dict[str, list[pystac.Item]] = {}
    for it in all_items:
        by_tile.setdefault(it.id.split("_")[1], []).append(it)
    assert set(by_tile) == {HOME, OTHER}
    codes = {t: {it.properties["proj:code"] for it in its} for t, its in by_tile.items()}
    assert codes == {HOME: {"EPSG:32633"}, OTHER: {"EPSG:32632"}}  # each in its own zone
    for home, other in zip(by_tile[HOME], by_tile[OTHER], strict=True):
        # one datatake: same time, same platform, and the two footprints overlap
        assert home.datetime == other.datetime
        assert home.properties["platform"] == other.properties["platform"]
        overlap = shape(home.geometry).intersection(shape(other.geometry))
        assert overlap.area > 0.2 * shape(home.geometry).area
    assert len({it.datetime for it in all_items}) == len(DATES)


def test_overlapping_tiles_show_the_same_ground(all_items):
    """The second zone's tile, reprojected onto the first's grid, matches it where they overlap."""
    day = "2022-07-30"
    home, other = (
        next(it for it in all_items if t in it.id and it.datetime.date().isoformat() == day)
        for t in (HOME, OTHER)
    )
    with rasterio.open(home.assets["nir"].get_absolute_href()) as a:
        ref = a.read(1).astype(float)
        moved = np.zeros(a.shape, np.uint16)
        with rasterio.open(other.assets["nir"].get_absolute_href()) as b:
            reproject(
                rasterio.band(b, 1), moved, src_nodata=0, dst_crs=a.crs,
                dst_transform=a.transform, dst_nodata=0, resampling=Resampling.bilinear,
            )  # fmt: skip
    both = (ref > 0) & (moved > 0)
    assert both.sum() > 0.2 * ref.size
    assert np.corrcoef(ref[both], moved[both])[0, 1] > 0.95
    assert np.median(np.abs(ref[both] - moved[both])) < 0.03 * np.median(ref[both])


def test_default_area_straddles_the_zone_boundary():
    from geogfm.data.demo_tiles import demo_tiles

    home, other = demo_tiles(lon=12.04, lat=46.0, size=512)  # the default
    assert (home.epsg, other.epsg) == (32633, 32632)
    (w,), _ = warp_transform(other.crs, "EPSG:4326", [other.x0], [other.y0 - 2560])
    (e,), _ = warp_transform(home.crs, "EPSG:4326", [home.x0 + 5120], [home.y0 - 2560])
    assert w < 12.0 < e
    # the dominant zone of the area, where tile_cache puts its grid, is the first tile's
    assert (w + e) / 2 > 12.0


# ------------------------------------------------------------------------ determinism, atomicity


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    cfg = _cfg(seed=7, size=64, dates=["2021-09-01", "2022-06-01"])
    run(cfg, out=tmp_path / "a")
    run(cfg, out=tmp_path / "b")
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    # 2 dates x 2 tiles x (13 COGs + item), catalog, 2 collections, 2 tiles x (map + item)
    assert len(a) == 2 * 2 * 14 + 1 + 2 + 2 * 2 and a == b
    run(_cfg(seed=8, size=64, dates=["2021-09-01", "2022-06-01"]), out=tmp_path / "c")
    c = _hashes(tmp_path / "c")
    tifs = [k for k in a if k.endswith(".tif")]
    assert all(a[k] != c[k] for k in tifs)


def test_a_dates_scene_does_not_depend_on_the_other_dates():
    land = DemoLandscape(seed=3, size=48)
    when = dt.datetime(2022, 5, 11, 10, 6, tzinfo=dt.UTC)
    first = land.scene(when, cloud_cover=0.3)
    land.scene(dt.datetime(2021, 8, 14, 10, 6, tzinfo=dt.UTC), cloud_cover=0.3, partial=True)
    again = DemoLandscape(seed=3, size=48).scene(when, cloud_cover=0.3)
    np.testing.assert_array_equal(first.scl, again.scl)
    for key, arr in first.reflectance.items():
        np.testing.assert_array_equal(arr, again.reflectance[key])


def test_rerun_replaces_the_old_output(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    summary = run(_cfg(size=64, dates=["2022-06-01"]), out=out)
    assert not (out / "stale.txt").exists() and (out / "catalog.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp folder left
    assert summary["items"] == [json.loads(p.read_text())["id"] for p in out.rglob("S2*.json")]


def test_bad_dates_are_rejected_at_load():
    with pytest.raises(ConfigError, match=r"demo_catalog\.dates.*'2022-02-30'.*YYYY-MM-DD"):
        _cfg(dates=["2022-02-30"])
    with pytest.raises(ConfigError, match="dates listed twice"):
        _cfg(dates=["2022-02-20", "2022-02-20"])
