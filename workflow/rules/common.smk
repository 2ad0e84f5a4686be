# Helpers shared by the rules.

import json
import os
import shutil
from pathlib import Path

from geogfm.core.lineage import stage_code

# The conda environment of every rule (used with --sdm conda).
ENV = "../envs/geogfm.yaml"


def code(stage):
    """The package files `geogfm <stage>` imports: inputs, so that editing them reruns the stage."""
    return stage_code(stage, workflow.basedir)


# Tile caching: one job that builds every cell (tile_cache.workers threads), or, with
# `--config tile_cache_fanout=true` (set in the SLURM profile), one job per cell: the checkpoint
# tile_cache_plan lists the cells, tile_cache_cell builds each into data/cache_cells/<id>, and
# tile_cache gathers them into data/cache (hard links: no copy), the same bytes either way.
# (GEOGFM_TILE_CACHE_FANOUT: how the onsuccess handler below tells dvc_commit.py's summary.)
_fanout = config.get("tile_cache_fanout", os.environ.get("GEOGFM_TILE_CACHE_FANOUT", False))
TILE_CACHE_FANOUT = {"true": True, "1": True, "false": False, "0": False}.get(str(_fanout).lower())
if TILE_CACHE_FANOUT is None:
    raise ValueError(
        f"tile_cache_fanout={_fanout!r}: give true or false, e.g. --config tile_cache_fanout=true"
    )
TILE_CACHE_WORKERS = 1 if TILE_CACHE_FANOUT else config["tile_cache"]["workers"]


def tile_cache_cells(wildcards):
    """The cell folders tile_cache gathers; none when it builds the cells itself."""
    if not TILE_CACHE_FANOUT:
        return []
    plan = json.loads(Path(checkpoints.tile_cache_plan.get().output[0]).read_text())
    return [f"data/cache_cells/{c['id']}" for c in plan["cells"]]


def tile_cache_cell_mem_mb(wildcards, attempt):
    """The plan's memory estimate for this cell's job, doubled when SLURM retries it."""
    plan = json.loads(Path("data/cache_plan.json").read_text())
    mem = {c["id"]: c["mem_mb"] for c in plan["cells"]}.get(wildcards.cell, 4000)
    return mem * attempt


onsuccess:
    # Record what this run built in dvc.lock, so that `dvc repro` finds it up to date.
    if shutil.which("dvc") and Path(".dvc").is_dir():
        fanout = f"GEOGFM_TILE_CACHE_FANOUT={str(TILE_CACHE_FANOUT).lower()}"  # the same DAG
        shell(f"{fanout} python workflow/scripts/dvc_commit.py")
