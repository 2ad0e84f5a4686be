"""stac_query over HTTP on loopback: a real STAC API, and tiny servers that fail on purpose.

The real one (``stac_server``, see ``tests/_stac_server.py``) is stac-fastapi-pgstac on
PostgreSQL/PostGIS with the demo catalog loaded and its COGs served by nginx: the API path must give
what the static path gives, with the cloud filter applied by the server, over several pages. The
tiny ones (``tests/_loopback_http.py``) answer 503, stall or refuse on cue, for retries and errors.
"""

import json
import logging
import math
import socket
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
from _loopback_http import FULL, STAC, LoopbackApi, serve_directory
from _stac_server import StacServer, stac_server_fixture  # noqa: F401 (fixture "stac_server")

from geogfm.core.config import config_from_dict
from geogfm.core.errors import DataError
from geogfm.data.stac import search_items
from geogfm.stages import stac_query, tile_cache

try:  # tests/ as a package or as rootdir-relative modules
    from ._s2_fixture import make_catalog
except ImportError:
    from _s2_fixture import make_catalog

S2 = "sentinel-2-l2a"
FAST = {"retries": 3, "backoff": 0.01, "timeout": 5.0}  # retries without the production waits

# pystac-client only warns when a server lacks what a parameter needs: make that a failure here
pytestmark = pytest.mark.filterwarnings("error::pystac_client.warnings.DoesNotConformTo")


def _cfg(**stac_query):
    return config_from_dict({"stac_query": stac_query})


def _ids(items) -> list[str]:
    return [i.id for i in items]


# -------------------------------------------------------------------- tiny loopback API: failures


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="module")
def features(catalog) -> list[dict]:
    """The static catalog's Sentinel-2 items as an API would return them."""
    return [i.to_dict() for i in search_items(catalog=catalog, collections=[S2])]


def test_5xx_is_retried_with_backoff_then_served(features):
    with LoopbackApi(features, failures={"/": 3, "/search": 2}) as api:
        items = search_items(catalog=api.url, collections=[S2], **FAST | {"backoff": 0.1})
    assert _ids(items) == [f["id"] for f in features]
    landing = [r for r in api.requests if r[1] == "/"][:4]
    assert [r[2] for r in landing] == [503, 503, 503, 200]
    # urllib3's exponential backoff: no wait, then 2 x 0.1 s, then 4 x 0.1 s (sleeps: lower bounds)
    waits = [b[4] - a[4] for a, b in zip(landing, landing[1:], strict=False)]
    assert waits[1] >= 0.2 and waits[2] >= 0.4
    assert [r[2] for r in api.requests if r[1] == "/search"] == [503, 503, 200]


def test_api_that_stays_down_is_a_clear_error(features):
    with (
        LoopbackApi(features, failures={"/": 10**6}) as api,
        pytest.raises(
            DataError,
            match=r"STAC API http://127.0.0.1:\d+ kept failing for its landing page: HTTP 503 "
            r"\(2 retries with backoff, 5 s timeout\).*try again later or raise stac_query.retries",
        ),
    ):
        search_items(catalog=api.url, collections=[S2], **FAST | {"retries": 2})
    assert api.count("GET", "/") == 3  # the request and two retries
    down = LoopbackApi(features, failures={"/search": 10**6})
    with down as api, pytest.raises(DataError, match="kept failing to the search: HTTP 503"):
        search_items(catalog=api.url, collections=[S2], **FAST)
    assert api.count("POST", "/search") == 4


