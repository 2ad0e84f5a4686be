import datetime as dt
import hashlib
import json
from pathlib import Path

import pystac
import pytest
from pystac_client import Client

from geogfm.core.config import config_from_dict
from geogfm.core.errors import ConfigError, DataError
from geogfm.data.stac import check_bbox, parse_datetime_interval, search_items
from geogfm.data.stac_api import _accept_newer_conformance, _search_args
from geogfm.data.stac_lock import write_lock
from geogfm.stages import stac_query

try:  # tests/ as a package or as rootdir-relative modules
    from ._s2_fixture import SCENES, make_catalog
except ImportError:
    from _s2_fixture import SCENES, make_catalog

A, B, C = (s.id for s in SCENES)  # 2021-08-14 (03.01), 2022-05-11 (04.00), 2022-07-30 (east)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("catalog"))


def _ids(catalog, **kw) -> list[str]:
    kw.setdefault("collections", ["sentinel-2-l2a"])
    return [i.id for i in search_items(catalog=catalog, **kw)]


def _lonlat_bbox(catalog: Path, item_id: str) -> list[float]:
    item = pystac.Item.from_file(
        str(catalog.parent / "sentinel-2-l2a" / item_id / f"{item_id}.json")
    )
    return list(item.bbox)


# ------------------------------------------------------------------------------------ search rules


def test_search_returns_sorted_items_with_absolute_existing_hrefs(catalog):
    items = search_items(catalog=catalog, collections=["sentinel-2-l2a"])
    assert [i.id for i in items] == [A, B, C]
    for item in items:
        assert item.collection_id == "sentinel-2-l2a"
        for asset in item.assets.values():
            assert Path(asset.href).is_absolute() and Path(asset.href).is_file()


def test_search_accepts_the_catalog_folder(catalog):
    assert _ids(catalog.parent) == [A, B, C]


def test_collections_select_items(catalog):
    assert _ids(catalog, collections=["landcover"]) == ["ESA_WorldCover_33TUM"]
    assert _ids(catalog, collections=["landcover", "sentinel-2-l2a"])[0] == "ESA_WorldCover_33TUM"


def test_unknown_collection_names_the_available_ones(catalog):
    with pytest.raises(DataError, match=r"\['nope'\] not in .*\['landcover', 'sentinel-2-l2a'\]"):
        _ids(catalog, collections=["nope"])


def test_bbox_keeps_intersecting_items(catalog):
    w, s, e, n = _lonlat_bbox(catalog, C)
    assert _ids(catalog, bbox=[w + 0.001, s + 0.001, e - 0.001, n - 0.001]) == [C]
    w, s, e, n = _lonlat_bbox(catalog, A)
    assert _ids(catalog, bbox=[w - 0.01, s - 0.01, w + 0.001, s + 0.001]) == [A, B]  # a corner


def test_bbox_without_items_raises_with_the_query(catalog):
    with pytest.raises(DataError, match=r"no items .*bbox=\[10\.0, 40\.0, 10\.1, 40\.1\]"):
        _ids(catalog, bbox=[10.0, 40.0, 10.1, 40.1])


def test_intersects_keeps_intersecting_items(catalog):
    w, s, e, n = _lonlat_bbox(catalog, C)
    x, y = (w + e) / 2, (s + n) / 2  # inside C only: 20 km east of A and B
    assert _ids(catalog, intersects={"type": "Point", "coordinates": [x, y]}) == [C]
    poly = {"type": "Polygon", "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1], [x, y]]]}
    assert _ids(catalog, intersects=poly) == [C]


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        (
            [15.0, 46.2, 15.1, 46.1],
            r"bbox \[15.0, 46.2, 15.1, 46.1\] is inverted \(south > north\)",
        ),
        ([15.1, 46.0, 15.0, 46.1], r"is inverted \(west > east\).*antimeridian: search each side"),
        ([15.0, 46.0, 15.1], r"bbox \[15.0, 46.0, 15.1\] is not four finite numbers"),
        ([15.0, 46.0, 195.0, 46.1], r"out of range"),
    ],
)
def test_bad_bbox_is_refused_before_any_request(bbox, message):
    # port 9 (discard) on loopback: a request would fail differently; none is made
    with pytest.raises(ValueError, match=message):
        search_items(catalog="http://127.0.0.1:9", collections=["sentinel-2-l2a"], bbox=bbox)
    with pytest.raises(ValueError, match=message):
        check_bbox(bbox)


