"""Train and validation ``DataLoader``s over the patch manifest, normalised with channel stats.

``build_dataloader`` checks the three artifacts it reads (manifest, tile cache, statistics) before
any worker starts, so a missing stage or a chip size that disagrees with the manifest fails at once
with the command that fixes it.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, default_collate

from geogfm.core.config import DataConfig
from geogfm.core.errors import DataError
from geogfm.data.cache_reader import load_cache_index
from geogfm.data.datasets.stac_dataset import StacPatchDataset
from geogfm.data.manifest import read_manifest
from geogfm.data.transforms.normalization import Normalize, load_stats

__all__ = ["build_dataloader", "collate_patches"]

log = logging.getLogger(__name__)

#: Keys stacked into tensors; the others are collated as plain lists.
_TENSOR_KEYS = ("image", "valid")


def collate_patches(samples: list[dict]) -> dict:
    """Collate samples: ``image`` -> (B, C, H, W), ``valid`` -> (B, H, W); other keys -> lists."""
    batch = default_collate([{k: s[k] for k in _TENSOR_KEYS} for s in samples])
    for key in samples[0]:
        if key not in batch:
            batch[key] = [s[key] for s in samples]
    return batch


def build_dataloader(data_cfg: DataConfig, *, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Build the train and validation loaders.

    Both read ``data_cfg.manifest`` rows of their split from ``data_cfg.cache_dir``, select
    ``data_cfg.bands`` and normalise them with ``data_cfg.stats``. The train loader shuffles with
    a ``torch.Generator`` seeded by ``seed`` and drops the last incomplete batch (unless the split
    is smaller than one batch); the validation loader keeps every patch, in manifest order.

    Args:
        data_cfg: paths, bands, chip size, batch size and workers.
        seed: seed of the shuffling generator.

    Returns:
        ``(train_dl, val_dl)``; batches are dicts with ``image`` (B, C, H, W) float32, ``valid``
        (B, H, W) bool, and lists of ``patch_id``, ``cell_id``, ``time_index``, ``datetime``,
        ``bounds``, ``crs``.

    Raises:
        FileNotFoundError: if the manifest, the cache or the statistics are missing (naming the
            stage that makes them).
        DataError: if the manifest's windows are not ``data_cfg.chip_size`` pixels, the train
            split is empty, or a band is missing from the cache or the statistics.
    """
    rows = read_manifest(data_cfg.manifest)
    load_cache_index(data_cfg.cache_dir)
    stats = load_stats(data_cfg.stats, data_cfg.bands)

    sizes = sorted(int(s) for s in rows["size"].unique())
    if sizes and sizes != [data_cfg.chip_size]:
        raise DataError(
            f"the patch manifest {data_cfg.manifest} has windows of {sizes} px but "
            f"data.chip_size is {data_cfg.chip_size}; rerun `geogfm patch_manifest` with "
            f"model.image_size={data_cfg.chip_size} (or set model.image_size={sizes[0]})"
        )
    normalize = Normalize(stats, data_cfg.bands)
    train, val = (
        StacPatchDataset(
            rows,
            data_cfg.cache_dir,
            split=split,
            bands=data_cfg.bands,
            transforms=normalize,
        )
        for split in ("train", "val")
    )
    if len(train) == 0:
        raise DataError(
            f"the patch manifest {data_cfg.manifest} has no train patches ({len(val)} val); "
            "rerun `geogfm patch_manifest` with a lower patch_manifest.val_fraction or "
            "patch_manifest.min_valid_fraction"
        )
    if len(val) == 0:
        log.warning("the patch manifest %s has no val patches", data_cfg.manifest)

    workers = data_cfg.num_workers
    common = {
        "batch_size": data_cfg.batch_size,
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "collate_fn": collate_patches,
    }
    train_dl = DataLoader(
        train,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(train) >= data_cfg.batch_size,
        **common,
    )
    val_dl = DataLoader(val, shuffle=False, drop_last=False, **common)
    log.info(
        "loaders: %d train / %d val patches of %d px, %d bands, batch %d, %d workers",
        len(train),
        len(val),
        data_cfg.chip_size,
        len(data_cfg.bands),
        data_cfg.batch_size,
        workers,
    )
    return train_dl, val_dl
