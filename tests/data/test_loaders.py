import json

import numpy as np
import pytest
import torch
import xarray as xr
from _tile_cache_fixture import BANDS, SCALE, write_tile_cache

from geogfm.core.config import DataConfig, config_from_dict
from geogfm.core.errors import DataError
from geogfm.data.datasets.stac_dataset import StacPatchDataset
from geogfm.data.loaders import build_dataloader, collate_patches, seed_worker
from geogfm.data.manifest import read_manifest, write_manifest
from geogfm.data.transforms.normalization import DeviceNormalize, Normalize, load_stats
from geogfm.stages import channel_stats, patch_manifest
from geogfm.training.loop import _to_device

CHIP = 16


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Cache, manifest and statistics of the fixture, made by the real stages."""
    root = tmp_path_factory.mktemp("loaders")
    cache = write_tile_cache(root / "data/cache")
    cfg = config_from_dict({"model": {"image_size": CHIP}, "patch_manifest": {"block_size": 48}})
    patch_manifest.run(cfg, cache=cache, out=root / "data/manifests")
    manifest = root / "data/manifests/patches.parquet"
    stats = root / "results/stats/channel_stats.json"
    channel_stats.run(cfg, cache=cache, manifest=manifest, out=stats)
    return {"cache": cache, "manifest": manifest, "stats": stats}


def data_cfg(artifacts, **kw):
    kw = {
        "bands": list(BANDS),
        "chip_size": CHIP,
        "batch_size": 4,
        "num_workers": 0,
        "manifest": str(artifacts["manifest"]),
        "cache_dir": str(artifacts["cache"]),
        "stats": str(artifacts["stats"]),
        **kw,
    }
    return DataConfig(**kw)


def n_split(artifacts, split):
    df = read_manifest(artifacts["manifest"])
    return int((df["split"] == split).sum())


# ------------------------------------------------------------------------------------ batches


def test_batches_have_the_right_shapes(artifacts):
    train_dl, val_dl = build_dataloader(data_cfg(artifacts))
    n_train, n_val = n_split(artifacts, "train"), n_split(artifacts, "val")
    assert (len(train_dl.dataset), len(val_dl.dataset)) == (n_train, n_val)
    assert len(train_dl) == n_train // 4  # drop_last
    assert len(val_dl) == -(-n_val // 4)
    batch = next(iter(train_dl))
    assert batch["image"].shape == (4, len(BANDS), CHIP, CHIP)
    assert batch["image"].dtype == torch.uint16  # DN: normalised on the device
    assert isinstance(batch["normalize"], DeviceNormalize)
    assert batch["valid"].shape == (4, CHIP, CHIP) and batch["valid"].dtype == torch.bool
    assert batch["time"].shape == (4,) and batch["time"].dtype == torch.int64
    assert len(batch["patch_id"]) == 4 and isinstance(batch["patch_id"][0], str)
    assert batch["crs"] == ["EPSG:32633"] * 4
    assert len(batch["bounds"][0]) == 4
    assert train_dl.pin_memory == torch.cuda.is_available()


def test_normalised_train_pixels_have_mean_0_and_std_1(artifacts):
    # the manifest's windows do not overlap (stride = chip), so each train pixel is seen once
    train_dl, _ = build_dataloader(data_cfg(artifacts))
    samples = [train_dl.dataset[i] for i in range(len(train_dl.dataset))]
    dn = torch.stack([s["image"] for s in samples])  # (N, C, H, W) uint16
    valid = torch.stack([s["valid"] for s in samples])  # (N, H, W)
    images = train_dl.normalize(dn, valid).double()
    assert (images.permute(1, 0, 2, 3)[:, ~valid] == 0).all()
    pixels = images.permute(1, 0, 2, 3)[:, valid]  # (C, n)
    zeros, ones = torch.zeros(len(BANDS), dtype=torch.float64), torch.ones(len(BANDS)).double()
    torch.testing.assert_close(pixels.mean(1), zeros, atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels.std(1, correction=0), ones, atol=1e-5, rtol=0)


def test_the_training_loop_normalises_batches_on_the_device(artifacts):
    train_dl, _ = build_dataloader(data_cfg(artifacts))
    batch = next(iter(train_dl))
    imgs, valid = _to_device(batch, torch.device("cpu"))
    assert imgs.dtype == torch.float32 and torch.equal(valid, batch["valid"])
    torch.testing.assert_close(imgs, batch["normalize"](batch["image"], batch["valid"]))
    with pytest.raises(TypeError, match="has no 'normalize'"):
        _to_device({"image": batch["image"], "valid": batch["valid"]}, torch.device("cpu"))


def test_device_normalize_equals_per_sample_normalize_of_reflectance(artifacts):
    stats = load_stats(artifacts["stats"], ["red", "blue"])
    dn = StacPatchDataset(
        artifacts["manifest"], artifacts["cache"], split="train", bands=["red", "blue"], units="dn"
    )
    refl = StacPatchDataset(
        artifacts["manifest"], artifacts["cache"], split="train", bands=["red", "blue"]
    )
    device = DeviceNormalize(stats, ["red", "blue"], scale=dn.scale, offset=dn.offset)
    per_sample = Normalize(stats, ["red", "blue"])
    for i in range(0, len(dn), 5):
        got = device(dn[i]["image"][None], dn[i]["valid"][None])[0]
        torch.testing.assert_close(got, per_sample(refl[i])["image"], rtol=1e-5, atol=1e-5)


def test_samples_are_reflectance_from_the_cache_with_bands_by_name(artifacts):
    ds = StacPatchDataset(
        artifacts["manifest"], artifacts["cache"], split="val", bands=["red", "blue"]
    )
    s = ds[len(ds) - 1]
    xds = xr.open_zarr(artifacts["cache"] / f"{s['cell']}.zarr", consolidated=False)
    row = read_manifest(artifacts["manifest"]).set_index("patch_id").loc[s["patch_id"]]
    t, rows, cols = (
        s["time_index"],
        slice(row["row"], row["row"] + CHIP),
        slice(row["col"], row["col"] + CHIP),
    )
    dn = xds["reflectance"].sel(band=["red", "blue"]).values[t][:, rows, cols]  # (2, H, W)
    np.testing.assert_allclose(s["image"].numpy(), dn.astype(np.float32) * np.float32(SCALE))
    np.testing.assert_array_equal(s["valid"].numpy(), xds["valid"].values[t][rows, cols])
    assert s["bounds"] == tuple(row[["minx", "miny", "maxx", "maxy"]])
    assert s["crs"] == "EPSG:32633" and s["datetime"] == row["datetime"]


def test_shuffling_is_seeded(artifacts):
    def order(seed):
        train_dl, _ = build_dataloader(data_cfg(artifacts, batch_size=8), seed=seed)
        return [p for b in train_dl for p in b["patch_id"]]

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_workers_read_the_same_patches(artifacts):
    train_dl, val_dl = build_dataloader(data_cfg(artifacts, num_workers=2))
    assert train_dl.persistent_workers and train_dl.num_workers == 2
    for _ in range(2):  # persistent workers serve a second epoch
        ids = [p for b in val_dl for p in b["patch_id"]]
    single = build_dataloader(data_cfg(artifacts))[1]
    assert ids == [p for b in single for p in b["patch_id"]]
    batch = next(iter(train_dl))
    assert batch["image"].shape == (4, len(BANDS), CHIP, CHIP)


def test_a_train_split_smaller_than_a_batch_keeps_its_last_batch(artifacts):
    n_train = n_split(artifacts, "train")
    train_dl, _ = build_dataloader(data_cfg(artifacts, batch_size=n_train + 1))
    assert not train_dl.drop_last and len(train_dl) == 1
    assert next(iter(train_dl))["image"].shape[0] == n_train


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("key", "stage"),
    [("manifest", "patch_manifest"), ("stats", "channel_stats"), ("cache_dir", "tile_cache")],
)
def test_missing_artifacts_name_the_stage_that_makes_them(artifacts, tmp_path, key, stage):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=rf"missing.*`geogfm {stage}` or `snakemake"):
        build_dataloader(data_cfg(artifacts, **{key: missing}))


def test_a_chip_size_other_than_the_manifest_s_is_refused(artifacts):
    with pytest.raises(
        DataError,
        match=r"windows of \[16\] px but data.chip_size is 32.*"
        r"model.image_size=32",
    ):
        build_dataloader(data_cfg(artifacts, chip_size=32))


def test_an_empty_train_split_is_refused(artifacts, tmp_path):
    df = read_manifest(artifacts["manifest"])
    only_val = tmp_path / "patches.parquet"
    write_manifest(df[df["split"] == "val"].reset_index(drop=True), only_val)
    with pytest.raises(DataError, match="no train patches"):
        build_dataloader(data_cfg(artifacts, manifest=str(only_val)))


def test_a_band_missing_from_the_stats_is_refused(artifacts):
    with pytest.raises(DataError, match=r"\['nir'\] are not in the channel statistics"):
        load_stats(artifacts["stats"], ["red", "nir"])


def test_a_band_missing_from_the_cache_is_refused(artifacts):
    with pytest.raises(DataError, match=r"\['nir'\] are not in the tile cache"):
        StacPatchDataset(artifacts["manifest"], artifacts["cache"], split="train", bands=["nir"])


# ------------------------------------------------------------------------------------ Normalize


def test_normalize_uses_the_stats_by_band_name_and_zeroes_invalid_pixels():
    stats = {"bands": ["a", "b"], "mean": [1.0, 10.0], "std": [2.0, 5.0]}
    image = torch.tensor([[[10.0, 20.0]], [[3.0, 5.0]]])  # (C=2, H=1, W=2), bands b, a
    sample = {"image": image, "valid": torch.tensor([[True, False]]), "patch_id": "p"}
    out = Normalize(stats, ["b", "a"])(sample)
    torch.testing.assert_close(out["image"], torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]]]))
    assert out["patch_id"] == "p" and sample["image"] is image  # input untouched


def test_normalize_refuses_a_constant_band():
    with pytest.raises(DataError, match=r"\['a'\] have std 0"):
        Normalize({"bands": ["a"], "mean": [1.0], "std": [0.0]}, ["a"])


def test_stats_file_round_trip(artifacts):
    stats = load_stats(artifacts["stats"], ["green"])
    assert stats == json.loads(artifacts["stats"].read_text())


# ------------------------------------------------------------------- statistics of another cache


def test_stats_of_another_cache_are_refused(artifacts, tmp_path):
    other = write_tile_cache(tmp_path / "cache", seed=1)  # same cells, other pixels
    with pytest.raises(DataError, match="fingerprint"):
        build_dataloader(data_cfg(artifacts, cache_dir=str(other)))


# ------------------------------------------------------------------------------ seeded workers


class _Draws(torch.utils.data.Dataset):
    """What a worker's numpy and torch generators give, and which worker it is."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        worker = torch.utils.data.get_worker_info()
        return {"np": np.random.random(), "torch": torch.rand(()).item(), "worker": worker.id}


