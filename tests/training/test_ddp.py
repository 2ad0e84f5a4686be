"""DDP under torchrun (2 processes, gloo, CPU) matches one process on the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHILD = Path(__file__).resolve().parent / "_ddp_child.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _run(args, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*args, str(CHILD), *out], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out[1], weights_only=True)


@pytest.mark.slow  # three processes start: ~30 s
@pytest.mark.skipif(shutil.which(str(TORCHRUN)) is None, reason="torchrun is not installed")
def test_two_gloo_ranks_train_like_one_process_on_the_global_batch(tiny_data, tmp_path):
    root = str(tiny_data["stats"].parents[2])
    single = _run([sys.executable], [root, str(tmp_path / "single.pt")])
    ddp = _run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2"], [root, str(tmp_path / "ddp.pt")]
    )
    # the same data, masks and loss (the global batch's, not rank 0's half) at every step
    assert ddp["history"] == pytest.approx(single["history"], rel=1e-5, abs=0)
    for key, init in single["initial"].items():
        assert torch.equal(init, ddp["initial"][key])
        step_single = single["final"][key] - init
        step_ddp = ddp["final"][key] - init
        # 6 AdamW steps: the same up to float summation order (gradients all-reduced)
        torch.testing.assert_close(step_ddp, step_single, rtol=0, atol=1e-4, msg=key)
        assert (step_ddp - step_single).norm() <= 0.02 * step_single.norm(), key
