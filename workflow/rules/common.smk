# Helpers shared by the rules.

import shutil
from pathlib import Path

from geogfm.core.lineage import stage_code

# The conda environment of every rule (used with --sdm conda).
ENV = "../envs/geogfm.yaml"


def code(stage):
    """The package files `geogfm <stage>` imports: inputs, so that editing them reruns the stage."""
    return stage_code(stage, workflow.basedir)


onsuccess:
    # Record what this run built in dvc.lock, so that `dvc repro` finds it up to date.
    if shutil.which("dvc") and Path(".dvc").is_dir():
        shell("python workflow/scripts/dvc_commit.py")
