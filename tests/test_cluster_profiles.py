"""The Snakemake profiles plan the DAG: SLURM (per-rule resources) and local.

SLURM itself is not here: a dry run with the SLURM profile loads the real executor plugin
(snakemake-executor-plugin-slurm), applies the profile's resources to every job and plans the
whole DAG without submitting anything.
"""

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
PROFILES = ROOT / "workflow" / "profiles"


def _dry_run(profile: str, target: str = "pretrain") -> str:
    proc = subprocess.run(
        [BIN / "snakemake", "--profile", str(PROFILES / profile), "-n", "--forceall", target],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _resources(dry_run: str) -> dict[str, dict[str, str]]:
    """Each planned rule's resources, as the dry run prints them."""
    found, rule = {}, None
    for line in dry_run.splitlines():
        if m := re.match(r"^(?:localrule|rule|localcheckpoint|checkpoint) (\w+):$", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^    resources: (.*)$", line)):
            found[rule] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
    return found


@pytest.fixture(scope="module")
def slurm_plan() -> str:
    return _dry_run("slurm")


def test_slurm_profile_uses_the_slurm_executor(slurm_plan):
    config = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())
    assert config["executor"] == "slurm"
    assert f"Using profile {PROFILES / 'slurm'}" in slurm_plan


def test_slurm_dry_run_plans_the_whole_dag(slurm_plan):
    planned = set(_resources(slurm_plan))
    data = {"demo_catalog", "stac_query", "tile_cache", "patch_manifest", "channel_stats"}
    assert data | {"pretrain_mae", "figures"} <= planned
    # tile caching one job per cell: the plan's checkpoint (the cells' jobs are planned once it
    # ran, see tests/test_tile_cache_fanout_workflow.py), then tile_cache gathers
    assert "tile_cache_plan" in planned


def test_slurm_resources_per_rule(slurm_plan):
    res = _resources(slurm_plan)
    assert res["pretrain_mae"]["gpu"] == "1"  # --gpus=1
    assert int(res["pretrain_mae"]["runtime"]) >= 600
    assert res["tile_cache"]["cpus_per_task"] == "1"  # it gathers the cells' jobs
    assert res["channel_stats"]["cpus_per_task"] == "8"
    for rule in ("tile_cache", "channel_stats", "figures", "stac_query"):
        assert "gpu" not in res[rule], rule  # only training asks for a GPU
    assert res["stac_query"]["cpus_per_task"] == "1"  # the defaults


def test_local_profile_plans_the_same_jobs(slurm_plan):
    local = _dry_run("local")
    assert set(_resources(local)) == set(_resources(slurm_plan)) - {"tile_cache_plan"}
    # one machine: tile_cache builds every cell itself, with tile_cache.workers threads
    workers = yaml.safe_load((ROOT / "params.yaml").read_text())["tile_cache"]["workers"]
    assert _resources(local)["tile_cache"]["cpus_per_task"] == str(workers)
    assert _resources(local)["pretrain_mae"]["gpu"] == "1"
