import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from _tile_cache_fixture import BANDS, SCALE, write_tile_cache

from geogfm.core.config import config_from_dict
from geogfm.core.errors import DataError
from geogfm.data.manifest import read_manifest, write_manifest
from geogfm.data.stats import N_BINS, histogram_percentiles
from geogfm.stages import channel_stats, patch_manifest

PERCENTILES = [0.0, 1.0, 2.0, 33.3, 50.0, 98.0, 99.0, 100.0]


@pytest.fixture(scope="module")
def tile_cache(tmp_path_factory):
    """The fixture tile cache, shared by this module's tests: read it, never modify it."""
    return write_tile_cache(tmp_path_factory.mktemp("tile_cache") / "cache")


def make_cfg(**pm):
    return config_from_dict(
        {
            "model": {"image_size": 16},
            "patch_manifest": {"block_size": 48, **pm},
            "channel_stats": {"percentiles": PERCENTILES},
        }
    )


def make_manifest(cache, out, **pm):
    patch_manifest.run(make_cfg(**pm), cache=cache, out=out)
    return out / "patches.parquet"


def run_stats(cache, manifest, out):
    channel_stats.run(make_cfg(), cache=cache, manifest=manifest, out=out)
    return json.loads(out.read_text())


def train_pixel_masks(cache, manifest):
    """{(cell, t): (H, W) bool} of the valid pixels inside at least one train window."""
    df = read_manifest(manifest)
    masks = {}
    for (cell, t), g in df[df["split"] == "train"].groupby(["cell_id", "time_index"]):
        valid = xr.open_zarr(cache / f"{cell}.zarr", consolidated=False)["valid"].values[t]
        union = np.zeros_like(valid)
        for r in g.itertuples():
            union[r.row : r.row + r.size, r.col : r.col + r.size] = True
        masks[cell, t] = union & valid
    return masks


def brute_force(cache, manifest):
    """Per-band DN values of the counted pixels, gathered with xarray."""
    values = [[] for _ in BANDS]
    for (cell, t), mask in train_pixel_masks(cache, manifest).items():
        dn = xr.open_zarr(cache / f"{cell}.zarr", consolidated=False)["reflectance"].values[t]
        for b in range(len(BANDS)):
            values[b].append(dn[b][mask])
    return [np.concatenate(v) for v in values]