def test_inverted_bbox_in_params_names_the_key():
    with pytest.raises(
        ConfigError, match=r"stac_query.bbox = \[15.0, 46.2, 15.1, 46.1\]: inverted"
    ):
        _cfg(bbox=[15.0, 46.2, 15.1, 46.1])
    with pytest.raises(ConfigError, match="give bbox or intersects, not both"):
        _cfg(bbox=[15.0, 46.0, 15.1, 46.1], intersects={"type": "Point", "coordinates": [15, 46]})
    with pytest.raises(
        ConfigError, match=r"stac_query.intersects: \{'west': 15\} is not a GeoJSON geometry"
    ):
        _cfg(intersects={"west": 15})


def test_bad_intersects_is_refused(catalog):
    with pytest.raises(ValueError, match="is not a GeoJSON geometry"):
        _ids(catalog, intersects={"type": "Polygon", "coordinates": [[1, 2]]})
    with pytest.raises(ValueError, match="bbox or intersects, not both"):
        _ids(catalog, bbox=[0, 0, 1, 1], intersects={"type": "Point", "coordinates": [0, 0]})


def test_reversed_dates_are_refused_before_work(catalog, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"'2022-12-31/2021-01-01' starts after it ends.*"
        r"did you mean '2021-01-01/2022-12-31'",
    ):
        search_items(
            catalog="http://127.0.0.1:9", collections=["x"], datetime="2022-12-31/2021-01-01"
        )
    out = tmp_path / "stac"
    cfg = _cfg(catalog=str(catalog), datetime="2022-12-31/2021-01-01")
    with pytest.raises(ValueError, match="starts after it ends"):
        stac_query.run(cfg, catalog_dir=tmp_path, out=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("datetime", "expected"),
    [
        ("2022-05-11", [B]),  # a date covers its whole day
        ("2022-05", [B]),
        ("2022", [B, C]),
        ("../2021-12-31", [A]),  # open start
        ("2022-05-11/..", [B, C]),  # open end
        ("/2021-08-14", [A]),  # empty = open, date-only end covers the day
        ("2021-08-14T10:10:00Z", [A]),  # an instant
        ("2021-08-14T10:10:01Z/2022-07-30T10:09:59Z", [B]),
        ("2021-08-14T12:10:00+02:00/2021-08-14T12:10:00+02:00", [A]),  # timezone offsets
    ],
)
def test_datetime_interval(catalog, datetime, expected):
    assert _ids(catalog, datetime=datetime) == expected


def test_bad_datetime_names_the_value(catalog):
    with pytest.raises(ValueError, match="'2021-13-45' is not RFC 3339"):
        _ids(catalog, datetime="2021-13-45")
    with pytest.raises(ValueError, match="open at both ends"):
        parse_datetime_interval("../..")


def test_parse_datetime_interval_expands_partial_dates():
    start, end = parse_datetime_interval("2021-02")
    assert start == dt.datetime(2021, 2, 1, tzinfo=dt.UTC)
    assert end == dt.datetime(2021, 3, 1, tzinfo=dt.UTC) - dt.timedelta(microseconds=1)
    assert parse_datetime_interval("2021-12/..") == (dt.datetime(2021, 12, 1, tzinfo=dt.UTC), None)


def test_cloud_cover_is_inclusive(catalog):
    assert _ids(catalog, max_cloud_cover=40.0) == [A, B]
    assert _ids(catalog, max_cloud_cover=39.9) == [A]


def test_empty_cloud_search_repeats_the_query(catalog):
    with pytest.raises(DataError) as err:
        _ids(catalog, max_cloud_cover=1.0, datetime="2021/2022")
    msg = str(err.value)
    for part in ("collections=['sentinel-2-l2a']", "datetime='2021/2022'", "max_cloud_cover=1.0"):
        assert part in msg
    assert "raise max_cloud_cover" in msg


