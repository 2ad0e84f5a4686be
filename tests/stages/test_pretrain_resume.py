"""The pretrain stage survives a SIGKILL: it resumes by itself and ends bit for bit where an
uninterrupted run ends; the same seed and params give the same checkpoint; bad resumes fail."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geogfm.core.errors import DataError
from geogfm.stages import pretrain

CHILD = Path(__file__).resolve().parents[1] / "training" / "_pretrain_child.py"

# 83 train patches / 8 = 10 steps per epoch: 20 steps, checkpoints at 3, 6, 9, 10 (epoch end), 12,
# ...; killed in step 14 (epoch 1), the run resumes from step 12, mid-epoch. drop_path draws from
# the global torch RNG and the EMA has state of its own: both must be restored.
RUN = {
    "train": {
        "epochs": 2,
        "max_steps": None,
        "checkpoint_every": 3,
        "keep_checkpoints": 2,
        "ema_decay": 0.9,
        "warmup_epochs": 0.5,
    },
    "model": {"drop_path": 0.1},
}


def _child(root, out, overrides, kill_at=None):
    args = [sys.executable, str(CHILD), str(root), str(out), json.dumps(overrides)]
    if kill_at is not None:
        args.append(str(kill_at))
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _with_workers(n):
    return {**RUN, "data": {"num_workers": n}}


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _final(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


def _last_state(out):
    return torch.load(sorted((out / "checkpoints").glob("step_*"))[-1] / "state.pt")


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    root = tiny_data["stats"].parents[2]
    out = tmp_path_factory.mktemp("straight") / "pretrain"
    done = _child(root, out, _with_workers(2))
    assert done.returncode == 0, done.stderr[-3000:]
    return root, out


def test_a_killed_run_resumes_to_bit_identical_weights(straight, tmp_path):
    root, ref = straight
    out = tmp_path / "pretrain"
    killed = _child(root, out, _with_workers(2), kill_at=14)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "checkpoint.pt").exists()
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step_00000010", "step_00000012"]  # the last two kept, none half-written

    resumed = _child(root, out, _with_workers(2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RESUMING from" in resumed.stderr and "step_00000012" in resumed.stderr
    final, expected = _final(out), _final(ref)
    _assert_same_tensors(final["model"], expected["model"])
    assert final["weights"] == "ema" and final["resumed_from_step"] == 12
    state, ref_state = _last_state(out), _last_state(ref)
    assert state["step"] == ref_state["step"] == 20
    _assert_same_tensors(state["model"], ref_state["model"])
    for a, b in zip(
        state["optimizer"]["state"].values(), ref_state["optimizer"]["state"].values(), strict=True
    ):
        _assert_same_tensors(a, b)
    assert state["history"]["train_loss"] == ref_state["history"]["train_loss"]
    # dvclive's curves are whole: the restored run's steps are replayed into them
    loss_tsv = (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(loss_tsv.strip().splitlines()) == 1 + 20


def test_same_seed_and_params_give_a_bit_identical_checkpoint_whatever_the_workers(
    straight, tmp_path
):
    root, ref = straight
    out = tmp_path / "pretrain"
    done = _child(root, out, _with_workers(0))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_tensors(_final(out)["model"], _final(ref)["model"])
    assert (out / "checkpoint.pt").read_bytes() != b""


def test_resuming_a_checkpoint_of_another_band_list_is_refused(straight, tiny_cfg, tmp_path):
    root, ref = straight
    out = tmp_path / "pretrain"
    killed = _child(root, out, _with_workers(0), kill_at=4)
    assert killed.returncode == -signal.SIGKILL
    paths = {
        "cache": root / "data/cache",
        "manifest": root / "data/manifests/patches.parquet",
        "stats": root / "results/stats/channel_stats.json",
    }
    bands = tiny_cfg.model_copy(deep=True)
    bands.data.bands = bands.data.bands[:4]
    bands.model.in_chans = 4
    with pytest.raises(DataError, match=r"cannot resume from .*step_00000003.*another model or"):
        pretrain.run(bands, **paths, out=out)
    model = tiny_cfg.model_copy(deep=True)
    model.model.mask_ratio = 0.5
    with pytest.raises(DataError, match=r"model.mask_ratio: 0.75 -> 0.5.*delete .*checkpoints"):
        pretrain.run(model, **paths, out=out)
    assert (out / "checkpoints" / "step_00000003" / "state.pt").is_file()  # left as it was

    # a changed training param resumes, and the run's metadata says what changed at the resume
    clip = {**RUN, "data": {"num_workers": 0}, "train": {**RUN["train"], "grad_clip": 0.25}}
    resumed = _child(root, out, clip)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "although params changed since (train.grad_clip: " in resumed.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resumed_from_step"] == 3 and meta["config"]["train"]["grad_clip"] == 0.25
    assert meta["resumed_with_changed_params"] == [
        f"train.grad_clip: {tiny_cfg.train.grad_clip!r} -> 0.25"
    ]
    assert json.loads((ref / "meta.json").read_text())["resumed_with_changed_params"] == []


def test_a_batch_larger_than_the_train_split_fails_before_any_output(tiny_cfg, tiny_data, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.batch_size = cfg.data.batch_size = 100
    out = tmp_path / "pretrain"
    with pytest.raises(ValueError, match=r"train.batch_size is 100 .* only 83 samples"):
        pretrain.run(
            cfg,
            cache=tiny_data["cache"],
            manifest=tiny_data["manifest"],
            stats=tiny_data["stats"],
            out=out,
        )
    assert not out.exists() or not any(out.iterdir())
