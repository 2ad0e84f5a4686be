"""Run the ``pretrain`` stage in a child process, optionally SIGKILLing itself at a step.

``python _pretrain_child.py ROOT OUT OVERRIDES_JSON [KILL_AT_STEP]``: ``ROOT`` holds the tiny data
stages' outputs (``tests/conftest.py: run_data_stages``), ``OVERRIDES_JSON`` maps sections to keys
set over ``configs/ci_tiny.yaml``. With ``KILL_AT_STEP`` the process kills itself with a real
``SIGKILL`` from the step callback of that step (after the checkpoints of the earlier steps).
"""

import json
import os
import signal
import sys
from pathlib import Path

import yaml

from geogfm.core.config import config_from_dict
from geogfm.stages import pretrain

PROJECT = Path(__file__).resolve().parents[2]


def main() -> None:
    root, out, overrides = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    raw = yaml.safe_load((PROJECT / "configs" / "ci_tiny.yaml").read_text())
    for section, keys in overrides.items():
        raw[section].update(keys)
    cfg = config_from_dict(raw)
    if kill_at is not None:
        fit = pretrain.fit

        def killing_fit(*args, callbacks=(), **kwargs):
            def kill(event, metrics):
                if event == "step" and metrics["step"] == kill_at and not metrics.get("replayed"):
                    os.kill(os.getpid(), signal.SIGKILL)

            return fit(*args, callbacks=[*callbacks, kill], **kwargs)

        pretrain.fit = killing_fit
    pretrain.run(
        cfg,
        cache=root / "data/cache",
        manifest=root / "data/manifests/patches.parquet",
        stats=root / "results/stats/channel_stats.json",
        out=out,
    )


if __name__ == "__main__":
    main()