def test_timeouts_are_retried_then_a_clear_error(features):
    fast = FAST | {"timeout": 0.3}
    with LoopbackApi(features, stalls={"/search": 1}, stall_s=1.0) as api:
        assert len(search_items(catalog=api.url, collections=[S2], **fast)) == len(features)
    assert api.count("POST", "/search") == 2  # the one that timed out, and its retry
    with (
        LoopbackApi(features, stalls={"/": 10**6}, stall_s=1.0) as api,
        pytest.raises(
            DataError,
            match=r"did not answer for its landing page \(1 retries with backoff, 0.3 s timeout\)"
            r".*timed out.*check that the server is up",
        ),
    ):
        search_items(catalog=api.url, collections=[S2], **fast | {"retries": 1})
    assert api.count("GET", "/") == 2


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening, then closed: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_stops_the_stage_without_output(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    cfg = _cfg(catalog=url, retries=2, timeout=2.0)
    with pytest.raises(
        DataError,
        match=rf"STAC API {url} did not answer for its landing page \(2 retries with backoff, 2 s "
        r"timeout\): .*Connection refused.*check that the server is up and that "
        r"stac_query.catalog is its root URL",
    ):
        stac_query.run(cfg, catalog_dir=tmp_path / "unused", out=tmp_path / "stac")
    assert list(tmp_path.iterdir()) == []


def test_cloud_filter_is_refused_by_an_api_that_cannot_apply_it(features):
    with LoopbackApi(features, conforms=(f"{STAC}/core", f"{STAC}/item-search")) as api:
        with pytest.raises(
            DataError,
            match=r"conforms to neither the filter nor the query extension, so "
            r"max_cloud_cover=20.0 cannot be applied; set stac_query.max_cloud_cover: null",
        ):
            search_items(catalog=api.url, collections=[S2], max_cloud_cover=20.0, **FAST)
        assert api.count("POST", "/search") == 0  # refused before searching
        assert len(search_items(catalog=api.url, collections=[S2], **FAST)) == len(features)


def test_cloud_filter_goes_out_as_cql2_json_else_as_query(features):
    with LoopbackApi(features, conforms=FULL) as api:
        search_items(catalog=api.url, collections=[S2], max_cloud_cover=20.0, **FAST)
    body = api.requests[-1][3]
    assert body["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20.0]}
    assert body["filter-lang"] == "cql2-json" and "query" not in body
    query_only = (f"{STAC}/core", f"{STAC}/item-search", f"{STAC}/item-search#query")
    with LoopbackApi(features, conforms=query_only) as api:
        search_items(catalog=api.url, collections=[S2], max_cloud_cover=20.0, **FAST)
    body = api.requests[-1][3]
    assert body["query"] == {"eo:cloud_cover": {"lte": 20.0}} and "filter" not in body


def test_a_url_that_is_not_a_stac_api_is_a_clear_error(catalog):
    with serve_directory(catalog.parent) as base:  # an HTML directory listing at "/"
        with pytest.raises(DataError, match=rf"{base} did not return a STAC API landing page"):
            search_items(catalog=base, collections=[S2], **FAST)
        with pytest.raises(DataError, match=rf"STAC API {base}/nope answered HTTP 404 for its"):
            search_items(catalog=f"{base}/nope", collections=[S2], **FAST)


def _served(features: list[dict], catalog: Path, base: str) -> list[dict]:
    """``features`` with their local asset hrefs mapped to ``base`` (which serves the catalog)."""
    out = json.loads(json.dumps(features))
    for f in out:
        for asset in f["assets"].values():
            asset["href"] = f"{base}/{Path(asset['href']).relative_to(catalog.parent).as_posix()}"
    return out


def test_asset_404_stops_the_stage_without_output(features, catalog, tmp_path):
    with serve_directory(catalog.parent) as base:
        served = _served(features, catalog, base)
        with LoopbackApi(served) as api:
            out = tmp_path / "ok"
            stac_query.run(_cfg(catalog=api.url), catalog_dir=tmp_path, out=out)
            lock = json.loads((out / "lock.json").read_text())
            rec = lock["items"][0]["assets"]["red"]
            local = catalog.parent / rec["href"][len(base) + 1 :]
            assert rec["size"] == local.stat().st_size  # Content-Length of the HEAD
            assert rec["sha256"] is None

            served[0]["assets"]["red"]["href"] = f"{base}/sentinel-2-l2a/missing/B04.tif"
            with pytest.raises(
                DataError,
                match=rf"asset 'red' of item '{served[0]['id']}': '{base}/sentinel-2-l2a/missing/"
                r"B04.tif' answered HTTP 404 \(not found\): the catalog points to a missing file",
            ):
                stac_query.run(_cfg(catalog=api.url), catalog_dir=tmp_path, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


# ------------------------------------------------------------ the real STAC API (pgstac + nginx)


def _static(srv: StacServer) -> str:
    return str(srv.catalog_dir / "catalog.json")


def _searches(caplog) -> list[str]:
    """The search requests pystac-client sent (its debug log has the JSON payload)."""
    msgs = [r.getMessage() for r in caplog.records if r.name == "pystac_client.stac_api_io"]
    return [m for m in msgs if m.startswith("POST ") and "/search " in m]


def _comparable(item: pystac.Item, srv: StacServer | None = None) -> dict:
    """The item without links; with ``srv``, local asset hrefs mapped to their nginx URLs."""
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    d.pop("links")
    if srv is not None:
        for asset in d["assets"].values():
            asset["href"] = srv.asset_url(asset["href"])
    return d


def test_api_search_equals_the_static_search_over_pages(stac_server, caplog):
    srv = stac_server
    static = search_items(catalog=_static(srv), collections=[S2])
    caplog.set_level(logging.DEBUG, logger="pystac_client.stac_api_io")
    api = search_items(catalog=srv.api, collections=[S2], page_size=2)
    assert len(static) > 2  # more than a page
    assert _ids(api) == _ids(static)
    for a, s in zip(api, static, strict=True):
        assert _comparable(a) == _comparable(s, srv)  # every property, asset and geometry
        assert all(x.href.startswith(f"{srv.assets}/") for x in a.assets.values())
    pages = _searches(caplog)
    assert len(pages) >= math.ceil(len(static) / 2)
    assert '"limit": 2' in pages[0] and '"token": ' in pages[1]


def test_cloud_filter_is_applied_by_the_server(stac_server, caplog):
    srv = stac_server
    everything = search_items(catalog=_static(srv), collections=[S2])
    covers = sorted(i.properties["eo:cloud_cover"] for i in everything)
    limit = covers[len(covers) // 2]  # the median: some scenes in, some out
    static = search_items(catalog=_static(srv), collections=[S2], max_cloud_cover=limit)
    caplog.set_level(logging.DEBUG, logger="pystac_client.stac_api_io")
    api = search_items(catalog=srv.api, collections=[S2], max_cloud_cover=limit, page_size=2)
    # search_items does not filter API results itself: what is missing, the server left out
    assert _ids(api) == _ids(static)
    assert 0 < len(api) < len(everything)
    assert all(i.properties["eo:cloud_cover"] <= limit for i in api)
    cql2 = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, limit]}
    assert all(f'"filter": {json.dumps(cql2)}' in p for p in _searches(caplog))
    assert all('"filter-lang": "cql2-json"' in p for p in _searches(caplog))
    unfiltered = search_items(catalog=srv.api, collections=[S2], max_cloud_cover=None)
    assert len(unfiltered) == len(everything) > len(api)


def test_max_items_keeps_the_earliest_without_reading_every_page(stac_server, caplog):
    srv = stac_server
    n = len(search_items(catalog=_static(srv), collections=[S2]))
    static = search_items(catalog=_static(srv), collections=[S2], max_items=3)
    caplog.set_level(logging.DEBUG, logger="pystac_client.stac_api_io")
    api = search_items(catalog=srv.api, collections=[S2], max_items=3, page_size=2)
    assert _ids(api) == _ids(static) and len(api) == 3
    pages = _searches(caplog)
    assert '"sortby": [{"field": "properties.datetime", "direction": "asc"}]' in pages[0]
    assert len(pages) < math.ceil(n / 2)


def test_unknown_collection_names_what_the_api_has(stac_server):
    with pytest.raises(
        DataError,
        match=r"collection\(s\) \['nope'\] not in the STAC API http://127.0.0.1:\d+; it has "
        r"\['landcover', 'sentinel-2-l2a'\]: fix stac_query.collections",
    ):
        search_items(catalog=stac_server.api, collections=[S2, "nope"])


def test_empty_api_search_repeats_the_query(stac_server, tmp_path):
    cfg = _cfg(catalog=stac_server.api, datetime="2030-01-01/2030-12-31", max_cloud_cover=10.0)
    with pytest.raises(DataError) as err:
        stac_query.run(cfg, catalog_dir=tmp_path, out=tmp_path / "stac")
    msg = str(err.value)
    assert f"found no items for catalog='{stac_server.api}'" in msg
    assert "datetime='2030-01-01/2030-12-31' max_cloud_cover=10.0" in msg
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def both_stage_runs(stac_server, tmp_path_factory) -> dict[str, Path]:
    """``stac_query`` on the static catalog and through the API (two items a page)."""
    root = tmp_path_factory.mktemp("stage_runs")
    for name, catalog in (("static", _static(stac_server)), ("api", stac_server.api)):
        cfg = _cfg(catalog=catalog, page_size=2, max_cloud_cover=100.0)
        stac_query.run(cfg, catalog_dir=root, out=root / name)
    return {"static": root / "static", "api": root / "api"}


def _nginx_etag(path: Path) -> str:
    st = path.stat()
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def test_lock_and_items_equal_the_static_ones_modulo_hrefs(stac_server, both_stage_runs):
    srv = stac_server
    static, api = (
        json.loads((both_stage_runs[k] / "lock.json").read_text()) for k in both_stage_runs
    )
    assert api["catalog"] == srv.api and static["catalog"] == _static(srv)
    assert {**api["query"], "catalog": None} == {**static["query"], "catalog": None}
    assert [i["id"] for i in api["items"]] == [i["id"] for i in static["items"]]
    for a, s in zip(api["items"], static["items"], strict=True):
        for key in ("collection", "datetime", "processing_baseline"):
            assert a[key] == s[key]
        assert set(a["assets"]) == set(s["assets"])
        for key, sa in s["assets"].items():
            aa = a["assets"][key]
            assert aa["href"] == srv.asset_url(sa["href"])
            assert aa["size"] == sa["size"] == Path(sa["href"]).stat().st_size  # Content-Length
            assert aa["etag"] == _nginx_etag(Path(sa["href"]))  # nginx's ETag
            assert aa["sha256"] is None and len(sa["sha256"]) == 64

    api_items, static_items = (
        pystac.ItemCollection.from_file(str(both_stage_runs[k] / "items.json"))
        for k in ("api", "static")
    )
    assert [_comparable(i) for i in api_items] == [_comparable(i, srv) for i in static_items]


def test_tile_cache_reads_the_http_assets_like_the_local_files(stac_server, both_stage_runs):
    bands = ["blue", "green", "red", "nir"]
    cfg = config_from_dict(
        {"tile_cache": {"bands": bands, "cell_size": 64}, "data": {"bands": bands}}
    )
    caches = {}
    for name, run in both_stage_runs.items():
        caches[name] = run.parent / f"{name}_cache"
        tile_cache.run(cfg, items=run / "items.json", out=caches[name])
    index, static_index = (
        json.loads((caches[k] / "index.json").read_text()) for k in ("api", "static")
    )
    # the resume fingerprint may depend on where the files are (file sizes are known locally only)
    index.pop("fingerprint", None), static_index.pop("fingerprint", None)
    assert index == static_index
    assert index["cells"]
    for cell in index["cells"]:
        api, static = (
            xr.open_zarr(caches[k] / f"{cell['id']}.zarr", consolidated=False)
            for k in ("api", "static")
        )
        assert set(api.variables) == set(static.variables)
        for name in static.variables:
            np.testing.assert_array_equal(api[name].values, static[name].values, err_msg=name)
        assert api.attrs == static.attrs
        assert (api["valid"].values.any()) and api["reflectance"].values.max() > 0
    # GDAL read the COGs by HTTP range requests (206), not as whole downloads
    access = (stac_server.logs / "nginx-access.log").read_text()
    assert '" 206 ' in access and ".tif HTTP/1.1" in access
