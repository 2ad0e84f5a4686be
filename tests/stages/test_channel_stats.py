import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from _tile_cache_fixture import BANDS, SCALE, write_tile_cache

from geogfm.core.config import config_from_dict
from geogfm.core.errors import DataError
from geogfm.data.cache_reader import cache_fingerprint, check_stats_match, load_cache_index
from geogfm.data.manifest import read_manifest, write_manifest
from geogfm.data.stats import (
    N_BINS,
    Moments,
    histogram_percentiles,
    summarize_channels,
    union_mask,
)
from geogfm.stages import channel_stats, patch_manifest

PERCENTILES = [0.0, 1.0, 2.0, 33.3, 50.0, 98.0, 99.0, 100.0]


@pytest.fixture(scope="module")
def tile_cache(tmp_path_factory):
    """The fixture tile cache, shared by this module's tests: read it, never modify it."""
    return write_tile_cache(tmp_path_factory.mktemp("tile_cache") / "cache")


def make_cfg(workers=1, **pm):
    return config_from_dict(
        {
            "model": {"image_size": 16},
            "patch_manifest": {"block_size": 48, **pm},
            "channel_stats": {"percentiles": PERCENTILES, "workers": workers},
        }
    )


def make_manifest(cache, out, **pm):
    patch_manifest.run(make_cfg(**pm), cache=cache, out=out)
    return out / "patches.parquet"


def run_stats(cache, manifest, out, workers=1):
    channel_stats.run(make_cfg(workers), cache=cache, manifest=manifest, out=out)
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


def without_source(stats):
    return {k: v for k, v in stats.items() if k != "source"}


# three manifests: plain, overlapping windows (a pixel in many windows), and with a test split
CASES = {"stride16": {"stride": 16}, "stride8": {"stride": 8}, "test_split": {"test_fraction": 0.2}}


