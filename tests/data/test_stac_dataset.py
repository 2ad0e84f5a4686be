"""StacPatchDataset: direct chunk reads equal zarr's, units, multi-date grouping and sampling."""

import re

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr
from _tile_cache_fixture import BANDS, CELLS, SCALE, TIMES, write_tile_cache
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from geogfm.core.config import config_from_dict
from geogfm.core.errors import DataError
from geogfm.data.datasets.stac_dataset import StacPatchDataset
from geogfm.data.manifest import read_manifest
from geogfm.data.transforms.temporal_sampling import FixedStride, RandomK
from geogfm.data.zarr_windows import ZarrWindows
from geogfm.stages import patch_manifest

CHIP = 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac_dataset")
    cache = write_tile_cache(root / "cache")
    cfg = config_from_dict(
        {"model": {"image_size": CHIP}, "patch_manifest": {"block_size": 48, "stride": 8}}
    )
    patch_manifest.run(cfg, cache=cache, out=root / "manifests")
    return {"cache": cache, "manifest": root / "manifests" / "patches.parquet"}


# ------------------------------------------------------------------------ direct chunk reads


@pytest.mark.parametrize(
    "compressors",
    [[ZstdCodec()], [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")], [GzipCodec()], None],
    ids=["zstd", "blosc", "gzip", "raw"],
)
def test_windows_equal_zarr_reads_across_chunk_edges_and_codecs(tmp_path, compressors):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 60000, (3, 5, 40, 50), dtype=np.uint16)
    data[1, :, 16:32, 16:32] = 0  # an all-fill chunk: zarr does not write it
    arr = zarr.create_array(
        tmp_path / "a.zarr",
        shape=data.shape,
        chunks=(1, 5, 16, 16),
        dtype="uint16",
        compressors=compressors,
        fill_value=0,
    )
    arr[:] = data
    assert not (tmp_path / "a.zarr" / "c" / "1" / "0" / "1" / "1").exists()
    reader = ZarrWindows(zarr.open_array(tmp_path / "a.zarr", mode="r"), cache_bytes=0)
    assert reader._decode is not None  # the fast path, not zarr's indexing
    for t, r, c, s in [(0, 0, 0, 16), (1, 10, 12, 20), (2, 24, 34, 16), (1, 16, 16, 16)]:
        for select in (slice(None), slice(1, 4), np.array([4, 0, 2])):
            got = reader.read(t, r, c, s, select)
            np.testing.assert_array_equal(got, data[t][select][:, r : r + s, c : c + s])


def test_sharded_arrays_are_read_through_zarr(tmp_path):
    data = np.arange(2 * 40 * 40, dtype=np.uint16).reshape(2, 40, 40)
    arr = zarr.create_array(
        tmp_path / "s.zarr", shape=data.shape, chunks=(1, 8, 8), shards=(1, 16, 16), dtype="uint16"
    )
    arr[:] = data
    reader = ZarrWindows(zarr.open_array(tmp_path / "s.zarr", mode="r"), cache_bytes=0)
    assert reader._decode is None
    np.testing.assert_array_equal(reader.read(1, 5, 7, 20, slice(None)), data[1, 5:25, 7:27])


def test_decoded_chunks_are_kept_within_the_budget(tmp_path):
    data = np.ones((1, 2, 64, 64), dtype=np.uint16)
    arr = zarr.create_array(
        tmp_path / "b.zarr", shape=data.shape, chunks=(1, 2, 16, 16), dtype="u2"
    )
    arr[:] = data
    chunk_bytes = 2 * 16 * 16 * 2
    reader = ZarrWindows(
        zarr.open_array(tmp_path / "b.zarr", mode="r"), cache_bytes=3 * chunk_bytes
    )
    for c in range(0, 64, 16):  # four chunks through a three-chunk budget
        reader.read(0, 0, c, 16, slice(None))
    assert list(reader._cache) == [(0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 3)]
    assert reader._held == 3 * chunk_bytes


# ---------------------------------------------------------------------------- single-date


def test_single_date_samples_equal_the_cache_in_both_units(cache):
    rows = read_manifest(cache["manifest"])
    crossing = rows[(rows["row"] % 32 == 24) | (rows["col"] % 32 == 24)]  # over 2+ chunks
    assert len(crossing) > 0
    bands = ["red", "blue"]
    refl = StacPatchDataset(crossing, cache["cache"], split=None, bands=bands)
    dn = StacPatchDataset(crossing, cache["cache"], split=None, bands=bands, units="dn")
    for i in range(len(refl)):
        a, b, row = refl[i], dn[i], crossing.iloc[i]
        xds = xr.open_zarr(cache["cache"] / f"{row['cell_id']}.zarr", consolidated=False)
        win = {"y": slice(row["row"], row["row"] + CHIP), "x": slice(row["col"], row["col"] + CHIP)}
        ref = xds["reflectance"].isel(time=row["time_index"], **win).sel(band=bands).values
        assert b["image"].dtype == torch.uint16 and a["image"].dtype == torch.float32
        np.testing.assert_array_equal(b["image"].numpy(), ref)
        np.testing.assert_allclose(a["image"].numpy(), ref.astype(np.float32) * np.float32(SCALE))
        valid = xds["valid"].isel(time=row["time_index"], **win).values
        np.testing.assert_array_equal(a["valid"].numpy(), valid)
        assert a["cell"] == row["cell_id"] and a["time_index"] == row["time_index"]
        expected = pd.Timestamp(row["datetime"]).timestamp()
        assert a["time"].dtype == torch.int64 and int(a["time"]) == expected


def test_unknown_units_and_splits_are_refused(cache):
    with pytest.raises(ValueError, match="units must be"):
        StacPatchDataset(cache["manifest"], cache["cache"], split=None, bands=["red"], units="x")
    with pytest.raises(ValueError, match="split must be one of"):
        StacPatchDataset(cache["manifest"], cache["cache"], split="test", bands=["red"])


# ----------------------------------------------------------------------------- multi-date


def test_multi_date_samples_group_a_window_across_dates(cache):
    rows = read_manifest(cache["manifest"])
    ds = StacPatchDataset(
        rows,
        cache["cache"],
        split=None,
        bands=list(BANDS),
        temporal=FixedStride(2),
        random_frames=False,
    )
    windows = rows.groupby(["cell_id", "row", "col"])["time_index"].nunique()
    assert len(ds) == int((windows >= 2).sum())
    s = ds[0]
    assert s["image"].shape == (2, len(BANDS), CHIP, CHIP)
    assert s["valid"].shape == (2, CHIP, CHIP)
    assert s["time"].shape == (2,) and bool(s["time"][0] < s["time"][1])
    cell, r, c = re.fullmatch(r"(.+)_r(\d{5})_c(\d{5})", s["patch_id"]).groups()
    assert cell == s["cell"]
    r, c = int(r), int(c)
    here = (rows["cell_id"] == cell) & (rows["row"] == r) & (rows["col"] == c)
    for k, t in enumerate(s["time_index"].tolist()):  # each frame: its own date
        single = StacPatchDataset(
            rows[here & (rows["time_index"] == t)].reset_index(drop=True),
            cache["cache"],
            split=None,
            bands=list(BANDS),
        )[0]
        torch.testing.assert_close(s["image"][k], single["image"])
        torch.testing.assert_close(s["valid"][k], single["valid"])


def test_random_frames_follow_the_torch_seed(cache):
    def frames(seed):
        ds = StacPatchDataset(
            cache["manifest"], cache["cache"], split=None, bands=["red"], temporal=RandomK(2)
        )
        torch.manual_seed(seed)
        return [tuple(ds[i]["time_index"].tolist()) for i in range(len(ds))]

    assert frames(0) == frames(0)
    assert frames(0) != frames(1)
    assert all(a < b for a, b in frames(0))


def test_a_window_series_too_short_for_the_sampler_is_an_error(cache):
    with pytest.raises(DataError, match=r"no window .* needs .*at most 3 dates each.*num_frames"):
        StacPatchDataset(
            cache["manifest"], cache["cache"], split=None, bands=["red"], temporal=FixedStride(4)
        )


def test_min_frame_valid_fraction_skips_cloudy_frames(cache):
    rows = read_manifest(cache["manifest"])
    # cell 0 at time 1 has a cloud over rows 8:40, cols 16:48: the window at (16, 24) is all cloud
    sampler = FixedStride(2, min_valid_fraction=0.9)
    ds = StacPatchDataset(
        rows, cache["cache"], split=None, bands=["red"], temporal=sampler, random_frames=False
    )
    picked = {s["patch_id"]: s["time_index"].tolist() for s in (ds[i] for i in range(len(ds)))}
    cloudy = f"{CELLS[0]}_r00016_c00024"
    assert cloudy not in picked or 1 not in picked[cloudy]
    for s in (ds[i] for i in range(len(ds))):
        assert (s["valid"].float().mean(dim=(1, 2)) >= 0.9).all()
    assert len(TIMES) == 3
