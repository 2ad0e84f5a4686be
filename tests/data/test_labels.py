import datetime as dt

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import CacheCell
from geogfm.data.labels import majority_labels, open_label_source, read_label_map

X0, Y0 = 500_000.0, 5_100_000.0  # upper-left corner of the label raster, EPSG:32633


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    # a static catalog with one 10 m land-cover COG: class = 10 * (1 + (col // 8 + row // 8) % 4)
    root = tmp_path_factory.mktemp("labels")
    r, c = np.mgrid[0:64, 0:64]
    codes = (10 * (1 + (c // 8 + r // 8) % 4)).astype(np.uint8)
    codes[:4, :4] = 0  # nodata corner
    item_dir = root / "lc" / "item"
    item_dir.mkdir(parents=True)
    profile = dict(
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint8",
        nodata=0,
        crs="EPSG:32633",
        transform=from_origin(X0, Y0, 10, 10),
    )
    with rasterio.open(item_dir / "map.tif", "w", **profile) as dst:
        dst.write(codes, 1)
    lon, lat = warp_points("EPSG:32633", "EPSG:4326", [X0, X0 + 640], [Y0 - 640, Y0])
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    geom = {
        "type": "Polygon",
        "coordinates": [
            [
                [bbox[0], bbox[1]],
                [bbox[2], bbox[1]],
                [bbox[2], bbox[3]],
                [bbox[0], bbox[3]],
                [bbox[0], bbox[1]],
            ]
        ],
    }
    item = pystac.Item("item", geom, bbox, dt.datetime(2021, 1, 1, tzinfo=dt.UTC), {})
    asset = pystac.Asset(str(item_dir / "map.tif"), roles=["data"])
    asset.extra_fields["raster:bands"] = [{"nodata": 0}]
    asset.extra_fields["classification:classes"] = [
        {"value": v, "name": f"class{v}", "color_hint": "00FF00"} for v in (10, 20, 30, 40)
    ]
    item.add_asset("map", asset)
    coll = pystac.Collection(
        "landcover",
        "labels",
        pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[item.datetime, None]])),
    )
    coll.add_item(item)
    cat = pystac.Catalog("cat", "test")
    cat.add_child(coll)
    cat.normalize_and_save(str(root / "cat"), pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return root / "cat", codes


def test_label_source_reads_classes_and_nodata(catalog):
    source = open_label_source(catalog[0], collection="landcover", asset="map")
    assert source.classes == {10: "class10", 20: "class20", 30: "class30", 40: "class40"}
    assert source.nodata == 0 and source.colors[10] == "#00FF00"


def test_a_cell_on_the_same_grid_gets_the_exact_pixels(catalog):
    path, codes = catalog
    source = open_label_source(path, collection="landcover", asset="map")
    # 16 x 24 px starting 5 rows, 7 columns into the raster
    cell = CacheCell("c", "EPSG:32633", (X0 + 70, Y0 - 210, X0 + 310, Y0 - 50), (16, 24), 1)
    np.testing.assert_array_equal(read_label_map(source, cell), codes[5:21, 7:31])


def test_a_cell_in_another_utm_zone_gets_the_label_under_each_pixel(catalog):
    path, codes = catalog
    source = open_label_source(path, collection="landcover", asset="map")
    # the raster's centre, in zone 32, on a 20 m grid
    (x,), (y,) = warp_points("EPSG:32633", "EPSG:32632", [X0 + 320], [Y0 - 320])
    x0, y0 = np.floor(x / 20) * 20 - 200, np.floor(y / 20) * 20 + 200
    cell = CacheCell("c", "EPSG:32632", (x0, y0 - 400, x0 + 400, y0), (20, 20), 1)
    got = read_label_map(source, cell)
    assert set(np.unique(got)) <= {10, 20, 30, 40}
    # nearest resampling: each pixel centre takes the class under it
    rows, cols = np.mgrid[0:20, 0:20]
    cx, cy = x0 + 20 * cols.ravel() + 10, y0 - 20 * rows.ravel() - 10
    sx, sy = warp_points("EPSG:32632", "EPSG:32633", cx, cy)
    sc = np.floor((np.array(sx) - X0) / 10).astype(int)
    sr = np.floor((Y0 - np.array(sy)) / 10).astype(int)
    agree = (got.ravel() == codes[sr, sc]).mean()
    assert agree > 0.97  # GDAL's warper vs exact transforms: only boundary pixels may differ


def test_a_cell_beyond_the_labels_gets_nodata(catalog):
    source = open_label_source(catalog[0], collection="landcover", asset="map")
    cell = CacheCell("c", "EPSG:32633", (X0 + 5000, Y0 - 100, X0 + 5100, Y0), (10, 10), 1)
    assert (read_label_map(source, cell) == 0).all()


def test_missing_collection_and_asset_are_named(catalog, tmp_path):
    with pytest.raises(DataError, match=r"no collection 'worldcover' \(it has \['landcover'\]\)"):
        open_label_source(catalog[0], collection="worldcover", asset="map")
    with pytest.raises(DataError, match=r"no asset 'labels'"):
        open_label_source(catalog[0], collection="landcover", asset="labels")
    with pytest.raises(FileNotFoundError, match="label catalog"):
        open_label_source(tmp_path, collection="landcover", asset="map")


def test_majority_labels_by_hand():
    labels = np.array([[10, 10, 20, 0], [10, 20, 0, 0], [30, 30, 0, 0], [30, 20, 0, 0]])
    np.testing.assert_array_equal(majority_labels(labels, 2), [[10, 20], [30, 0]])
    np.testing.assert_array_equal(majority_labels(labels, 4), [[10]])  # 10 x3, 20 x3: smaller
