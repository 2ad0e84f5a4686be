import errno
import random

import numpy as np
import pytest
import torch
from _synthetic import batches, tiny_model

from geogfm.core.config import TrainConfig
from geogfm.training.checkpointing import Checkpointer, get_rng_state, set_rng_state
from geogfm.training.loop import fit


def test_checkpoints_are_step_numbered_with_meta_and_only_the_last_k_kept(tmp_path):
    ckpts = Checkpointer(tmp_path / "ckpts", every=2, keep=2, extra={"bands": ["red"]})
    for step in (2, 4, 6):
        ckpts.save({"step": step, "model": {"w": torch.full((2,), float(step))}}, step=step)
    assert [p.name for p in ckpts.list()] == ["step_00000004", "step_00000006"]
    assert ckpts.latest().name == "step_00000006"
    state = ckpts.load()
    assert state["step"] == 6 and state["bands"] == ["red"]
    assert torch.equal(state["model"]["w"], torch.full((2,), 6.0))
    meta = ckpts.meta(ckpts.latest())
    assert meta["step"] == 6 and meta["bands"] == ["red"] and "model" not in meta
    assert ckpts.due(4) and not ckpts.due(5)
    assert not list((tmp_path / "ckpts").glob(".*")), "temporary files left behind"


def test_rng_states_round_trip():
    gen = torch.Generator().manual_seed(3)
    state = get_rng_state(gen)
    draws = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    set_rng_state(state, gen)
    again = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    assert draws[:2] == again[:2]
    assert torch.equal(draws[2], again[2]) and torch.equal(draws[3], again[3])


def _half_writing_full_disk(payload, path):
    with open(path, "wb") as f:
        f.write(b"partial checkpoint bytes")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_names_the_disk_and_keeps_the_previous(tmp_path):
    good = Checkpointer(tmp_path / "ckpts", keep=3)
    good.save({"step": 1, "model": {"w": torch.ones(3)}}, step=1)
    full = Checkpointer(tmp_path / "ckpts", keep=3, save=_half_writing_full_disk)
    with pytest.raises(OSError, match=r"disk full while writing checkpoint .*step_00000002") as e:
        full.save({"step": 2, "model": {"w": torch.zeros(3)}}, step=2)
    assert e.value.errno == errno.ENOSPC
    assert str(tmp_path / "ckpts") in str(e.value) and "step_00000001 is intact" in str(e.value)
    assert [p.name for p in good.list()] == ["step_00000001"]
    assert torch.equal(good.load()["model"]["w"], torch.ones(3))
    assert not list((tmp_path / "ckpts").glob(".*")), "the half-written checkpoint is left"


def test_fit_stops_on_a_full_disk_and_the_last_checkpoint_survives(tmp_path):
    calls = []

    def save_then_fill(payload, path):
        calls.append(path)
        if len(calls) > 1:
            _half_writing_full_disk(payload, path)
        torch.save(payload, path)

    ckpts = Checkpointer(tmp_path / "ckpts", every=1, keep=5, save=save_then_fill)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu")
    with pytest.raises(OSError, match="disk full"):
        fit(tiny_model(), (batches(6), None), cfg, checkpointer=ckpts)
    assert [p.name for p in ckpts.list()] == ["step_00000001"]
    assert ckpts.load()["step"] == 1


def test_the_non_finite_loss_guard_names_step_loss_and_the_last_good_checkpoint(tmp_path):
    data = batches(6)
    data[3]["image"][0, 0, 0, 0] = float("inf")
    ckpts = Checkpointer(tmp_path / "ckpts", every=1, keep=2)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu")
    with pytest.raises(FloatingPointError, match=r"non-finite loss (nan|inf) at step 3 .*"):
        fit(tiny_model(), (data, None), cfg, checkpointer=ckpts)
    latest = ckpts.latest()
    assert latest.name == "step_00000003"
    state = ckpts.load()
    assert all(torch.isfinite(v).all() for v in state["model"].values())
