"""The real DAG end to end, through Snakemake and DVC, in a temporary copy of the repository.

Each test copies the repository's files (what git tracks or would track), makes the CI preset its
params.yaml, commits it to a fresh git repository (DVC experiments need one) and runs the real
commands a user runs.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from conftest import copy_repo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "GIT_AUTHOR_NAME": "geogfm-tests",
    "GIT_AUTHOR_EMAIL": "tests@geogfm.invalid",
    "GIT_COMMITTER_NAME": "geogfm-tests",
    "GIT_COMMITTER_EMAIL": "tests@geogfm.invalid",
}
STAGES = ["demo_catalog", "stac_query", "tile_cache", "patch_manifest", "channel_stats"]
MODEL_STAGES = ["pretrain", "figures"]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-4000:]}"
    return out


@pytest.fixture
def repo(tmp_path) -> Path:
    dst = copy_repo(tmp_path / "repo")
    shutil.copy(ROOT / "configs" / "ci_tiny.yaml", dst / "params.yaml")
    _run(["git", "init", "-q", "-b", "main"], dst)
    _run(["git", "add", "-A"], dst)
    _run(["git", "commit", "-q", "-m", "tiny"], dst)
    return dst


def _ran(out: str) -> set[str]:
    return {s for s in STAGES + MODEL_STAGES if f"Running stage '{s}'" in out}


def _planned_rules(dry_run: str) -> set[str]:
    """The rule names of a dry run's "Job stats" table."""
    table = dry_run.split("Job stats:")[1].splitlines()[3:]  # skip the header and the rule
    return {
        line.split()[0]
        for line in table[: table.index(next(x for x in table if x.startswith("total")))]
    }


def _check_outputs(repo: Path) -> None:
    assert (repo / "results/pretrain/checkpoint.pt").stat().st_size > 0
    metrics = json.loads((repo / "results/pretrain/metrics.json").read_text())
    assert metrics["steps"] == 4
    for name in ("reconstructions", "loss_curve"):
        image = matplotlib.image.imread(repo / f"results/figures/{name}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01


def test_snakemake_builds_everything_then_nothing_and_dvc_agrees(repo):
    _run(["snakemake", "--cores", "2", "pretrain"], repo)
    _check_outputs(repo)
    again = _run(["snakemake", "--cores", "2", "pretrain"], repo)
    assert "Nothing to be done" in again

    # the onsuccess handler recorded the run in dvc.lock: DVC has nothing to redo
    out = _run(["dvc", "repro"], repo)
    assert _ran(out) == set(), out
    assert "up to date" in _run(["dvc", "status"], repo)

    # a training key reruns pretraining and what follows it, reusing the data stages
    out = _run(["dvc", "exp", "run", "-S", "train.optimizer.lr=0.002"], repo)
    assert _ran(out) == {"pretrain", "figures"}, out
    assert "train_loss" in _run(["dvc", "metrics", "show"], repo)
    shown = _run(["dvc", "exp", "show", "--no-pager", "--md"], repo)
    assert "train_loss" in shown and "0.002" in shown

    # and Snakemake agrees that exactly those two rules are out of date for the new params
    plan = _run(["snakemake", "-n", "pretrain"], repo)
    assert _planned_rules(plan) == {"pretrain_mae", "figures", "pretrain"}, plan


def test_dvc_repro_builds_everything_then_nothing_and_snakemake_agrees(repo):
    out = _run(["dvc", "repro"], repo)
    assert _ran(out) == set(STAGES + MODEL_STAGES), out
    _check_outputs(repo)
    out = _run(["dvc", "repro"], repo)
    assert _ran(out) == set(), out
    assert "Nothing to be done" in _run(["snakemake", "-n", "pretrain"], repo)

    # metrics and plots are declared: DVC shows and renders them
    assert "val_loss" in _run(["dvc", "metrics", "show"], repo)
    _run(["dvc", "plots", "show", "-o", "plots_html"], repo)
    html = (repo / "plots_html" / "index.html").read_text()
    assert "loss" in html
