"""Workers reuse their shared-memory batch buffers, and never write one the consumer still holds.

Real loaders over a real (tiny) tile cache with worker processes; the pool's handshake is also
checked in one process through the same pickling the ``DataLoader`` uses between processes.
"""

from __future__ import annotations

import gc
import io
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions)
from _tile_cache_fixture import BANDS, write_tile_cache
from torch.multiprocessing.reductions import shared_cache
from torch.utils.data import DataLoader

from geogfm.core.config import DataConfig, config_from_dict
from geogfm.data import zarr_windows
from geogfm.data.loaders import build_dataloader, collate_patches
from geogfm.data.zarr_windows import _BufferPool
from geogfm.stages import channel_stats, patch_manifest

CHIP = 16


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> DataConfig:
    root = tmp_path_factory.mktemp("buffers")
    cache = write_tile_cache(root / "data/cache")
    run_cfg = config_from_dict(
        {"model": {"image_size": CHIP}, "patch_manifest": {"stride": 8, "block_size": 48}}
    )
    patch_manifest.run(run_cfg, cache=cache, out=root / "data/manifests")
    manifest = root / "data/manifests/patches.parquet"
    stats = root / "results/stats/channel_stats.json"
    channel_stats.run(run_cfg, cache=cache, manifest=manifest, out=stats)
    return DataConfig(
        bands=list(BANDS),
        chip_size=CHIP,
        batch_size=4,
        num_workers=0,
        manifest=str(manifest),
        cache_dir=str(cache),
        stats=str(stats),
    )


def _round_trip(obj):
    """``obj`` pickled and unpickled as a ``DataLoader`` worker sends it (shared memory)."""
    buf = io.BytesIO()
    ForkingPickler(buf).dump(obj)
    # the receiving process maps the buffer anew; here, the sender's cache of shared storages
    # would hand back the sender's own storage
    shared_cache.clear()
    return ForkingPickler.loads(buf.getvalue())


def test_a_buffer_returns_to_the_pool_when_the_receiver_drops_it():
    pool = _BufferPool(2)
    first = pool.take((3, 5), torch.int16)
    first.copy_(torch.arange(15, dtype=torch.int16).reshape(3, 5))
    lease = pool.lease(first)
    got = _round_trip({"image": first, "_leases": [lease]})
    assert got["_leases"] == [None]  # bound on arrival
    ptr = first.untyped_storage().data_ptr()
    del first, lease
    assert pool.state.tolist() == [1, 0]
    second = pool.take((3, 5), torch.int16)  # the first is still held: another buffer
    assert second.untyped_storage().data_ptr() != ptr
    view = got["image"][1:].numpy()  # a view keeps the storage alive
    del got
    gc.collect()
    assert pool.state.tolist() == [1, 1]
    assert view.tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    del view
    gc.collect()
    assert pool.state.tolist() == [0, 1]
    third = pool.take((2, 5), torch.int16)  # a smaller batch fits the freed buffer
    assert third.untyped_storage().data_ptr() == ptr and pool.allocated == 2
    # every buffer held: one outside the pool, never leased
    outside = pool.take((3, 5), torch.int16)
    assert pool.allocated == 3 and pool.lease(outside) is None
    assert pool.lease(torch.zeros(3)) is None


def _counting_collate(samples):
    batch = collate_patches(samples)
    batch["allocated"] = zarr_windows._pool().allocated
    return batch


def _loader(cfg: DataConfig, **kw) -> DataLoader:
    train_dl, _ = build_dataloader(cfg.model_copy(update={"num_workers": 1}), seed=3)
    return DataLoader(
        train_dl.dataset,
        batch_size=cfg.batch_size,
        sampler=train_dl.sampler,
        drop_last=train_dl.drop_last,
        num_workers=1,
        persistent_workers=True,
        collate_fn=_counting_collate,
        **kw,
    )


def _reference(cfg: DataConfig, epoch: int) -> list[dict]:
    train_dl, _ = build_dataloader(cfg, seed=3)
    train_dl.sampler.set_epoch(epoch)
    return list(train_dl)


def test_a_worker_reuses_buffers_and_its_batches_are_the_in_process_ones(cfg):
    dl = _loader(cfg)
    n = 0
    for epoch in range(4):
        dl.sampler.set_epoch(epoch)
        for batch, ref in zip(dl, _reference(cfg, epoch), strict=True):
            assert torch.equal(batch["image"], ref["image"])
            assert torch.equal(batch["valid"], ref["valid"])
            assert batch["patch_id"] == ref["patch_id"]
            n += 1
    assert n >= 20
    # two buffers a batch; at most prefetch_factor + 2 batches of one worker alive at once
    assert batch["allocated"] <= 2 * (2 + 2) < 2 * n


def test_batches_the_consumer_keeps_are_never_overwritten(cfg):
    dl = _loader(cfg, prefetch_factor=4)
    kept = []
    for epoch in range(3):  # more batches than the pool has buffers
        dl.sampler.set_epoch(epoch)
        for batch in dl:
            kept.append((batch, batch["image"].clone(), batch["valid"].clone()))
    n = len(kept)
    assert 2 * n > zarr_windows.POOL_SLOTS
    assert kept[-1][0]["allocated"] == 2 * n  # all held: every batch got new buffers
    for batch, image, valid in kept:
        assert torch.equal(batch["image"], image) and torch.equal(batch["valid"], valid)
    # once let go, the pool's buffers serve another epoch: no new ones
    del kept, batch
    gc.collect()
    assert [b["allocated"] for b in dl][-1] == 2 * n