def test_seed_worker_seeds_numpy_per_worker_from_the_loader_generator():
    def draws(seed):
        dl = torch.utils.data.DataLoader(
            _Draws(),
            batch_size=1,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(seed),
        )
        return [(b["worker"].item(), b["np"].item()) for b in dl]

    first = draws(0)
    assert first == draws(0)  # reproducible
    assert first != draws(1)
    by_worker = {w: [v for ww, v in first if ww == w] for w in (0, 1)}
    assert by_worker[0] != by_worker[1]  # forked workers do not share one numpy state


# ---------------------------------------------------------------------------------- multi-date


def test_multi_date_loaders(artifacts):
    cfg = data_cfg(artifacts, num_frames=2, temporal_sampling="random", batch_size=2)
    train_dl, val_dl = build_dataloader(cfg)
    batch = next(iter(train_dl))
    assert batch["image"].shape == (2, 2, len(BANDS), CHIP, CHIP)
    assert batch["valid"].shape == (2, 2, CHIP, CHIP) and batch["time"].shape == (2, 2)
    z = batch["normalize"](batch["image"], batch["valid"])  # (B, T, C, H, W)
    assert (
        z.shape == batch["image"].shape and (z[~batch["valid"][:, :, None].expand_as(z)] == 0).all()
    )
    # validation picks the same frames every time; training draws them
    val_frames = [b["time"].tolist() for b in val_dl]
    assert val_frames == [b["time"].tolist() for b in build_dataloader(cfg)[1]]
    imgs, valid = _to_device(batch, torch.device("cpu"))  # normalised on the device, 5-D
    torch.testing.assert_close(imgs, z)


