"""``geogfm stac_query --check``: the locked query searched again, every difference named.

A real static catalog (COGs written with rasterio) in ``tmp_path`` is locked, then changed the
ways catalogs change under a project: a COG rewritten, an item deleted, a scene reprocessed (a new
processing baseline), an asset file gone. The check must pass on the untouched catalog, fail naming
each change otherwise, and write nothing. Then the same against the real STAC API on loopback,
where an asset's ETag (nginx: mtime and size) changes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from _stac_server import StacServer, stac_server_fixture  # noqa: F401 (fixture "stac_server")

from geogfm.core.config import config_from_dict
from geogfm.core.errors import DataError
from geogfm.stages import stac_query

try:  # tests/ as a package or as rootdir-relative modules
    from ._s2_fixture import SCENES, make_catalog
except ImportError:
    from _s2_fixture import SCENES, make_catalog

A, B, C = (s.id for s in SCENES)  # baselines 03.01, 04.00, 04.00
ROOT = Path(__file__).resolve().parents[2]


def _cfg(**stac_query):
    return config_from_dict({"stac_query": {"max_cloud_cover": 100.0, **stac_query}})


@pytest.fixture
def locked(tmp_path) -> tuple[Path, Path]:
    """A fresh catalog and its lock: ``(catalog.json, data/stac)``."""
    catalog = make_catalog(tmp_path / "catalog")
    out = tmp_path / "stac"
    stac_query.run(_cfg(catalog=str(catalog)), catalog_dir=tmp_path, out=out)
    return catalog, out


def _check(catalog: Path, out: Path) -> dict:
    return stac_query.check(_cfg(catalog=str(catalog)), catalog_dir=catalog.parent, out=out)


def _item_json(catalog: Path, item_id: str) -> Path:
    return catalog.parent / "sentinel-2-l2a" / item_id / f"{item_id}.json"


def test_untouched_catalog_passes(locked):
    catalog, out = locked
    summary = _check(catalog, out)
    assert summary["items"] == 3 and summary["drift"] == 0
    assert summary["assets"] == 3 * 5  # blue, green, red, nir08, scl


def test_rewritten_cog_is_named_with_its_new_checksum(locked):
    catalog, out = locked
    cog = catalog.parent / "sentinel-2-l2a" / B / "red.tif"
    old_sha = json.loads((out / "lock.json").read_text())["items"][1]["assets"]["red"]["sha256"]
    with rasterio.open(cog, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:  # a brighter pixel
        data = ds.read(1)
        data[10, 10] += 100
        ds.write(data, 1)
    with pytest.raises(DataError, match=r"1 difference") as err:
        _check(catalog, out)
    msg = str(err.value)
    assert f"item '{B}' asset 'red': " in msg and f"sha256 {old_sha[:12]}... -> " in msg
    assert "run `geogfm stac_query` again" in msg


def test_deleted_item_is_named(locked):
    catalog, out = locked
    collection = catalog.parent / "sentinel-2-l2a" / "collection.json"
    coll = json.loads(collection.read_text())
    coll["links"] = [ln for ln in coll["links"] if A not in ln["href"]]
    collection.write_text(json.dumps(coll))
    with pytest.raises(DataError, match=rf"item '{A}': no longer found by the query"):
        _check(catalog, out)


def test_changed_processing_baseline_is_named(locked):
    catalog, out = locked
    path = _item_json(catalog, C)
    item = json.loads(path.read_text())
    item["properties"]["s2:processing_baseline"] = "05.09"
    path.write_text(json.dumps(item))
    with pytest.raises(
        DataError, match=rf"item '{C}': processing baseline '04.00' -> '05.09' \(reprocessed\)"
    ):
        _check(catalog, out)


def test_every_change_is_listed_at_once(locked):
    catalog, out = locked
    (catalog.parent / "sentinel-2-l2a" / A / "scl.tif").unlink()
    path = _item_json(catalog, B)
    item = json.loads(path.read_text())
    item["properties"]["s2:processing_baseline"] = "05.00"
    del item["assets"]["blue"]
    path.write_text(json.dumps(item))
    with pytest.raises(DataError, match=r"3 difference") as err:
        _check(catalog, out)
    msg = str(err.value)
    assert f"item '{A}' asset 'scl': gone (" in msg and "does not exist" in msg
    assert f"item '{B}': processing baseline '04.00' -> '05.00'" in msg
    assert f"item '{B}' asset 'blue': removed from the item" in msg


def test_a_new_item_is_drift_too(tmp_path):
    catalog = make_catalog(tmp_path / "catalog", SCENES[:2])
    out = tmp_path / "stac"
    stac_query.run(_cfg(catalog=str(catalog)), catalog_dir=tmp_path, out=out)
    make_catalog(tmp_path / "catalog")  # the catalog now holds a third scene
    with pytest.raises(DataError, match=rf"item '{C}': new, found by the query but not in"):
        _check(catalog, out)


def test_an_emptied_catalog_names_every_locked_item(locked):
    catalog, out = locked
    collection = catalog.parent / "sentinel-2-l2a" / "collection.json"
    coll = json.loads(collection.read_text())
    coll["links"] = [ln for ln in coll["links"] if ln["rel"] != "item"]
    collection.write_text(json.dumps(coll))
    with pytest.raises(DataError, match=r"3 difference") as err:
        _check(catalog, out)
    assert all(f"item '{i}': no longer found" in str(err.value) for i in (A, B, C))


def test_missing_lock_says_to_run_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lock\.json' not found; run `geogfm stac_query`"):
        stac_query.check(_cfg(catalog="demo"), catalog_dir=tmp_path, out=tmp_path / "stac")


def test_cli_check_exits_nonzero_names_the_item_and_writes_nothing(locked, tmp_path):
    catalog, out = locked
    params = tmp_path / "params.yaml"
    params.write_text(f"stac_query:\n  catalog: {catalog}\n  max_cloud_cover: 100.0\n")
    cmd = [sys.executable, "-m", "geogfm", "stac_query", "--check", "--params", str(params)]
    cmd += ["--out", str(out)]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    cog = catalog.parent / "sentinel-2-l2a" / A / "nir08.tif"
    cog.write_bytes(cog.read_bytes() + b"\0")  # a longer file
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    size = cog.stat().st_size
    assert f"item '{A}' asset 'nir08': size {size - 1} -> {size}, sha256 " in bad.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---------------------------------------------------------------------------- real STAC API


def test_check_through_the_real_api_names_a_changed_etag_and_a_vanished_item(stac_server, tmp_path):
    srv: StacServer = stac_server
    cfg = _cfg(catalog=srv.api, page_size=2)
    out = tmp_path / "stac"
    stac_query.run(cfg, catalog_dir=tmp_path, out=out)
    assert stac_query.check(cfg, catalog_dir=tmp_path, out=out)["drift"] == 0

    lock = json.loads((out / "lock.json").read_text())
    first = lock["items"][0]
    served = srv.catalog_dir / first["assets"]["red"]["href"].removeprefix(srv.assets + "/")
    assert served.is_file()
    st = served.stat()
    try:
        os.utime(served, (st.st_atime, st.st_mtime + 3600))  # nginx's ETag is mtime-size
        # and an item the lock has but the API does not (deleted upstream)
        ghost = {**first, "id": "S2A_33TUM_20200101_0_L2A"}
        lock["items"].append(ghost)
        (out / "lock.json").write_text(json.dumps(lock))
        with pytest.raises(DataError, match=r"2 difference") as err:
            stac_query.check(cfg, catalog_dir=tmp_path, out=out)
    finally:
        os.utime(served, (st.st_atime, st.st_mtime))  # the session's server serves it as before
    msg = str(err.value)
    assert f"item '{first['id']}' asset 'red': etag " in msg
    assert "item 'S2A_33TUM_20200101_0_L2A': no longer found by the query" in msg
    assert f"the catalog {srv.api} no longer gives" in msg
