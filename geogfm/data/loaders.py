"""Train and validation ``DataLoader``s over the patch manifest, normalised on the training device.

``build_dataloader`` checks the three artifacts it reads (manifest, tile cache, statistics) before
any worker starts, so a missing stage, statistics of another cache or a chip size that disagrees
with the manifest fails at once with the command that fixes it.

Batches carry the cache's ``uint16`` DN, not float32: a quarter of the bytes through the worker
pipes and the host-to-device copy. Each batch has a ``"normalize"`` entry, a
:class:`~geogfm.data.transforms.normalization.DeviceNormalize`, that the training loop applies once
the batch is on the device (``geogfm.training.loop``), giving float32 z-scores with invalid pixels
at 0. Workers are persistent across epochs, and batches are pinned when a GPU is present.

A worker reads each batch into a shared-memory buffer it reuses once the main process is done with
it (:mod:`geogfm.data.zarr_windows`): the batch carries the buffers' leases under ``"_leases"``,
which :class:`PatchLoader` removes. A buffer is written again only after every tensor on it in the
main process is gone: after the pin-memory thread's copy when batches are pinned, else after the
training loop lets the batch go; batches kept longer are simply never overwritten.

Training order and randomness are functions of ``(seed, epoch, position in the epoch)`` only: the
train loader's :class:`EpochSampler` shuffles with ``seed + epoch``, can start an epoch at an
offset (resuming a run mid-epoch) and shards for DDP; :class:`EpochSeededDataset` reseeds torch,
numpy and ``random`` before each batch is read, from the seed, the epoch and the batch's position.
So a batch's content does not depend on the number of workers, on which worker reads it, or on
whether the run was resumed: worker RNGs carry no state worth saving.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from geogfm.core.config import DataConfig
from geogfm.core.errors import DataError
from geogfm.data.cache_reader import check_stats_match, load_cache_index
from geogfm.data.datasets.stac_dataset import StacPatchDataset
from geogfm.data.manifest import read_manifest
from geogfm.data.transforms.normalization import DeviceNormalize, load_stats
from geogfm.data.transforms.temporal_sampling import make_sampler
from geogfm.data.zarr_windows import lease

__all__ = [
    "EpochSampler",
    "EpochSeededDataset",
    "PatchLoader",
    "build_dataloader",
    "collate_patches",
    "seed_worker",
]

log = logging.getLogger(__name__)

#: Keys stacked into tensors; the others are collated as plain lists.
_TENSOR_KEYS = ("image", "valid", "time")


def _rows_of_one_tensor(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The (B, ...) tensor whose rows ``tensors`` are, in order, or None if they are not."""
    first = tensors[0]
    if not first.is_contiguous():
        return None
    storage, n = first.untyped_storage(), first.numel()
    for k, t in enumerate(tensors):
        if (
            t.untyped_storage().data_ptr() != storage.data_ptr()
            or t.storage_offset() != first.storage_offset() + k * n
            or t.shape != first.shape
            or t.dtype != first.dtype
            or not t.is_contiguous()
        ):
            return None
    shape = (len(tensors), *first.shape)
    return torch.empty(0, dtype=first.dtype).set_(storage, first.storage_offset(), shape)


