"""The Snakefile and dvc.yaml describe one DAG: same stages, commands, inputs, outputs, params."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _expand(paths: list[str]) -> set[str]:
    """DVC may list a code directory where Snakemake lists its files: compare files."""
    out = set()
    for p in paths:
        if (ROOT / p).is_dir() and p.startswith("geogfm"):
            out |= {str(f.relative_to(ROOT)) for f in (ROOT / p).rglob("*.py")}
        else:
            out.add(p)
    return out


def _dvc_stages() -> dict[str, dict]:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stages = {}
    for name, st in dvc.items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in st.get("outs", [])]
        for kind in ("metrics", "plots"):
            outs += [next(iter(o)) if isinstance(o, dict) else o for o in st.get(kind, [])]
        stages[name] = {
            "cmd": " ".join(st["cmd"].split()),
            "deps": _expand(st["deps"]),
            "outs": set(outs),
            "params": set(st["params"]),
        }
    return stages


def _snakemake_jobs() -> dict[str, dict]:
    """Every job of `snakemake all`, from a forced dry run: rule, inputs, outputs, shell command."""
    proc = subprocess.run(
        [BIN / "snakemake", "--forceall", "--dry-run", "--printshellcmds", "--cores", "1", "all"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs, current = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.match(r"^(?:localrule|rule) (\w+):$", line):
            current = jobs.setdefault(m.group(1), {"input": set(), "output": set(), "cmd": ""})
        elif current is not None and (m := re.match(r"^    (input|output|log): (.*)$", line)):
            current.setdefault(m.group(1), set()).update(m.group(2).split(", "))
        elif current is not None and line.startswith("Shell command: geogfm "):
            current["cmd"] = " ".join(line.removeprefix("Shell command: ").split())
    return jobs


def _snakemake_params() -> dict[str, set[str]]:
    """The params.yaml keys each rule receives through `params:` (from the rule source)."""
    keys = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), re.M):
            found = set()
            for ref in re.findall(r'config((?:\["\w+"\])+)', body):
                found.add(".".join(re.findall(r'"(\w+)"', ref)))
            keys[rule] = found
    return keys


@pytest.fixture(scope="module")
def jobs():
    return _snakemake_jobs()


def _by_command(jobs: dict) -> dict[str, dict]:
    """Match Snakemake jobs to DVC stages by the geogfm subcommand they run."""
    return {
        job["cmd"].split()[1]: {**job, "rule": rule} for rule, job in jobs.items() if job["cmd"]
    }


def test_same_stages(jobs):
    assert set(_by_command(jobs)) == set(_dvc_stages())


@pytest.mark.parametrize("stage", list(_dvc_stages()))
def test_same_command_inputs_outputs_and_params(jobs, stage):
    dvc = _dvc_stages()[stage]
    smk = _by_command(jobs)[stage]
    assert smk["cmd"] == dvc["cmd"]
    assert smk["input"] == dvc["deps"], "inputs differ"
    assert smk["output"] == dvc["outs"], "outputs differ"
    assert _snakemake_params()[smk["rule"]] == dvc["params"], "params differ"


def test_every_rule_has_a_log_and_the_workflow_lints_clean():
    proc = subprocess.run(
        [BIN / "snakemake", "--lint"], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_pretrain_target_ends_with_checkpoint_and_figures(jobs):
    outputs = set().union(*(j["output"] for j in jobs.values()))
    assert "results/pretrain/checkpoint.pt" in outputs
    assert "results/figures/reconstructions.png" in outputs