def test_multi_date_with_too_many_frames_is_refused(artifacts):
    with pytest.raises(DataError, match="lower data.num_frames"):
        build_dataloader(data_cfg(artifacts, num_frames=4))


# ----------------------------------------------------------------------------- batched reads


def test_batched_reads_are_the_samples_and_collate_without_a_copy(artifacts):
    ds = StacPatchDataset(
        artifacts["manifest"], artifacts["cache"], split="train", bands=["red", "green"], units="dn"
    )
    idx = [5, 0, 3, 3, 7]
    samples = ds.__getitems__(idx)
    batch = collate_patches(samples)
    assert batch["image"].data_ptr() == samples[0]["image"].data_ptr()  # no stacked copy
    for k, i in enumerate(idx):
        one = ds[i]
        torch.testing.assert_close(batch["image"][k], one["image"])
        torch.testing.assert_close(batch["valid"][k], one["valid"])
        assert batch["patch_id"][k] == one["patch_id"] and int(batch["time"][k]) == int(one["time"])
    # separate tensors are stacked as usual
    stacked = collate_patches([ds[i] for i in idx])
    torch.testing.assert_close(stacked["image"], batch["image"])


def test_worker_batches_equal_the_dataset_samples(artifacts):
    _, val_dl = build_dataloader(data_cfg(artifacts, num_workers=2, batch_size=3))
    ds = val_dl.dataset
    i = 0
    for batch in val_dl:
        for k in range(len(batch["image"])):
            torch.testing.assert_close(batch["image"][k], ds[i]["image"])
            torch.testing.assert_close(batch["valid"][k], ds[i]["valid"])
            i += 1
    assert i == len(ds)
