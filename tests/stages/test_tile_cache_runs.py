"""The tile_cache stage's runs: atomic and resumable, and its errors on bad input.

On the tiny catalog of ``_s2_fixture`` (see ``test_tile_cache.py`` for what the cache holds).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pystac
import pytest
import rasterio
import xarray as xr

from geogfm.core.config import config_from_dict
from geogfm.core.errors import ConfigError, DataError
from geogfm.data.tile_cache import choose_epsg
from geogfm.stages import demo_catalog, stac_query, tile_cache

try:  # tests/ as a package or as rootdir-relative modules
    from . import _s2_fixture as fx
    from . import _tiny_cache as tiny
except ImportError:
    import _s2_fixture as fx
    import _tiny_cache as tiny

A, B = fx.SCENES[0].id, fx.SCENES[1].id  # 2021-08-14 (03.01, nodata strip), 2022-05-11 (04.00)
catalog_dir = pytest.fixture(scope="module")(tiny.make_catalog_dir)


# ---------------------------------------------------------------------------- atomic, resumable


def _mtimes(store: Path) -> dict[str, int]:
    return {
        str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()
    }


def test_rerun_rebuilds_only_the_missing_cell(tmp_path, catalog_dir):
    cache = tiny.build(tmp_path, catalog_dir)
    index = (cache / "index.json").read_text()
    ids = [c["id"] for c in json.loads(index)["cells"]]
    before = {i: _mtimes(cache / f"{i}.zarr") for i in ids}
    gone = ids[2]
    shutil.rmtree(cache / f"{gone}.zarr")
    time.sleep(0.01)  # a rebuilt file gets a later mtime
    cfg = tiny.cfg()
    summary = tile_cache.run(cfg, items=tmp_path / "stac" / "items.json", out=cache)
    assert (summary["built"], summary["reused"]) == (1, len(ids) - 1)
    after = {i: _mtimes(cache / f"{i}.zarr") for i in ids}
    for i in ids:
        if i == gone:
            assert after[i].keys() == before[i].keys()
            assert all(after[i][f] > before[i][f] for f in after[i])  # written again
        else:
            assert after[i] == before[i]  # the same files, untouched
    assert (cache / "index.json").read_text() == index
    fresh = tiny.build(tmp_path / "fresh", catalog_dir)
    assert tiny.files(cache) == tiny.files(fresh)
    assert tiny.leftovers(tmp_path) == []


def test_other_settings_rebuild_every_cell(tmp_path, catalog_dir):
    cache = tiny.build(tmp_path, catalog_dir)
    cfg = tiny.cfg(resampling="nearest")
    summary = tile_cache.run(cfg, items=tmp_path / "stac" / "items.json", out=cache)
    assert (summary["built"], summary["reused"]) == (6, 0)
    default = tiny.build(tmp_path / "b", catalog_dir)
    assert tiny.index(cache)["fingerprint"] != tiny.index(default)["fingerprint"]


def test_killed_run_resumes_with_the_missing_cells(tmp_path):
    """A real SIGKILL mid-run: the output is untouched, and the next run builds only the rest."""
    bands = ["blue", "green", "red"]
    params = {
        "demo_catalog": {"size": 64, "dates": ["2022-05-11", "2022-07-30"]},
        "tile_cache": {"bands": bands, "cell_size": 16, "workers": 1},
        "data": {"bands": bands},
    }
    cfg = config_from_dict(params)
    demo_catalog.run(cfg, out=tmp_path / "demo")
    stac_query.run(cfg, catalog_dir=tmp_path / "demo", out=tmp_path / "stac")
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    out, stage = tmp_path / "cache", tmp_path / ".cache.partial"
    cmd = [sys.executable, "-m", "geogfm", "tile_cache", "--params", str(tmp_path / "params.yaml"),
           "--items", str(tmp_path / "stac" / "items.json"), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(stage.glob("*_*_*.json"))) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()  # nothing half-written where the output goes
    finished = len(list(stage.glob("*_*_*.json")))
    # what a kill at a worse moment leaves too: a store half-written, a store without its record
    (stage / ".32633_0000000_0000000.zarr.tmp-1-1").mkdir()
    done = next(stage.glob("*.zarr"))
    unrecorded = [p for p in _index_ids(tmp_path, cfg) if not (stage / f"{p}.json").exists()][0]
    shutil.copytree(done, stage / f"{unrecorded}.zarr")
    summary = tile_cache.run(cfg, items=tmp_path / "stac" / "items.json", out=out)
    planned = summary["cells"] + summary["skipped_cells"]
    assert summary["reused"] == finished and summary["built"] == planned - finished
    assert planned > finished + 5
    assert not stage.exists()
    fresh = tmp_path / "fresh"
    tile_cache.run(cfg, items=tmp_path / "stac" / "items.json", out=fresh)
    assert tiny.files(out) == tiny.files(fresh)


# ----------------------------------------------------------------------------------- bad input


def _index_ids(root: Path, cfg) -> list[str]:
    """The ids of the cells tile_cache plans for the items under ``root / "stac"``."""
    from geogfm.data.tile_cache import plan_cells

    items = list(pystac.ItemCollection.from_file(str(root / "stac" / "items.json")))
    epsg = choose_epsg(items)
    tc = cfg.tile_cache
    return [c.id for c in plan_cells(items, epsg=epsg, resolution=10.0, cell_size=tc.cell_size)]


def _scene_files(catalog_dir: Path, scene_id: str) -> Path:
    return catalog_dir / "sentinel-2-l2a" / scene_id


def _catalog_copy(tmp_path: Path, catalog_dir: Path) -> Path:
    shutil.copytree(catalog_dir, tmp_path / "catalog")
    return tmp_path / "catalog"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "FeatureCollection", "features": [', r"items.json is not JSON .*stac_query"),
        ('{"type": "Feature", "id": "x"}', r"items.json is not a STAC ItemCollection"),
    ],
)
def test_an_items_file_that_is_not_an_item_collection_is_named(tmp_path, text, message):
    (tmp_path / "items.json").write_text(text)
    with pytest.raises(DataError, match=message):
        tile_cache.run(tiny.cfg(), items=tmp_path / "items.json", out=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and tiny.leftovers(tmp_path) == []


def test_truncated_cog_stops_the_stage_naming_it_and_the_knob(tmp_path, catalog_dir):
    cat = _catalog_copy(tmp_path, catalog_dir)
    red = _scene_files(cat, B) / "red.tif"
    red.write_bytes(red.read_bytes()[: red.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"item '{B}' asset 'red' cannot be read .*red.tif.*"
                       r"truncated or corrupt.*tile_cache.fail_on_error: false"):  # fmt: skip
        tiny.build(tmp_path, cat)
    assert not (tmp_path / "cache").exists() and tiny.leftovers(tmp_path) == []


def test_corrupt_cog_is_skipped_and_counted_when_asked(tmp_path, catalog_dir):
    cat = _catalog_copy(tmp_path, catalog_dir)
    green = _scene_files(cat, A) / "green.tif"
    data = bytearray(green.read_bytes())
    data[len(data) // 2 :] = os.urandom(len(data) - len(data) // 2)  # garbage in the tiles
    green.write_bytes(bytes(data))
    cache = tiny.build(tmp_path, cat, fail_on_error=False, max_failed_fraction=0.5)
    index = tiny.index(cache)
    (failed,) = {f["item"] for f in index["failed_items"]} and index["failed_items"][:1]
    assert (failed["item"], failed["asset"]) == (A, "green") and "green.tif" in failed["href"]
    for cell in index["cells"]:  # A is left out; B alone makes each cell's one time step
        ds = xr.open_zarr(cache / f"{cell['id']}.zarr", consolidated=False)
        assert [str(i) for i in ds.item_id.values] == [B]
    with pytest.raises(DataError, match=r"1 of 2 item\(s\) \(50.0 %\).*max_failed_fraction=0.4"):
        tiny.build(tmp_path / "strict", cat, fail_on_error=False, max_failed_fraction=0.4)
    assert not (tmp_path / "strict" / "cache").exists()
    assert tiny.leftovers(tmp_path / "strict") == []


def test_missing_asset_file_is_an_unreadable_asset(tmp_path, catalog_dir):
    cat = _catalog_copy(tmp_path, catalog_dir)
    cfg = tiny.cfg()
    stac_query.run(cfg, catalog_dir=cat, out=tmp_path / "stac")
    (_scene_files(cat, A) / "scl.tif").unlink()  # gone after the query
    with pytest.raises(DataError, match=rf"item '{A}' asset 'scl' cannot be read.*No such file"):
        tile_cache.run(cfg, items=tmp_path / "stac" / "items.json", out=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unknown_scl_class_in_the_data_names_the_item_and_the_values(tmp_path, catalog_dir):
    cat = _catalog_copy(tmp_path, catalog_dir)
    with rasterio.open(
        _scene_files(cat, B) / "scl.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES"
    ) as dst:
        scl = dst.read(1)
        scl[4:8, 4:8] = 200
        dst.write(scl, 1)
    with pytest.raises(DataError, match=rf"item '{B}' asset 'scl' .* holds values \[200\] that "
                       r"are not Sentinel-2 scene classes \(0..11\)"):  # fmt: skip
        tiny.build(tmp_path, cat)
    assert not (tmp_path / "cache").exists() and tiny.leftovers(tmp_path) == []


def test_unknown_scl_class_in_params_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"tile_cache.mask_scl_classes.*unknown SCL class\(es\) "
                       r"\[12\].*9 cloud_high_probability"):  # fmt: skip
        tiny.cfg(mask_scl_classes=[0, 9, 12])


def test_all_nodata_cells_are_skipped_and_listed(tmp_path):
    a, b = fx.SCENES[:2]
    empty = fx.Scene("S2B_33TUN_20210814_0_L2A", a.datetime, "03.01", 0.0, shift_x=20_000.0,
                     nodata_cols=fx.SIZE)  # fmt: skip
    catalog = fx.make_catalog(tmp_path / "catalog", scenes=(a, b, empty))
    cache = tiny.build(tmp_path, catalog.parent)
    index = tiny.index(cache)
    assert len(index["cells"]) == 6 and len(index["skipped_cells"]) >= 4  # under "empty"
    assert all(int(c.split("_")[1]) >= 519_000 for c in index["skipped_cells"])
    assert not any((cache / f"{c}.zarr").exists() for c in index["skipped_cells"])


def test_nothing_but_nodata_is_an_error_that_says_so(tmp_path):
    empty = fx.Scene(fx.SCENES[0].id, fx.SCENES[0].datetime, "03.01", 0.0, nodata_cols=fx.SIZE)
    catalog = fx.make_catalog(tmp_path / "catalog", scenes=(empty,))
    with pytest.raises(DataError, match=r"none of the \d+ cell\(s\) has a valid pixel: every "
                       r"pixel of every item is nodata"):  # fmt: skip
        tiny.build(tmp_path, catalog.parent)
    assert not (tmp_path / "cache").exists() and tiny.leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("crs", "message"),
    [
        ("EPSG:99999", r"tile_cache.crs='EPSG:99999'.*not a known CRS.*EPSG:32633"),
        ("EPSG:4326", r"tile_cache.crs='EPSG:4326'.*not a projected CRS.*degrees"),
        ("UTM33", r"tile_cache.crs='UTM33' is not \"auto\" or \"EPSG:<code>\""),
    ],
)
def test_invalid_grid_crs_is_refused_before_work(tmp_path, catalog_dir, crs, message):
    with pytest.raises(ValueError, match=message):
        tiny.build(tmp_path, catalog_dir, crs=crs)
    assert not (tmp_path / "cache").exists() and tiny.leftovers(tmp_path) == []


def test_an_item_with_an_unknown_crs_is_named(tmp_path, catalog_dir):
    cfg = tiny.cfg()
    stac_query.run(cfg, catalog_dir=catalog_dir, out=tmp_path / "stac")
    path = tmp_path / "stac" / "items.json"
    doc = json.loads(path.read_text())
    doc["features"][1]["properties"]["proj:code"] = "EPSG:99999"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"item '{B}' proj:code/proj:epsg: EPSG:99999 is not a "
                       r"known CRS; set tile_cache.crs"):  # fmt: skip
        tile_cache.run(cfg, items=path, out=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