def test_max_items_keeps_the_earliest(catalog):
    assert _ids(catalog, max_items=2) == [A, B]
    assert _ids(catalog, max_items=1, datetime="2022") == [B]


def test_missing_catalog_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="catalog.json' not found"):
        _ids(tmp_path / "catalog.json")


# ------------------------------------------------------------------ STAC API request (no network)

_API = "https://api.stacspec.org/v1.0.0"


def _client(*conformance: str) -> Client:
    """A pystac-client Client from an API landing page that declares ``conformance``."""
    return Client.from_dict(
        {
            "type": "Catalog",
            "id": "api",
            "description": "landing page",
            "stac_version": "1.0.0",
            "conformsTo": [f"{_API}/core", *conformance],
            "links": [
                {"rel": "self", "href": "http://127.0.0.1:9/"},
                {
                    "rel": "search",
                    "href": "http://127.0.0.1:9/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
            ],
        }
    )


def _request(client: Client, **kw) -> dict:
    args = {"collections": ["sentinel-2-l2a"], "bbox": None, "datetime": None, "page_size": 50}
    args |= {"intersects": None, "max_cloud_cover": None, "max_items": None} | kw
    return client.search(**_search_args(client, **args)).get_parameters()


pytestmark_api = pytest.mark.filterwarnings("error::pystac_client.warnings.DoesNotConformTo")


@pytestmark_api
def test_api_cloud_filter_is_cql2_json_when_the_api_has_filter():
    client = _client(
        f"{_API}/item-search", f"{_API}/item-search#filter", f"{_API}/item-search#query"
    )
    body = _request(client, max_cloud_cover=20.0, datetime="2021-08-14", bbox=[14, 45, 15, 46])
    assert body["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20.0]}
    assert body["filter-lang"] == "cql2-json"
    assert "query" not in body
    assert body["datetime"] == "2021-08-14T00:00:00Z/2021-08-14T23:59:59Z"
    assert body["limit"] == 50


@pytestmark_api
def test_api_cloud_filter_falls_back_to_query():
    body = _request(_client(f"{_API}/item-search", f"{_API}/item-search#query"), max_cloud_cover=5)
    assert body["query"] == {"eo:cloud_cover": {"lte": 5}}
    assert "filter" not in body


def test_api_without_filter_or_query_cannot_filter_clouds():
    with pytest.raises(DataError, match="neither the filter nor the query extension"):
        _request(_client(f"{_API}/item-search"), max_cloud_cover=5.0)
    with pytest.raises(DataError, match="does not conform to STAC API item-search"):
        _request(_client())


@pytestmark_api
def test_api_max_items_sorts_by_time_when_it_can():
    sortable = _client(f"{_API}/item-search", f"{_API}/item-search#sort")
    assert _request(sortable, max_items=3)["sortby"] == [
        {"field": "properties.datetime", "direction": "asc"}
    ]
    assert "sortby" not in _request(sortable)
    assert "sortby" not in _request(_client(f"{_API}/item-search"), max_items=3)


@pytestmark_api
def test_newer_stac_api_conformance_is_accepted():
    # stac-fastapi 6+ (pgstac) declares sort as v1.1.0, which pystac-client 0.9 does not recognise
    client = _client(f"{_API}/item-search", "https://api.stacspec.org/v1.1.0/item-search#sort")
    assert "sortby" not in _request(client, max_items=3)
    _accept_newer_conformance(client)
    assert _request(client, max_items=3)["sortby"] == [
        {"field": "properties.datetime", "direction": "asc"}
    ]
    other = _client(f"{_API}/item-search", "https://example.com/v1.1.0/item-search#sort")
    _accept_newer_conformance(other)
    assert "sortby" not in _request(other, max_items=3)


# ------------------------------------------------------------------------------------------- stage


def _cfg(**stac_query):
    return config_from_dict({"stac_query": stac_query})


def test_stage_writes_item_collection_and_lock(catalog, tmp_path):
    out = tmp_path / "stac"
    cfg = _cfg(catalog=str(catalog), max_cloud_cover=50.0)
    summary = stac_query.run(cfg, catalog_dir=tmp_path / "unused", out=out)
    assert summary["items"] == 2
    assert summary["processing_baselines"] == {"03.01": 1, "04.00": 1}
    assert sorted(p.name for p in out.iterdir()) == ["items.json", "lock.json"]
    assert not list(tmp_path.glob(".stac.*"))  # no temporary left behind

    ic = pystac.ItemCollection.from_file(str(out / "items.json"))
    assert [i.id for i in ic] == [A, B]
    assert all(Path(a.href).is_absolute() for i in ic for a in i.assets.values())

    lock = json.loads((out / "lock.json").read_text())
    assert lock["catalog"] == str(catalog.resolve())
    assert lock["query"] == {
        "catalog": str(catalog),
        "collections": ["sentinel-2-l2a"],
        "bbox": None,
        "intersects": None,
        "datetime": None,
        "max_cloud_cover": 50.0,
        "max_items": None,
    }
    assert [i["id"] for i in lock["items"]] == [A, B]
    first = lock["items"][0]
    assert first["collection"] == "sentinel-2-l2a"
    assert first["datetime"] == "2021-08-14T10:10:00Z"
    assert [i["processing_baseline"] for i in lock["items"]] == ["03.01", "04.00"]
    assert set(first["assets"]) == {"blue", "green", "red", "nir08", "scl"}
    for rec in first["assets"].values():
        data = Path(rec["href"]).read_bytes()
        assert rec["size"] == len(data)
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()


def test_stage_is_deterministic_and_replaces_its_output(catalog, tmp_path):
    out = tmp_path / "stac"
    stac_query.run(_cfg(catalog=str(catalog)), catalog_dir=tmp_path, out=out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "stale.txt").write_text("old")
    stac_query.run(_cfg(catalog=str(catalog)), catalog_dir=tmp_path, out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_demo_catalog_uses_catalog_dir_and_collection_extent(catalog, tmp_path):
    out = tmp_path / "stac"
    stac_query.run(_cfg(datetime="2022"), catalog_dir=catalog.parent, out=out)
    lock = json.loads((out / "lock.json").read_text())
    extent = pystac.Collection.from_file(str(catalog.parent / "sentinel-2-l2a" / "collection.json"))
    assert lock["query"]["catalog"] == "demo"
    assert lock["query"]["bbox"] == extent.extent.spatial.bboxes[0]
    assert [i["id"] for i in lock["items"]] == [B, C]


def test_missing_demo_catalog_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `geogfm demo_catalog`"):
        stac_query.run(_cfg(), catalog_dir=tmp_path / "demo", out=tmp_path / "stac")


def test_lock_refuses_a_missing_local_asset(catalog, tmp_path):
    item = search_items(catalog=catalog, collections=["sentinel-2-l2a"], max_items=1)[0]
    item.assets["red"].href = str(tmp_path / "gone.tif")
    with pytest.raises(DataError, match=r"asset 'red' of item .*gone.tif', which does not exist"):
        write_lock([item], {}, tmp_path / "lock.json")
    assert not (tmp_path / "lock.json").exists()


def test_lock_records_unknown_sizes_as_null(catalog, tmp_path):
    item = search_items(catalog=catalog, collections=["sentinel-2-l2a"], max_items=1)[0]
    item.assets["red"].href = "s3://bucket/red.tif"
    lock = write_lock([item], {"catalog": "x"}, tmp_path / "lock.json")
    assert lock["items"][0]["assets"]["red"] == {
        "href": "s3://bucket/red.tif",
        "size": None,
        "sha256": None,
    }
    assert json.loads((tmp_path / "lock.json").read_text()) == lock
    assert lock["catalog"] == "x"


def test_failed_search_leaves_old_output(catalog, tmp_path):
    out = tmp_path / "stac"
    stac_query.run(_cfg(catalog=str(catalog)), catalog_dir=tmp_path, out=out)
    before = (out / "lock.json").read_bytes()
    with pytest.raises(DataError):
        stac_query.run(
            _cfg(catalog=str(catalog), max_cloud_cover=0.0), catalog_dir=tmp_path, out=out
        )
    assert (out / "lock.json").read_bytes() == before