@pytest.fixture(scope="module", params=[16, 8], ids=["stride16", "stride8"])
def computed(request, tile_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    manifest = make_manifest(tile_cache, root / "manifests", stride=request.param)
    return manifest, run_stats(tile_cache, manifest, root / "channel_stats.json")


def test_stats_equal_a_brute_force_computation(computed, tile_cache):
    # stride 8 overlaps windows: every pixel must still count once
    manifest, stats = computed
    values = brute_force(tile_cache, manifest)
    assert stats["bands"] == list(BANDS)
    assert stats["unit"] == "reflectance"
    for b, dn in enumerate(values):
        x = dn.astype(np.float64) * SCALE
        assert stats["count"][b] == dn.size > 0
        np.testing.assert_allclose(stats["mean"][b], x.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats["std"][b], x.std(), rtol=1e-10)  # ddof=0
        assert stats["min"][b] == dn.min() * SCALE
        assert stats["max"][b] == dn.max() * SCALE
        for p in PERCENTILES:
            expected = np.percentile(dn, p, method="inverted_cdf") * SCALE
            assert stats["percentiles"][str(p)][b] == expected, p


def test_source_and_method_are_recorded(computed):
    manifest, stats = computed
    df = read_manifest(manifest)
    train = df[df["split"] == "train"]
    assert stats["source"] == {
        "cells": sorted(set(train["cell_id"])),
        "split": "train",
        "windows": len(train),
        "scenes": train.groupby(["cell_id", "time_index"]).ngroups,
    }
    assert stats["method"]["percentiles"] == "inverted_cdf"


def test_invalid_and_non_train_pixels_do_not_change_the_stats(tmp_path):
    cache = write_tile_cache(tmp_path / "cache")
    manifest = make_manifest(cache, tmp_path / "manifests")
    before = run_stats(cache, manifest, tmp_path / "a.json")
    masks = train_pixel_masks(cache, manifest)
    rng = np.random.default_rng(1)
    for cell in sorted({c for c, _ in masks}):
        arr = zarr.open_group(cache / f"{cell}.zarr", mode="r+")["reflectance"]
        dn = arr[:]
        for t in range(dn.shape[0]):
            counted = masks.get((cell, t), np.zeros(dn.shape[2:], bool))
            noise = rng.integers(1, 60000, dn[t].shape, dtype=np.uint16)
            dn[t] = np.where(counted[None], dn[t], noise)  # val, dropped, invalid pixels changed
        arr[:] = dn
    assert run_stats(cache, manifest, tmp_path / "b.json") == before

    # a counted pixel does change them
    cell, t = next(iter(masks))
    r, c = np.argwhere(masks[cell, t])[0]
    arr = zarr.open_group(cache / f"{cell}.zarr", mode="r+")["reflectance"]
    arr[t, 0, r, c] = 60000
    assert run_stats(cache, manifest, tmp_path / "c.json")["max"][0] == 60000 * SCALE


def test_histogram_percentiles_match_numpy_inverted_cdf():
    rng = np.random.default_rng(0)
    ps = [0.0, 0.1, 1.0, 2.0, 25.0, 33.3, 50.0, 66.7, 98.0, 99.0, 99.9, 100.0]
    for n in (1, 2, 3, 7, 10, 100, 1000, 12345):
        x = rng.integers(0, 3000, n)
        hist = np.bincount(x, minlength=N_BINS)
        expected = np.percentile(x, ps, method="inverted_cdf")
        np.testing.assert_array_equal(histogram_percentiles(hist, ps), expected, err_msg=str(n))


def test_stats_are_deterministic_and_written_atomically(computed, tile_cache, tmp_path):
    manifest, _ = computed
    out = tmp_path / "stats" / "channel_stats.json"
    run_stats(tile_cache, manifest, out)
    first = out.read_bytes()
    run_stats(tile_cache, manifest, out)
    assert out.read_bytes() == first
    assert [p.name for p in out.parent.iterdir()] == ["channel_stats.json"]


def test_a_band_without_valid_pixels_is_an_error(tmp_path):
    cache = write_tile_cache(tmp_path / "cache")
    manifest = make_manifest(cache, tmp_path / "manifests")
    for cell in set(read_manifest(manifest)["cell_id"]):
        valid = zarr.open_group(cache / f"{cell}.zarr", mode="r+")["valid"]
        valid[:] = False
    with pytest.raises(DataError, match=r"\['blue', 'green', 'red'\] have zero valid pixels"):
        run_stats(cache, manifest, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_a_manifest_without_train_rows_is_an_error(computed, tile_cache, tmp_path):
    manifest, _ = computed
    df = read_manifest(manifest)
    only_val = tmp_path / "patches.parquet"
    write_manifest(df[df["split"] == "val"].reset_index(drop=True), only_val)
    with pytest.raises(DataError, match="no train rows"):
        run_stats(tile_cache, only_val, tmp_path / "s.json")


def test_missing_manifest_names_the_stage_that_makes_it(tile_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="geogfm patch_manifest"):
        run_stats(tile_cache, tmp_path / "patches.parquet", tmp_path / "s.json")


def test_manifest_from_another_cache_is_an_error(computed, tile_cache, tmp_path):
    manifest, _ = computed
    df = read_manifest(manifest)
    df["cell_id"] = "32633_0000000_0000000"
    other = tmp_path / "patches.parquet"
    write_manifest(pd.DataFrame(df), other)
    with pytest.raises(DataError, match=r"cell '32633_0000000_0000000' is not in the tile cache"):
        run_stats(tile_cache, other, tmp_path / "s.json")
