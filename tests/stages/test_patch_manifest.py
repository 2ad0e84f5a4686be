import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _tile_cache_fixture import CELLS, RES, SIZE, TIMES, X0, Y0, write_tile_cache

from geogfm.core.config import config_from_dict
from geogfm.core.errors import ConfigError, DataError
from geogfm.data import manifest as manifest_module
from geogfm.data.cache_reader import load_cache_index
from geogfm.data.manifest import MANIFEST_COLUMNS
from geogfm.data.split_audit import audit_manifest
from geogfm.data.splits import (
    SPLITS,
    assign_blocks,
    block_ids,
    min_gap,
    near_pairs,
    rect_gaps,
)
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


def footprints(w, split):
    return w[w["split"] == split][["minx", "miny", "maxx", "maxy"]].to_numpy()


def test_no_train_window_comes_within_the_buffer_of_a_val_window(manifest):
    _, df, audit = manifest
    w = windows(df)
    train, val = footprints(w, "train"), footprints(w, "val")
    assert len(train) and len(val)
    distances = [gap(a, b) for a in train for b in val]
    assert min(distances) >= CHIP * RES  # default buffer: the chip size
    assert audit["buffer"] == CHIP and audit["buffer_m"] == CHIP * RES
    assert audit["min_distance_m"]["train_val"] == min(distances)
    assert audit["windows"]["dropped_for_buffer"] > 0
    check = audit["independent_audit"]
    assert check["passed"] and check["min_distance_m"]["train_val"] == min(distances)
    assert check["pairs_within_buffer"] == {"train_val": 0, "train_test": 0, "val_test": 0}


def test_a_test_split_is_buffered_from_both_others(tile_cache, tmp_path, manifest):
    _, df, audit = run_manifest(tile_cache, tmp_path, test_fraction=0.2)
    w = windows(df)
    assert set(w["split"]) == set(SPLITS)
    assert (w.groupby("block_id")["split"].nunique() == 1).all()
    for i, lo in enumerate(SPLITS):
        for hi in SPLITS[i + 1 :]:
            d = min(gap(a, b) for a in footprints(w, lo) for b in footprints(w, hi))
            assert d >= CHIP * RES, (lo, hi)
            assert audit["min_distance_m"][f"{lo}_{hi}"] == d
    # with the same seed, adding a test split leaves the val blocks as they were
    assert audit["blocks"]["val"] == manifest[2]["blocks"]["val"]
    assert audit["n_blocks"]["test"] >= 1 and audit["rows"]["test"] > 0


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


def test_blocks_are_global_across_cells(manifest):
    # the cells meet at x = 500680, inside the block [500480, 501120) of 64 px: one block id for
    # windows of both cells, so both go to one split
    cx = np.array([500680.0 - 80, 500680.0 + 80])  # window centres in cell 0 and cell 1
    ids = block_ids(cx, np.full(2, Y0 - 320.0), crs="EPSG:32633", block_m=64 * RES)
    assert ids[0] == ids[1] == "EPSG:32633:782:7812"
    _, df, _ = manifest
    assert set(df["block_id"].str.split(":").str.len()) == {4}  # "EPSG:<code>:<bx>:<by>"


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


