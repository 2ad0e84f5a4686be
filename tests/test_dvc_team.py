"""DVC for a team: a shared remote, variants that reuse the data, and the comparisons DVC offers.

In a temporary copy of the repository (git + DVC, the CI preset as params.yaml) and a remote in a
temporary folder: ``dvc repro`` builds the DAG, ``dvc push`` uploads it, a teammate's fresh clone
``dvc pull``s it and finds everything up to date; ``dvc exp run -S model.mask_ratio=0.9`` reruns
pretraining and only what follows it, ``dvc exp show`` lists the variant with its metrics, and
``dvc plots show`` renders the loss curves.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import test_pipeline_e2e as e2e
import yaml

from geogfm.core.io import sha256_file

ENV, _run = e2e.ENV, e2e._run
repo = e2e.repo  # the fixture: a temporary git copy of the repository with the CI preset
DATA_STAGES = {"demo_catalog", "stac_query", "tile_cache", "patch_manifest", "channel_stats"}

pytestmark = pytest.mark.slow


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", out))


def _flatten(obj, prefix=""):
    if not isinstance(obj, dict):
        return {prefix: obj}
    out = {}
    for key, val in obj.items():
        out |= _flatten(val, f"{prefix}.{key}" if prefix else key)
    return out


def _downstream(root: Path, stage: str) -> set[str]:
    """``stage`` and every dvc.yaml stage that depends, directly or not, on its outputs."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outs = {
        name: {next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots")
               for o in st.get(k, [])}
        for name, st in stages.items()
    }  # fmt: skip
    found, grew = {stage}, True
    while grew:
        produced = set().union(*(outs[s] for s in found))
        new = {n for n, st in stages.items() if n not in found and produced & set(st["deps"])}
        found |= new
        grew = bool(new)
    return found


def test_shared_remote_is_configured():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        ["dvc", "remote", "list"], cwd=root, env=ENV, capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^shared\s+/\S+\s+\(default\)$", out, re.M), out


def test_push_pull_variant_exp_show_and_plots(repo, tmp_path):
    remote = tmp_path / "remote"
    out = _run(["dvc", "repro"], repo)
    assert DATA_STAGES | {"pretrain", "figures", "evaluate", "model_card"} <= _ran(out), out
    # the model card gathers the evaluation's metrics with their intervals
    card = (repo / "results/model_card.md").read_text()
    flat = _flatten(json.loads((repo / "results/evaluate/metrics.json").read_text()))
    key = next(k for k in flat if f"{k}_low" in flat and f"{k}_high" in flat)
    interval = f"[{flat[key + '_low']:.4g}, {flat[key + '_high']:.4g}]"
    assert f"| {key} | {flat[key]:.4g} | {interval} |" in card
    _run(["git", "add", "dvc.lock"], repo)
    _run(["git", "commit", "-q", "-m", "tiny run"], repo)

    # the team's remote (here a temporary folder; --local: not in the committed config)
    _run(["dvc", "remote", "add", "--local", "-d", "tmp", str(remote)], repo)
    pushed = _run(["dvc", "push"], repo)
    assert re.search(r"\d+ files? pushed", pushed), pushed

    # a teammate: a fresh clone has the code and dvc.lock, and pulls the data and the checkpoint
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run(["dvc", "remote", "add", "--local", "-d", "tmp", str(remote)], clone)
    assert not (clone / "results/pretrain/checkpoint.pt").exists()
    _run(["dvc", "pull"], clone)
    for rel in ("results/pretrain/checkpoint.pt", "results/stats/channel_stats.json",
                "data/manifests/patches.parquet", "results/model_card.md"):  # fmt: skip
        assert sha256_file(clone / rel) == sha256_file(repo / rel), rel
    assert "up to date" in _run(["dvc", "status"], clone)
    assert _ran(_run(["dvc", "repro"], clone)) == set()  # nothing to rebuild

    # a variant reruns pretraining and only what follows it; the data stages are reused
    out = _run(["dvc", "exp", "run", "-S", "model.mask_ratio=0.9"], repo)
    ran = _ran(out)
    assert "pretrain" in ran and ran <= _downstream(repo, "pretrain"), ran
    assert not ran & DATA_STAGES, out
    metrics = json.loads((repo / "results/pretrain/metrics.json").read_text())
    shown = _run(["dvc", "exp", "show", "--no-pager", "--md"], repo)
    assert "train_loss" in shown and "model.mask_ratio" in shown
    (row,) = [line for line in shown.splitlines() if line.startswith("| └──")]  # the variant
    assert "| 0.9 " in row and f"| {metrics['train_loss']:.5g} " in row, shown
    assert "| 0.75 " in shown  # the baseline's row is there too

    _run(["dvc", "plots", "show", "-o", "plots_html"], repo)
    html = (repo / "plots_html" / "index.html").read_text()
    assert "train/loss" in html and "val/loss" in html
