"""Tile caching fanned out, one Snakemake job per cell, in a temporary copy of the repository.

With ``--config tile_cache_fanout=true`` (which the SLURM profile sets) the checkpoint
``tile_cache_plan`` lists the cells, ``tile_cache_cell`` builds each and ``tile_cache`` gathers
them into ``data/cache``. The CI preset, with 128 px cells (4 cells), runs for real on this machine;
SLURM itself is not here, so its profile is checked with a dry run once the plan exists. (The
stage's modes themselves, fast and in process: tests/stages/test_tile_cache_fanout.py.)
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_repo

from geogfm.core.io import sha256_file
from geogfm.core.lineage import tree_sha256

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
FANOUT = ["--config", "tile_cache_fanout=true"]  # (after the targets: --config takes the rest)


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{out[-4000:]}"
    return out


def _snakemake(repo: Path, *args: str) -> str:
    return _run([str(BIN / "snakemake"), *args], repo)


def _jobs(log: str) -> list[dict]:
    """Each job a (dry) run printed: its rule, wildcards and resources."""
    jobs = []
    for line in log.splitlines():
        if m := re.match(r"^(?:localrule|rule|localcheckpoint|checkpoint) (\w+):$", line):
            jobs.append({"rule": m.group(1), "wildcards": {}, "resources": {}})
        elif jobs and (m := re.match(r"^    (wildcards|resources): (.*)$", line)):
            jobs[-1][m.group(1)] = dict(kv.split("=", 1) for kv in m.group(2).split(", "))
    return jobs


def _cell_jobs(log: str) -> list[str]:
    return [j["wildcards"]["cell"] for j in _jobs(log) if j["rule"] == "tile_cache_cell"]


def _digests(cache: Path) -> dict[str, str]:
    """What tests/test_bit_for_bit.py compares: every store's tree hash, and index.json."""
    found = {p.name: tree_sha256(p) for p in sorted(cache.glob("*.zarr"))}
    found["index.json"] = sha256_file(cache / "index.json")
    return found


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _copy(dst: Path, dvc: bool) -> None:
    """The repository's files (what git tracks or would track), DVC's or the others."""
    copy_repo(dst, keep=lambda rel: rel.startswith(".dvc/") == dvc)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy without DVC at first (Snakemake's onsuccess handler commits to DVC where it is)."""
    dst = tmp_path_factory.mktemp("fanout") / "repo"
    _copy(dst, dvc=False)
    params = (ROOT / "configs" / "ci_tiny.yaml").read_text()
    assert "  cell_size: 64\n" in params
    (dst / "params.yaml").write_text(params.replace("  cell_size: 64\n", "  cell_size: 128\n"))
    return dst


@pytest.fixture(scope="module")
def plan(repo) -> dict:
    """The checkpoint run for real (with the data stages before it): the cells are known."""
    _snakemake(repo, "--cores", "2", "data/cache_plan.json", *FANOUT)
    return json.loads((repo / "data/cache_plan.json").read_text())


@pytest.fixture(scope="module")
def fanned(repo, plan) -> dict:
    """data/cache built one job per cell, and data/single built by one `geogfm tile_cache`."""
    _copy(repo, dvc=True)  # now with DVC, in a git repository, as a user's clone
    git = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "tiny"]):
        subprocess.run(
            ["git", *args], cwd=repo, env={**ENV, **git, "GIT_COMMITTER_EMAIL": "t@t.invalid"},
            check=True,
        )  # fmt: skip
    log = _snakemake(repo, "--cores", "2", "data/cache", *FANOUT)
    _run([str(BIN / "geogfm"), "tile_cache", "--out", "data/single"], repo)
    return {"log": log, "cells": _mtimes(repo / "data/cache_cells")}


def test_the_slurm_profile_plans_one_job_per_cell_with_its_resources(repo, plan):
    dry = _snakemake(repo, "--profile", "workflow/profiles/slurm", "-n", "pretrain")
    jobs = _jobs(dry)
    cells = {j["wildcards"]["cell"]: j["resources"] for j in jobs if j["rule"] == "tile_cache_cell"}
    assert len(plan["cells"]) == 4 and sorted(cells) == sorted(c["id"] for c in plan["cells"])
    for cell in plan["cells"]:
        res = cells[cell["id"]]
        assert res["mem_mb"] == str(cell["mem_mb"]) and res["cpus_per_task"] == "1", res
        assert res["runtime"] == "60" and "gpu" not in res
    (gather,) = [j["resources"] for j in jobs if j["rule"] == "tile_cache"]
    assert gather["cpus_per_task"] == "1"  # it only links the cells' stores
    planned = {j["rule"] for j in jobs}
    assert {"patch_manifest", "channel_stats", "pretrain_mae"} <= planned
    assert "tile_cache_plan" not in planned  # done, and up to date


@pytest.mark.slow  # a real Snakemake run, one process per cell (~20 s)
def test_the_fanned_out_cache_equals_one_process_byte_for_byte(repo, plan, fanned):
    assert sorted(_cell_jobs(fanned["log"])) == sorted(c["id"] for c in plan["cells"])
    cache, single = repo / "data/cache", repo / "data/single"
    assert _digests(cache) == _digests(single)
    names = {p.name for p in cache.iterdir()} - {".snakemake_timestamp"}
    assert names == {p.name for p in single.iterdir()}
    # and DVC records it, as after a run in one job: `dvc repro` finds it up to date
    assert "dvc commit: demo_catalog, stac_query, tile_cache\n" in fanned["log"]
    assert "up to date" in _run([str(BIN / "dvc"), "status", "tile_cache"], repo)


@pytest.mark.slow  # a real Snakemake run, one process per cell (~20 s)
def test_a_second_dry_run_has_nothing_to_do(repo, fanned):
    for args in (["--cores", "2", "-n", "data/cache", *FANOUT],
                 ["--profile", "workflow/profiles/slurm", "-n", "data/cache"]):  # fmt: skip
        assert "Nothing to be done" in _snakemake(repo, *args)


@pytest.mark.slow  # a real Snakemake run, one process per cell (~20 s)
def test_a_lost_cell_alone_is_rebuilt(repo, plan, fanned):
    # a cell job killed before the gather ran (or its output removed): only that cell runs again
    lost = plan["cells"][1]["id"]
    shutil.rmtree(repo / "data/cache")
    shutil.rmtree(repo / "data/cache_cells" / lost)
    log = _snakemake(repo, "--cores", "2", "data/cache", *FANOUT)
    assert _cell_jobs(log) == [lost]
    assert [j["rule"] for j in _jobs(log)] == ["tile_cache_cell", "tile_cache"]
    after = _mtimes(repo / "data/cache_cells")
    kept = {k: v for k, v in fanned["cells"].items() if not k.startswith(lost)}
    assert {k: after[k] for k in kept} == kept  # the other cells: untouched
    assert after.keys() == fanned["cells"].keys()
    assert _digests(repo / "data/cache") == _digests(repo / "data/single")
