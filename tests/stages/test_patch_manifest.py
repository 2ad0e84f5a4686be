import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _tile_cache_fixture import CELLS, RES, SIZE, TIMES, X0, Y0, write_tile_cache

from geogfm.core.config import config_from_dict
from geogfm.core.errors import DataError
from geogfm.data.manifest import MANIFEST_COLUMNS
from geogfm.data.splits import assign_blocks, rect_gaps, spatial_block_split
from geogfm.stages import patch_manifest

CHIP = 16
BLOCK = 48


@pytest.fixture(scope="module")
def tile_cache(tmp_path_factory):
    """The fixture tile cache, shared by this module's tests: read it, never modify it."""
    return write_tile_cache(tmp_path_factory.mktemp("tile_cache") / "cache")


def make_cfg(image_size=CHIP, **pm):
    pm = {"block_size": BLOCK, **pm}
    return config_from_dict({"model": {"image_size": image_size}, "patch_manifest": pm})


def run_manifest(cache, out, **kw):
    summary = patch_manifest.run(make_cfg(**kw), cache=cache, out=out)
    df = pd.read_parquet(out / "patches.parquet")
    audit = json.loads((out / "split_audit.json").read_text())
    return summary, df, audit


@pytest.fixture(scope="module")
def manifest(tile_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifests")
    return run_manifest(tile_cache, out)


def windows(df):
    """Unique window locations with their split and footprint."""
    cols = ["cell_id", "row", "col", "minx", "miny", "maxx", "maxy", "block_id", "split"]
    return df[cols].drop_duplicates().reset_index(drop=True)


def gap(a, b):
    """Euclidean distance between two rectangles (0 when they touch or overlap)."""
    dx = max(0.0, a[0] - b[2], b[0] - a[2])
    dy = max(0.0, a[1] - b[3], b[1] - a[3])
    return math.hypot(dx, dy)


# ----------------------------------------------------------------------------- manifest content


def test_manifest_has_the_contract_columns(manifest):
    _, df, _ = manifest
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert (df["size"] == CHIP).all()
    assert set(df["split"]) == {"train", "val"}
    assert df["patch_id"].is_unique
    assert df.equals(df.sort_values(["cell_id", "time_index", "row", "col"], ignore_index=True))


def test_qa_fractions_match_the_cache(manifest, tile_cache):
    _, df, _ = manifest
    assert (df["valid_fraction"] >= 0.5).all()
    for cell_id, g in df.groupby("cell_id"):
        ds = xr.open_zarr(tile_cache / f"{cell_id}.zarr", consolidated=False)
        valid, scl = ds["valid"].values, ds["scl"].values
        for r in g.itertuples():
            win = np.s_[r.time_index, r.row : r.row + CHIP, r.col : r.col + CHIP]
            assert r.valid_fraction == valid[win].mean()
            assert r.cloud_fraction == np.isin(scl[win], [3, 8, 9, 10]).mean()
            assert r.item_id == str(ds["item_id"].values[r.time_index])
            assert r.datetime == TIMES[r.time_index] + "Z"


def test_window_bounds_are_the_pixel_footprints(manifest):
    _, df, _ = manifest
    x0 = {c: X0 + i * SIZE * RES for i, c in enumerate(CELLS)}
    assert (df["row"] % CHIP == 0).all() and (df["col"] % CHIP == 0).all()
    np.testing.assert_array_equal(df["minx"], df["cell_id"].map(x0) + df["col"] * RES)
    np.testing.assert_array_equal(df["maxy"], Y0 - df["row"] * RES)
    np.testing.assert_array_equal(df["maxx"] - df["minx"], CHIP * RES)
    np.testing.assert_array_equal(df["maxy"] - df["miny"], CHIP * RES)


def test_rows_below_min_valid_fraction_are_counted_out(tile_cache, manifest):
    _, df, audit = manifest
    # cell 0, time 1: the cloud over rows 8:40, cols 16:48 fully covers the window at (16, 16)
    cloudy = df[(df["cell_id"] == CELLS[0]) & (df["time_index"] == 1)]
    assert not ((cloudy["row"] == 16) & (cloudy["col"] == 16)).any()
    n_low = 0
    for cell_id in CELLS:
        valid = xr.open_zarr(tile_cache / f"{cell_id}.zarr", consolidated=False)["valid"].values
        for t in range(len(TIMES)):
            for r in range(0, SIZE, CHIP):
                for c in range(0, SIZE, CHIP):
                    n_low += valid[t, r : r + CHIP, c : c + CHIP].mean() < 0.5
    rows = audit["rows"]
    assert rows["candidates"] == len(CELLS) * len(TIMES) * (SIZE // CHIP) ** 2
    assert rows["dropped_min_valid"] == n_low > 0
    assert rows["kept_min_valid"] - rows["dropped_for_buffer"] == len(df)
    assert rows["train"] + rows["val"] == len(df)


# ------------------------------------------------------------------------------------ the split


def test_no_train_window_comes_within_the_buffer_of_a_val_window(manifest):
    _, df, audit = manifest
    w = windows(df)
    train = w[w["split"] == "train"][["minx", "miny", "maxx", "maxy"]].to_numpy()
    val = w[w["split"] == "val"][["minx", "miny", "maxx", "maxy"]].to_numpy()
    assert len(train) and len(val)
    distances = [gap(a, b) for a in train for b in val]
    assert min(distances) >= CHIP * RES  # default buffer: the chip size
    assert audit["buffer"] == CHIP and audit["buffer_m"] == {"EPSG:32633": CHIP * RES}
    assert audit["min_distance_train_val_m"] == min(distances)
    assert audit["windows"]["dropped_for_buffer"] > 0


def test_blocks_go_whole_to_one_split(manifest):
    _, df, audit = manifest
    w = windows(df)
    assert (w.groupby("block_id")["split"].nunique() == 1).all()
    # the block is the one holding the window centre, on a grid anchored at the CRS origin
    bx = np.floor((w["minx"] + w["maxx"]) / 2 / (BLOCK * RES)).astype(int)
    by = np.floor((w["miny"] + w["maxy"]) / 2 / (BLOCK * RES)).astype(int)
    assert list(w["block_id"]) == [f"EPSG:32633:{x}:{y}" for x, y in zip(bx, by, strict=True)]
    assert set(w.loc[w["split"] == "val", "block_id"]) == set(audit["blocks"]["val"])
    assert audit["n_blocks"]["val"] >= 1 and audit["n_blocks"]["train"] >= 1


def test_blocks_are_global_across_cells(tile_cache, tmp_path):
    # the cells meet at x = 500680, inside the block [500480, 501120): windows of both cells
    _, df, _ = run_manifest(tile_cache, tmp_path, block_size=64, buffer=0)
    cells_per_block = windows(df).groupby("block_id")["cell_id"].nunique()
    assert cells_per_block.max() == 2


def test_every_time_step_of_a_window_is_in_the_same_split(manifest):
    _, df, _ = manifest
    assert (df.groupby(["cell_id", "row", "col"])["split"].nunique() == 1).all()


def test_manifest_is_deterministic(tile_cache, manifest, tmp_path):
    run_manifest(tile_cache, tmp_path / "a")
    run_manifest(tile_cache, tmp_path / "b")
    for name in ("patches.parquet", "split_audit.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_seed_changes_the_split(tile_cache, manifest, tmp_path):
    _, _, audit = manifest
    val_blocks = {
        tuple(run_manifest(tile_cache, tmp_path / str(s), seed=s)[2]["blocks"]["val"])
        for s in range(1, 4)
    }
    assert val_blocks - {tuple(audit["blocks"]["val"])}


def test_zero_buffer_keeps_touching_windows_and_drops_overlapping_ones(tile_cache, tmp_path):
    _, _, audit = run_manifest(tile_cache, tmp_path / "touch", buffer=0)
    assert audit["windows"]["dropped_for_buffer"] == 0
    assert audit["min_distance_train_val_m"] == 0.0
    _, df, audit = run_manifest(tile_cache, tmp_path / "overlap", buffer=0, stride=CHIP // 2)
    assert audit["windows"]["dropped_for_buffer"] > 0
    w = windows(df)
    train = w[w["split"] == "train"][["minx", "miny", "maxx", "maxy"]].to_numpy()
    val = w[w["split"] == "val"][["minx", "miny", "maxx", "maxy"]].to_numpy()
    assert (rect_gaps(train, val) >= 0).all()  # no train window shares a pixel with a val window


def test_output_replaces_the_old_one_atomically(tile_cache, tmp_path):
    out = tmp_path / "manifests"
    out.mkdir()
    (out / "patches.parquet").write_text("old")
    run_manifest(tile_cache, out)
    assert sorted(p.name for p in out.iterdir()) == ["patches.parquet", "split_audit.json"]
    assert pd.read_parquet(out / "patches.parquet").shape[0] > 0


# ------------------------------------------------------------------------------------- errors


def test_a_single_block_asks_for_a_smaller_block_size(tile_cache, tmp_path):
    with pytest.raises(DataError, match=r"one spatial block.*lower patch_manifest.block_size"):
        patch_manifest.run(make_cfg(block_size=4096), cache=tile_cache, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_buffer_that_drops_every_train_window_is_refused(tile_cache, tmp_path):
    # with 32-pixel blocks and seed 0 every train window of the fixture touches a val window
    with pytest.raises(DataError, match=r"every train window lies within patch_manifest.buffer=16"):
        patch_manifest.run(make_cfg(block_size=32, seed=0), cache=tile_cache, out=tmp_path / "m")


def test_no_surviving_window_names_min_valid_fraction(tile_cache, tmp_path):
    # every scene has an invalid pixel, so no 64-pixel window is fully valid
    cfg = make_cfg(image_size=64, min_valid_fraction=1.0)
    with pytest.raises(DataError, match=r"min_valid_fraction=1.0: 0 of 6 .* candidates"):
        patch_manifest.run(cfg, cache=tile_cache, out=tmp_path / "m")


def test_chip_larger_than_a_cell_is_refused(tile_cache, tmp_path):
    with pytest.raises(ValueError, match=r"chip size 128 px \(model.image_size\) is larger than"):
        patch_manifest.run(make_cfg(image_size=128), cache=tile_cache, out=tmp_path / "m")


def test_missing_cache_names_the_stage_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"geogfm tile_cache"):
        patch_manifest.run(make_cfg(), cache=tmp_path / "nope", out=tmp_path / "m")


# ---------------------------------------------------------------------------- split functions


def test_assign_blocks_gives_the_exact_fraction_and_both_splits():
    blocks = [f"b{i}" for i in range(12)]
    for frac, n_val in ((0.25, 3), (0.01, 1), (0.99, 11)):
        a = assign_blocks(blocks, val_fraction=frac, seed=0)
        assert sum(s == "val" for s in a.values()) == n_val
    assert assign_blocks(blocks, val_fraction=0.5, seed=3) == assign_blocks(
        list(reversed(blocks)), val_fraction=0.5, seed=3
    )
    assert sorted(assign_blocks(["a", "b"], val_fraction=0.9, seed=0).values()) == ["train", "val"]
    with pytest.raises(ValueError, match="at least two spatial blocks"):
        assign_blocks(["a", "a"], val_fraction=0.5, seed=0)


def test_rect_gaps():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array(
        [
            [10.0, 0.0, 20.0, 10.0],  # touching
            [13.0, 14.0, 20.0, 20.0],  # diagonal: (3, 4) apart
            [5.0, 5.0, 20.0, 20.0],  # overlapping by 5
            [0.0, 30.0, 10.0, 40.0],  # 20 above
        ]
    )
    np.testing.assert_allclose(rect_gaps(a, b), [[0.0, 5.0, -5.0, 20.0]])


def test_mixed_resolutions_in_one_crs_are_refused():
    bounds = np.array([[0.0, 0.0, 10.0, 10.0], [100.0, 0.0, 110.0, 10.0]])
    with pytest.raises(DataError, match="different resolutions"):
        spatial_block_split(
            bounds,
            np.array(["EPSG:1", "EPSG:1"]),
            np.array([10.0, 20.0]),
            block_size=1,
            val_fraction=0.5,
            buffer=0,
            seed=0,
        )