def collate_patches(samples: list[dict]) -> dict:
    """Collate samples: ``image`` -> (B, [T,] C, H, W), ``valid``, ``time`` stacked; rest lists.

    Samples whose ``image``/``valid`` are already the rows of one batch tensor (what
    :meth:`StacPatchDataset.__getitems__` reads) are not copied: the batch is that tensor, and if
    it lies on a worker's reused buffer, its :class:`~geogfm.data.zarr_windows.BufferLease` goes
    in ``batch["_leases"]`` (None once unpickled; :class:`PatchLoader` drops the key).
    """
    batch, leases = {}, []
    for key in ("image", "valid"):
        if key in samples[0]:
            batch[key] = _rows_of_one_tensor([s[key] for s in samples])
            if batch[key] is not None and (held := lease(batch[key])) is not None:
                leases.append(held)
    stack = [k for k in _TENSOR_KEYS if k in samples[0] and batch.get(k) is None]
    batch.update(default_collate([{k: s[k] for k in stack} for s in samples]))
    for key in samples[0]:
        if key not in batch:
            batch[key] = [s[key] for s in samples]
    if leases:
        batch["_leases"] = leases
    return batch


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    PyTorch seeds each worker's torch RNG with the loader's base seed plus the worker id, but not
    numpy's or ``random``'s: forked workers would otherwise share one numpy state.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochSampler(Sampler[tuple[int, int, int]]):
    """A resumable shuffling sampler: permutation of ``seed + epoch``, sharded over replicas.

    Each epoch's order is ``torch.randperm(n)`` from a generator seeded with ``seed + epoch``
    (``shuffle=False``: ``0 .. n-1``), so it needs no state beyond the epoch number. With
    ``num_replicas > 1`` (DDP) the order is cut to a multiple of ``num_replicas`` and replica
    ``rank`` takes every ``num_replicas``-th index from ``rank``: consecutive per-replica batches
    of ``b`` together are the single-process batch of ``b * num_replicas``.
    :meth:`set_epoch` picks the epoch and how many of this replica's samples to skip (a run
    resumed mid-epoch). It yields ``(epoch, position, index)`` for :class:`EpochSeededDataset`.

    Args:
        n: dataset length.
        seed: the run's seed.
        shuffle: permute each epoch; False keeps dataset order.
        num_replicas: processes sharing the data (DDP world size).
        rank: this process's rank.
    """

    def __init__(
        self, n: int, *, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve epoch ``epoch`` from this replica's ``start``-th sample on."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start {start} is not in [0, {len(self)}] samples of the epoch")
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        """This replica's dataset indices for ``epoch``, in order."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.n - self.n % self.num_replicas
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, start = self.epoch, self.start
        self.start = 0  # an offset applies once, to the epoch being resumed
        for pos, i in enumerate(self.order(epoch)[start:], start=start):
            yield epoch, pos, i

    def __len__(self) -> int:
        """Samples per epoch for this replica (a resumed epoch yields ``start`` fewer)."""
        return self.n // self.num_replicas


@contextlib.contextmanager
def _seeded(seed: int, epoch: int, pos: int) -> Iterator[None]:
    """Seed torch, numpy and ``random`` from ``(seed, epoch, pos)``; restored after in-process."""
    s = int(np.random.SeedSequence([seed, epoch, pos]).generate_state(1, np.uint64)[0])
    in_process = get_worker_info() is None
    if in_process:  # do not disturb the training process's RNGs
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    try:
        yield
    finally:
        if in_process:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class EpochSeededDataset(Dataset):
    """Wraps a dataset so that each batch is read under RNGs seeded by its place in the run.

    Items are ``(epoch, position, index)`` from :class:`EpochSampler`: a batch is read under
    :func:`_seeded` of the run's seed, the epoch and the position of its first sample, so random
    draws in the dataset (e.g. multi-date frames) are the same whatever worker reads it and after
    a resume. A plain ``int`` index reads the sample as the inner dataset would.

    Args:
        dataset: the map-style dataset.
        seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:  # noqa: D105
        return len(self.dataset)

    def __getattr__(self, name: str):  # noqa: D105
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item: int | tuple[int, int, int]) -> dict:  # noqa: D105
        if isinstance(item, int):
            return self.dataset[item]
        epoch, pos, i = item
        with _seeded(self.seed, epoch, pos):
            return self.dataset[i]

    def __getitems__(self, items: list[tuple[int, int, int]]) -> list[dict]:  # noqa: D105
        epoch, pos, _ = items[0]
        indices = [i for _, _, i in items]
        with _seeded(self.seed, epoch, pos):
            if hasattr(self.dataset, "__getitems__"):
                return self.dataset.__getitems__(indices)
            return [self.dataset[i] for i in indices]


class PatchLoader(DataLoader):
    """A ``DataLoader`` whose batches carry the normalisation to apply on the device.

    Every batch it yields has ``batch["normalize"]``, a ``(image, valid) -> image`` callable
    (:class:`DeviceNormalize`), added in the main process, so it is never pickled per batch; the
    workers' buffer leases (``batch["_leases"]``, already bound) are dropped.

    Args:
        dataset: the dataset.
        normalize: the device normalisation.
        **kwargs: passed to :class:`torch.utils.data.DataLoader`.
    """

    def __init__(self, dataset, *, normalize: DeviceNormalize, **kwargs):
        super().__init__(dataset, **kwargs)
        self.normalize = normalize

    def __iter__(self) -> Iterator[dict]:  # noqa: D105
        for batch in super().__iter__():
            batch.pop("_leases", None)
            batch["normalize"] = self.normalize
            yield batch


