"""Record in dvc.lock the stages Snakemake brought up to date (run by the onsuccess handler).

DVC trusts only dvc.lock, which Snakemake does not write: without this, a `dvc repro` after a
Snakemake run would redo every stage. A stage is committed only when Snakemake's own summary says
every one of its outputs is up to date ("no update" planned), so a stale output is never recorded.
"""

import subprocess
import sys

import yaml


def _outs(stage: dict) -> list[str]:
    paths = []
    for kind in ("outs", "metrics", "plots"):
        paths += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])]
    return paths


def main() -> int:
    summary = subprocess.run(
        [sys.executable, "-m", "snakemake", "--summary", "--nolock", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fresh = {}
    for line in summary.splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 6:
            fresh[cols[0]] = cols[5] == "no update"
    with open("dvc.yaml") as f:
        stages = yaml.safe_load(f)["stages"]
    done = [name for name, st in stages.items() if all(fresh.get(o) for o in _outs(st))]
    if done:
        print(f"dvc commit: {', '.join(done)}", file=sys.stderr)
        subprocess.run(["dvc", "commit", "--force", "--quiet", *done], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