def test_windows_exactly_one_buffer_apart_are_kept(tile_cache, tmp_path):
    # stride = chip: the nearest train window beyond the buffer is exactly one chip away
    _, df, audit = run_manifest(tile_cache, tmp_path, stride=CHIP)
    assert audit["min_distance_m"]["train_val"] == CHIP * RES
    _, df, audit = run_manifest(tile_cache, tmp_path / "wide", buffer=2 * CHIP, stride=CHIP // 2)
    w = windows(df)
    assert (rect_gaps(footprints(w, "train"), footprints(w, "val")) >= 2 * CHIP * RES).all()


def test_max_cloud_fraction_drops_cloudy_rows(tile_cache, manifest, tmp_path):
    _, df, _ = manifest
    _, clear, audit = run_manifest(tile_cache, tmp_path, max_cloud_fraction=0.05)
    assert (clear["cloud_fraction"] <= 0.05).all()
    assert (df["cloud_fraction"] > 0.05).any()  # the fixture has cloudy kept rows by default
    assert audit["max_cloud_fraction"] == 0.05


def test_output_replaces_the_old_one_atomically(tile_cache, tmp_path):
    out = tmp_path / "manifests"
    out.mkdir()
    (out / "patches.parquet").write_text("old")
    run_manifest(tile_cache, out)
    assert sorted(p.name for p in out.iterdir()) == ["patches.parquet", "split_audit.json"]
    assert pd.read_parquet(out / "patches.parquet").shape[0] > 0


# ------------------------------------------------------------------------------------- errors


def test_a_single_block_asks_for_a_smaller_block_size(tile_cache, tmp_path):
    with pytest.raises(
        DataError,
        match=r"1 spatial block\(s\) .* too few for 2 splits; lower patch_manifest.block_size",
    ):
        patch_manifest.run(make_cfg(block_size=4096), cache=tile_cache, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_buffer_that_drops_every_train_window_is_refused(tile_cache, tmp_path):
    # with 32-pixel blocks and seed 0 every train window of the fixture touches a val window
    with pytest.raises(DataError, match=r"every train window lies within patch_manifest.buffer=16"):
        patch_manifest.run(make_cfg(block_size=32, seed=0), cache=tile_cache, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_buffer_smaller_than_the_chip_is_refused(tile_cache, tmp_path):
    with pytest.raises(ConfigError, match=r"patch_manifest.buffer = 8 px is smaller than .* 16"):
        patch_manifest.run(make_cfg(buffer=8), cache=tile_cache, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match=r"patch_manifest.buffer = 0: .* greater than or equal"):
        make_cfg(buffer=0)


def test_zero_patches_after_filtering_names_the_thresholds(tile_cache, tmp_path):
    # bad input: every scene has an invalid pixel, so no 64-pixel window is fully valid
    cfg = make_cfg(image_size=64, min_valid_fraction=1.0)
    with pytest.raises(
        DataError, match=r"min_valid_fraction=1.0 and .*max_cloud_fraction=1.0: 0 of 6 .* kept"
    ):
        patch_manifest.run(cfg, cache=tile_cache, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_chip_larger_than_a_cell_is_refused(tile_cache, tmp_path):
    # bad input: a patch larger than a cell
    with pytest.raises(ValueError, match=r"chip size 128 px \(model.image_size\) is larger than"):
        patch_manifest.run(make_cfg(image_size=128), cache=tile_cache, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_cells_on_two_grids_are_refused(tile_cache, tmp_path):
    cache = shutil.copytree(tile_cache, tmp_path / "cache")
    index = json.loads((cache / "index.json").read_text())
    index["cells"][1]["crs"] = "EPSG:32634"
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"cells on 2 grids .* one tile_cache.crs"):
        patch_manifest.run(make_cfg(), cache=cache, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------- the audit


def nearest_train_location(df, split="val"):
    """Index of a train row whose window is nearest to a window of ``split``."""
    w = windows(df)
    train = w[w["split"] == "train"]
    d = rect_gaps(footprints(w, "train"), footprints(w, split)).min(axis=1)
    loc = train.iloc[int(np.argmin(d))]
    return (df["cell_id"] == loc["cell_id"]) & (df["row"] == loc["row"]) & (df["col"] == loc["col"])


def test_the_audit_passes_the_written_manifest(manifest, tile_cache):
    _, df, audit = manifest
    report = audit_manifest(df, load_cache_index(tile_cache), buffer=CHIP)
    assert report == audit["independent_audit"]


def test_the_audit_fails_a_leaky_manifest(manifest, tile_cache):
    # relabel the train window nearest to val as val: it now lies next to train windows
    _, df, _ = manifest
    leaky = df.copy()
    leaky.loc[nearest_train_location(df), "split"] = "val"
    leaky.loc[
        leaky["block_id"].isin(leaky.loc[nearest_train_location(df), "block_id"]), "split"
    ] = "val"  # its whole block, so only the distance check can catch it
    with pytest.raises(DataError, match=r"val/train patch pair\(s\) closer than the 160 m buffer"):
        audit_manifest(leaky, load_cache_index(tile_cache), buffer=CHIP)


def test_the_audit_counts_patches_sharing_pixels(tile_cache, tmp_path):
    _, df, _ = run_manifest(tile_cache, tmp_path, stride=CHIP // 2)  # overlapping windows
    leaky = df.copy()
    block = df.loc[nearest_train_location(df), "block_id"].iloc[0]
    leaky.loc[leaky["block_id"] == block, "split"] = "val"
    with pytest.raises(DataError, match=r"val/train patch pair\(s\) .*\(([1-9]\d*) sharing"):
        audit_manifest(leaky, load_cache_index(tile_cache), buffer=CHIP)


def test_the_audit_checks_footprints_and_one_split_per_location(manifest, tile_cache):
    _, df, _ = manifest
    index = load_cache_index(tile_cache)
    moved = df.copy()
    moved.loc[0, "minx"] += RES
    with pytest.raises(DataError, match=r"1 row\(s\) whose bounds are not their window's"):
        audit_manifest(moved, index, buffer=CHIP)
    mixed = df.copy()
    first_train = mixed.index[mixed["split"] == "train"][0]
    mixed.loc[first_train, "split"] = "val"  # one time step of a train location
    with pytest.raises(DataError, match=r"cell_id/row/col value\(s\) in more than one split"):
        audit_manifest(mixed, index, buffer=CHIP)


def test_a_leaky_split_fails_the_stage_and_writes_nothing(tile_cache, tmp_path, monkeypatch):
    # a split that forgets its buffer: the audit of the written rows must stop the stage
    real = manifest_module.spatial_block_split

    def no_buffer(*args, **kwargs):
        split = real(*args, **kwargs)
        split.dropped[:] = False
        return split

    monkeypatch.setattr(manifest_module, "spatial_block_split", no_buffer)
    out = tmp_path / "m"
    with pytest.raises(DataError, match=r"split audit failed, so the manifest was not written"):
        patch_manifest.run(make_cfg(), cache=tile_cache, out=out)
    assert not out.exists() or not any(out.iterdir())


def test_missing_cache_names_the_stage_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"geogfm tile_cache"):
        patch_manifest.run(make_cfg(), cache=tmp_path / "nope", out=tmp_path / "m")


# ---------------------------------------------------------------------------- split functions


def test_assign_blocks_gives_the_exact_fraction_and_every_split():
    blocks = [f"b{i}" for i in range(12)]
    for frac, n_val in ((0.25, 3), (0.01, 1), (0.99, 11)):
        a = assign_blocks(blocks, val_fraction=frac, seed=0)
        assert sum(s == "val" for s in a.values()) == n_val
    assert assign_blocks(blocks, val_fraction=0.5, seed=3) == assign_blocks(
        list(reversed(blocks)), val_fraction=0.5, seed=3
    )
    assert sorted(assign_blocks(["a", "b"], val_fraction=0.9, seed=0).values()) == ["train", "val"]
    three = assign_blocks(blocks, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert sorted(three.values()).count("test") == 3 and sorted(three.values()).count("val") == 3
    assert {b for b, s in three.items() if s == "val"} == {
        b for b, s in assign_blocks(blocks, val_fraction=0.25, seed=0).items() if s == "val"
    }
    few = assign_blocks(["a", "b", "c"], val_fraction=0.9, test_fraction=0.05, seed=0)
    assert sorted(few.values()) == ["test", "train", "val"]
    with pytest.raises(DataError, match="at least 2 spatial blocks"):
        assign_blocks(["a", "a"], val_fraction=0.5, seed=0)
    with pytest.raises(DataError, match="at least 3 spatial blocks"):
        assign_blocks(["a", "b"], val_fraction=0.5, test_fraction=0.1, seed=0)


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


def random_rects(rng, n, extent=1000.0):
    lo = rng.uniform(0, extent, (n, 2))
    side = rng.uniform(1, 80, (n, 2))
    return np.concatenate([lo, lo + side], axis=1)


def test_near_pairs_finds_exactly_the_pairs_brute_force_finds():
    rng = np.random.default_rng(0)
    for n, m, radius in ((1, 1, 5.0), (50, 70, 30.0), (300, 200, 120.0), (200, 0, 10.0)):
        a, b = random_rects(rng, n), random_rects(rng, m)
        ia, ib, d = near_pairs(a, b, radius, max_pairs=97)  # small batches: the batching too
        gaps = rect_gaps(a, b) if m else np.zeros((n, 0))
        ea, eb = np.nonzero(gaps < radius)
        np.testing.assert_array_equal(ia, ea)
        np.testing.assert_array_equal(ib, eb)
        np.testing.assert_allclose(d, gaps[ea, eb])
        if m:
            assert min_gap(a, b) == gaps.min()
    assert min_gap(np.zeros((0, 4)), random_rects(rng, 3)) == math.inf