def build_dataloader(
    data_cfg: DataConfig, *, seed: int = 0, num_replicas: int = 1, rank: int = 0
) -> tuple[PatchLoader, PatchLoader]:
    """Build the train and validation loaders.

    Both read ``data_cfg.manifest`` rows of their split from ``data_cfg.cache_dir`` as uint16 DN,
    and normalise them on the training device with ``data_cfg.stats`` (see the module docstring).
    The train loader shuffles with an :class:`EpochSampler` (``seed + epoch``; call its
    ``set_epoch`` each epoch, as :func:`geogfm.training.loop.fit` does) and drops the last
    incomplete batch (unless the split is smaller than one batch); the validation loader keeps
    every patch, in manifest order. With ``data_cfg.num_frames > 1`` samples are ``T`` dates of
    one window (picked by ``data_cfg.temporal_sampling``: at random per sample for training,
    deterministically for validation).

    Args:
        data_cfg: paths, bands, chip size, batch size, workers, frames.
        seed: seed of the shuffling and of the dataset's random draws.
        num_replicas: DDP world size; the train split is sharded over replicas.
        rank: this process's DDP rank.

    Returns:
        ``(train_dl, val_dl)``; batches are dicts with ``image`` (B, C, H, W) or (B, T, C, H, W)
        uint16 DN, ``valid`` (B, [T,] H, W) bool, ``time`` (B, [T]) int64 seconds since 1970,
        ``normalize``, and lists of ``patch_id``, ``cell``, ``time_index``, ``datetime``,
        ``bounds``, ``crs``.

    Raises:
        FileNotFoundError: if the manifest, the cache or the statistics are missing (naming the
            stage that makes them).
        DataError: if the statistics were computed from another cache, the manifest's windows are
            not ``data_cfg.chip_size`` pixels, the train split is empty, a band is missing from
            the cache or the statistics, or no window has ``num_frames`` usable dates.
    """
    rows = read_manifest(data_cfg.manifest)
    index = load_cache_index(data_cfg.cache_dir)
    stats = load_stats(data_cfg.stats, data_cfg.bands)
    check_stats_match(stats, data_cfg.cache_dir)

    sizes = sorted(int(s) for s in rows["size"].unique())
    if sizes and sizes != [data_cfg.chip_size]:
        raise DataError(
            f"the patch manifest {data_cfg.manifest} has windows of {sizes} px but "
            f"data.chip_size is {data_cfg.chip_size}; rerun `geogfm patch_manifest` with "
            f"model.image_size={data_cfg.chip_size} (or set model.image_size={sizes[0]})"
        )
    temporal = None
    if data_cfg.num_frames > 1:
        temporal = make_sampler(
            data_cfg.temporal_sampling,
            data_cfg.num_frames,
            min_valid_fraction=data_cfg.min_frame_valid_fraction,
            stride=data_cfg.frame_stride,
        )
    train, val = (
        StacPatchDataset(
            rows,
            data_cfg.cache_dir,
            split=split,
            bands=data_cfg.bands,
            units="dn",
            temporal=temporal,
            random_frames=split == "train",
            seed=seed,
            chunk_cache_bytes=data_cfg.chunk_cache_mb * 2**20,
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

    normalize = DeviceNormalize(stats, data_cfg.bands, scale=index.scale, offset=index.offset)
    workers = data_cfg.num_workers
    common = {
        "batch_size": data_cfg.batch_size,
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "worker_init_fn": seed_worker,
        "collate_fn": collate_patches,
        "normalize": normalize,
    }
    sampler = EpochSampler(len(train), seed=seed, num_replicas=num_replicas, rank=rank)
    train_dl = PatchLoader(
        EpochSeededDataset(train, seed),
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(sampler) >= data_cfg.batch_size,
        **common,
    )
    val_dl = PatchLoader(
        val,
        shuffle=False,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed + 1),
        **common,
    )
    log.info(
        "loaders: %d train / %d val samples of %d px, %d bands, %s, batch %d, %d workers",
        len(train),
        len(val),
        data_cfg.chip_size,
        len(data_cfg.bands),
        "single-date" if temporal is None else f"{temporal}",
        data_cfg.batch_size,
        workers,
    )
    return train_dl, val_dl