@pytest.fixture(scope="module", params=list(CASES))
def computed(request, tile_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    manifest = make_manifest(tile_cache, root / "manifests", **CASES[request.param])
    return manifest, run_stats(tile_cache, manifest, root / "channel_stats.json", workers=2)


# ------------------------------------------------------------------ the numbers, against numpy


def test_stats_equal_numpy_on_the_concatenated_valid_train_pixels(computed, tile_cache):
    manifest, stats = computed
    values = brute_force(tile_cache, manifest)
    assert stats["bands"] == list(BANDS)
    assert stats["unit"] == "reflectance"
    for b, dn in enumerate(values):
        x = dn.astype(np.float64) * SCALE
        assert stats["count"][b] == dn.size > 0
        np.testing.assert_allclose(stats["mean"][b], x.mean(), rtol=1e-12)  # asked: 1e-6
        np.testing.assert_allclose(stats["std"][b], x.std(), rtol=1e-10)  # ddof=0; asked: 1e-6
        assert stats["min"][b] == dn.min() * SCALE
        assert stats["max"][b] == dn.max() * SCALE
        for p in PERCENTILES:
            # exact, so within one bin: the inverted_cdf order statistic of the DN (0 DN off)
            expected = np.percentile(dn, p, method="inverted_cdf") * SCALE
            assert stats["percentiles"][str(p)][b] == expected, p


def test_only_train_windows_are_read(computed):
    manifest, stats = computed
    df = read_manifest(manifest)
    train = df[df["split"] == "train"]
    assert set(df["split"]) > {"train"}  # val (and test) rows exist and are left out
    assert stats["source"]["split"] == "train"
    assert stats["source"]["windows"] == len(train)
    assert stats["source"]["cells"] == sorted(set(train["cell_id"]))
    assert stats["source"]["scenes"] == train.groupby(["cell_id", "time_index"]).ngroups


def test_the_source_records_the_cache_and_manifest_hashes(computed, tile_cache):
    import hashlib

    manifest, stats = computed
    assert stats["source"]["cache_fingerprint"] == cache_fingerprint(tile_cache)
    assert stats["source"]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert stats["method"]["percentiles"].startswith("inverted_cdf")
    assert stats["method"]["percentile_error_bound"] == {
        "dn": 0,
        "reflectance": 0.0,
        "bin_width": SCALE,
    }


def test_invalid_and_non_train_pixels_do_not_change_the_stats(tmp_path):
    cache = write_tile_cache(tmp_path / "cache")
    manifest = make_manifest(cache, tmp_path / "manifests", test_fraction=0.2)
    before = run_stats(cache, manifest, tmp_path / "a.json")
    masks = train_pixel_masks(cache, manifest)
    rng = np.random.default_rng(1)
    for cell in sorted({c for c, _ in masks}):
        arr = zarr.open_group(cache / f"{cell}.zarr", mode="r+")["reflectance"]
        dn = arr[:]
        for t in range(dn.shape[0]):
            counted = masks.get((cell, t), np.zeros(dn.shape[2:], bool))
            noise = rng.integers(1, 60000, dn[t].shape, dtype=np.uint16)
            dn[t] = np.where(counted[None], dn[t], noise)  # val, test, dropped, invalid changed
        arr[:] = dn
    after = run_stats(cache, manifest, tmp_path / "b.json")
    assert without_source(after) == without_source(before)

    # a counted pixel does change them
    cell, t = next(iter(masks))
    r, c = np.argwhere(masks[cell, t])[0]
    arr = zarr.open_group(cache / f"{cell}.zarr", mode="r+")["reflectance"]
    arr[t, 0, r, c] = 60000
    assert run_stats(cache, manifest, tmp_path / "c.json")["max"][0] == 60000 * SCALE


@pytest.mark.parametrize("chunks", [(1, 3, 64, 64), (2, 3, 16, 32), (3, 1, 24, 40)])
def test_any_chunk_layout_gives_the_same_stats(chunks, computed, tile_cache, tmp_path):
    # time chunks of several steps, band chunks, and chunks that do not divide the cell
    manifest, stats = computed
    other = write_tile_cache(tmp_path / "cache", chunks=chunks)
    again = run_stats(other, manifest, tmp_path / "s.json", workers=3)
    assert again["count"] == stats["count"]
    for key in ("min", "max", "percentiles"):
        assert again[key] == stats[key]
    np.testing.assert_allclose(again["mean"], stats["mean"], rtol=1e-13)
    np.testing.assert_allclose(again["std"], stats["std"], rtol=1e-12)


def test_the_result_does_not_depend_on_the_number_of_workers(computed, tile_cache, tmp_path):
    manifest, _ = computed
    outs = [tmp_path / f"w{w}.json" for w in (1, 2, 5)]
    for w, out in zip((1, 2, 5), outs, strict=True):
        run_stats(tile_cache, manifest, out, workers=w)
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()


def test_each_chunk_with_train_windows_is_read_once(tile_cache):
    index = load_cache_index(tile_cache)
    rows = read_manifest(make_manifest(tile_cache, tile_cache.parent / "m", stride=8))
    train = rows[rows["split"] == "train"]
    summary = summarize_channels(index, train, workers=2)
    chunks = set()  # (cell, t, chunk row, chunk col) touched by a train window; 32 px chunks
    for r in train.itertuples():
        for y in range(r.row // 32, (r.row + r.size - 1) // 32 + 1):
            for x in range(r.col // 32, (r.col + r.size - 1) // 32 + 1):
                chunks.add((r.cell_id, r.time_index, y, x))
    assert summary.reads == len(chunks)
    assert summary.scenes == train.groupby(["cell_id", "time_index"]).ngroups


def test_reading_through_zarr_gives_the_same_summary(tile_cache, monkeypatch):
    # the direct chunk decoding and zarr's own reads (any other layout) count the same pixels
    index = load_cache_index(tile_cache)
    train = read_manifest(make_manifest(tile_cache, tile_cache.parent / "m2", stride=8))
    train = train[train["split"] == "train"]
    direct = summarize_channels(index, train, workers=2)
    monkeypatch.setattr("geogfm.data.cache_reader._direct_decoder", lambda meta: None)
    through_zarr = summarize_channels(index, train, workers=2)
    np.testing.assert_array_equal(direct.hist, through_zarr.hist)
    np.testing.assert_array_equal(direct.moments.m2, through_zarr.moments.m2)
    assert direct.reads == through_zarr.reads


def test_summaries_merge_exactly(tile_cache):
    # two passes over disjoint pixel sets merge into the pass over both
    index = load_cache_index(tile_cache)
    train = read_manifest(make_manifest(tile_cache, tile_cache.parent / "m3"))
    train = train[train["split"] == "train"]
    first, second = (train[train["time_index"] == 0], train[train["time_index"] > 0])
    whole = summarize_channels(index, train)
    merged = summarize_channels(index, first).merge(summarize_channels(index, second))
    np.testing.assert_array_equal(merged.hist, whole.hist)
    np.testing.assert_array_equal(merged.moments.mean, whole.moments.mean)
    np.testing.assert_array_equal(merged.moments.m2, whole.moments.m2)
    assert (merged.reads, merged.scenes) == (whole.reads, whole.scenes)


def test_stats_are_deterministic_and_written_atomically(computed, tile_cache, tmp_path):
    manifest, _ = computed
    out = tmp_path / "stats" / "channel_stats.json"
    run_stats(tile_cache, manifest, out)
    first = out.read_bytes()
    run_stats(tile_cache, manifest, out)
    assert out.read_bytes() == first
    assert [p.name for p in out.parent.iterdir()] == ["channel_stats.json"]


# ------------------------------------------------------------------------- the building blocks


def test_chan_merge_matches_numpy_on_any_split():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65536, (3, 5000)).astype(np.int64)
    for cuts in ([2500], [1, 2, 3], [17, 4000, 4999], list(range(100, 5000, 700))):
        m = Moments.empty(3)
        for part in np.split(x, cuts, axis=1):
            s = [int(v) for v in part.sum(axis=1)]
            ss = [int(v) for v in (part * part).sum(axis=1)]
            m = m.merge(Moments.of_sums(part.shape[1], s, ss))
        assert (m.count == 5000).all()
        np.testing.assert_allclose(m.mean, x.mean(axis=1), rtol=1e-14)
        np.testing.assert_allclose(m.m2 / 5000, x.var(axis=1), rtol=1e-12)


def test_moments_of_a_histogram_are_the_exact_moments_rounded_once():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 65536, (4, 20000))
    hist = np.stack([np.bincount(row, minlength=N_BINS) for row in x])
    m = Moments.of_histogram(hist)
    for b, row in enumerate(x.tolist()):
        n, s, q = len(row), sum(row), sum(v * v for v in row)
        assert m.count[b] == n
        assert m.mean[b] == s / n  # Python ints: the exact value rounded once
        assert m.m2[b] == (n * q - s * s) / n


def test_moments_of_a_histogram_stay_exact_past_the_uint64_range():
    # 5e9 pixels at DN 65535 and 3e9 at DN 1: n * 65535**2 overflows uint64, Python ints do not
    hist = np.zeros((2, N_BINS), np.int64)
    hist[0, 65535], hist[0, 1] = 5_000_000_000, 3_000_000_000
    hist[1, 7] = 1
    m = Moments.of_histogram(hist)
    n, s = 8_000_000_000, 5_000_000_000 * 65535 + 3_000_000_000
    q = 5_000_000_000 * 65535**2 + 3_000_000_000
    assert m.count.tolist() == [n, 1]
    assert m.mean.tolist() == [s / n, 7.0]
    assert m.m2.tolist() == [(n * q - s * s) / n, 0.0]


def test_moments_of_sums_with_no_pixels_are_zero():
    m = Moments.of_sums([0, 2], [0, 6], [0, 20])
    assert m.count.tolist() == [0, 2] and m.mean.tolist() == [0.0, 3.0]
    assert m.m2.tolist() == [0.0, 2.0]


def test_union_mask_matches_painting_the_windows():
    rng = np.random.default_rng(3)
    for n in (0, 1, 5, 40, 600):  # painted one by one, and through the difference array
        rows, cols = rng.integers(-20, 50, n), rng.integers(-20, 70, n)
        sizes = rng.integers(1, 30, n)
        expected = np.zeros((40, 60), bool)
        for r, c, s in zip(rows, cols, sizes, strict=True):
            expected[max(r, 0) : max(r + s, 0), max(c, 0) : max(c + s, 0)] = True
        np.testing.assert_array_equal(union_mask(rows, cols, sizes, (40, 60)), expected)


def test_histogram_percentiles_match_numpy_inverted_cdf():
    rng = np.random.default_rng(0)
    ps = [0.0, 0.1, 1.0, 2.0, 25.0, 33.3, 50.0, 66.7, 98.0, 99.0, 99.9, 100.0]
    for n in (1, 2, 3, 7, 10, 100, 1000, 12345):
        x = rng.integers(0, 3000, n)
        hist = np.bincount(x, minlength=N_BINS)
        expected = np.percentile(x, ps, method="inverted_cdf")
        np.testing.assert_array_equal(histogram_percentiles(hist, ps), expected, err_msg=str(n))


# ------------------------------------------------------------- the cache fingerprint and check


def test_fingerprint_is_stable_and_survives_a_copy(tile_cache, tmp_path):
    fp = cache_fingerprint(tile_cache)
    assert len(fp) == 64 and fp == cache_fingerprint(tile_cache)
    copy = shutil.copytree(tile_cache, tmp_path / "elsewhere" / "cache")
    (copy / f"{load_cache_index(copy).cells[0].id}.zarr" / ".scratch").write_text("ignored")
    assert cache_fingerprint(copy) == fp
    assert cache_fingerprint(write_tile_cache(tmp_path / "rebuilt")) == fp  # same bytes


def _edit_index(cache):
    index = json.loads((cache / "index.json").read_text())
    index["nodata"] = 1
    (cache / "index.json").write_text(json.dumps(index))


def _edit_item_ids(cache):  # a 1-D coordinate: same length, other content
    cell = load_cache_index(cache).cells[0].id
    ids = zarr.open_group(cache / f"{cell}.zarr", mode="r+")["item_id"]
    ids[0] = str(ids[0]).replace("S2B", "S2A")


def _edit_pixels(cache):  # a data chunk re-encoded with other pixels
    cell = load_cache_index(cache).cells[1].id
    zarr.open_group(cache / f"{cell}.zarr", mode="r+")["reflectance"][0, 0, :8, :8] = 7


def _edit_attrs(cache):
    cell = load_cache_index(cache).cells[0].id
    zarr.open_group(cache / f"{cell}.zarr", mode="r+")["reflectance"].attrs["scale"] = 2e-4


@pytest.mark.parametrize("edit", [_edit_index, _edit_item_ids, _edit_pixels, _edit_attrs])
def test_fingerprint_changes_with_the_cache(edit, tile_cache, tmp_path):
    cache = shutil.copytree(tile_cache, tmp_path / "cache")
    before = cache_fingerprint(cache)
    edit(cache)
    assert cache_fingerprint(cache) != before


def test_check_stats_match_accepts_the_stats_of_this_cache(computed, tile_cache):
    manifest, stats = computed
    fp = cache_fingerprint(tile_cache)
    assert check_stats_match(stats, tile_cache) == fp
    path = manifest.parent.parent / "channel_stats.json"
    assert check_stats_match(path, tile_cache) == fp
    assert check_stats_match(str(path), str(tile_cache)) == fp


def test_stats_of_another_cache_are_refused_naming_both_hashes(computed, tile_cache, tmp_path):
    # bad input: statistics that do not match the cache being loaded
    _, stats = computed
    cache = shutil.copytree(tile_cache, tmp_path / "cache")
    _edit_pixels(cache)
    old, new = stats["source"]["cache_fingerprint"], cache_fingerprint(cache)
    with pytest.raises(DataError, match=rf"fingerprint {old}.* has fingerprint {new}") as err:
        check_stats_match(stats, cache)
    assert "rerun channel_stats" in str(err.value)


def test_stats_without_a_fingerprint_are_refused(computed, tile_cache, tmp_path):
    _, stats = computed
    old = {**stats, "source": {k: v for k, v in stats["source"].items() if "fingerprint" not in k}}
    with pytest.raises(DataError, match=r"record no cache fingerprint.*rerun channel_stats"):
        check_stats_match(old, tile_cache)
    with pytest.raises(FileNotFoundError, match=r"rerun channel_stats"):
        check_stats_match(tmp_path / "missing.json", tile_cache)


# ------------------------------------------------------------------------------------ errors


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
    assert not (tmp_path / "s.json").exists()


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


def test_a_window_outside_its_cell_is_an_error(computed, tile_cache, tmp_path):
    manifest, _ = computed
    df = read_manifest(manifest)
    df.loc[df["split"] == "train", "row"] += 1000
    other = tmp_path / "patches.parquet"
    write_manifest(df, other)
    with pytest.raises(DataError, match=r"windows outside cell .* rerun `geogfm patch_manifest`"):
        run_stats(tile_cache, other, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()
