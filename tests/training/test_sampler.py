"""The train loader's resumable, epoch-reseeded, shardable sampler (geogfm.data.loaders)."""

import pytest
import torch

from geogfm.data.loaders import EpochSampler, EpochSeededDataset


def _indices(sampler):
    return [i for _, _, i in sampler]


def test_each_epoch_is_a_permutation_of_seed_plus_epoch():
    s = EpochSampler(10, seed=3)
    s.set_epoch(0)
    e0 = _indices(s)
    s.set_epoch(1)
    e1 = _indices(s)
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    assert e1 == torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()
    again = EpochSampler(10, seed=3)
    again.set_epoch(1)
    assert _indices(again) == e1  # no state beyond the epoch


def test_an_epoch_can_start_at_an_offset_once():
    s = EpochSampler(10, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=6)
    assert list(s) == full[6:]
    assert [pos for _, pos, _ in full[6:]] == [6, 7, 8, 9]
    assert list(s) == full  # the offset applied to one pass only
    with pytest.raises(ValueError, match=r"start 11 is not in \[0, 10\]"):
        s.set_epoch(2, start=11)


def test_replicas_split_each_global_batch():
    single = EpochSampler(11, seed=5)
    single.set_epoch(1)
    order = _indices(single)
    shards = []
    for rank in range(2):
        s = EpochSampler(11, seed=5, num_replicas=2, rank=rank)
        s.set_epoch(1)
        shards.append(_indices(s))
        assert len(s) == 5
    # per-replica batches of 2 are, together, the single-process batch of 4
    for k in range(2):
        together = sorted(shards[0][2 * k : 2 * k + 2] + shards[1][2 * k : 2 * k + 2])
        assert together == sorted(order[4 * k : 4 * k + 4])
    with pytest.raises(ValueError, match="rank 2 is not in"):
        EpochSampler(4, num_replicas=2, rank=2)


class _Draws:
    def __len__(self):
        return 100

    def __getitem__(self, i):
        return torch.rand(1).item()


def test_reads_are_seeded_by_their_place_in_the_run_not_by_the_process_rng():
    ds = EpochSeededDataset(_Draws(), seed=0)
    a = ds.__getitems__([(1, 8, 3), (1, 9, 4)])
    torch.manual_seed(123)  # the process's RNG does not matter ...
    b = ds.__getitems__([(1, 8, 3), (1, 9, 4)])
    assert a == b
    assert ds.__getitems__([(2, 8, 3), (2, 9, 4)]) != a  # ... the epoch does
    state = torch.get_rng_state()
    ds[(0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # and the process's RNG is left alone
