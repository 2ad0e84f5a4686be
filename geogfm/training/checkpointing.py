"""Training-state checkpoints: everything needed to continue a run bit for bit after a crash.

A checkpoint is a directory ``<dir>/step_<step:08d>/`` holding ``state.pt`` and ``meta.json``,
written under a temporary name and renamed into place (:func:`geogfm.core.io.atomic_dir`), so a
kill at any moment leaves the previous checkpoints whole. Only the last ``keep`` are kept.

``state.pt`` holds the model (the plain module, not a DDP or compiled wrapper), the optimizer,
the LR scheduler, the gradient scaler, the EMA, the step, where the next batch comes from (epoch
and batch within it: the sampler's position), every RNG state (Python, NumPy, torch, CUDA, the
mask generator), the metrics logged so far, and the ``extra`` entries the caller gives (the
config, band list and statistics). Data workers need no RNG state: their draws are seeded by the
batch's place in the run (:class:`geogfm.data.loaders.EpochSeededDataset`).
"""

from __future__ import annotations

import errno
import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geogfm.core.errors import DataError
from geogfm.core.io import atomic_dir, write_json
from geogfm.training.checkpoint import versions

__all__ = ["Checkpointer", "config_differences", "get_rng_state", "set_rng_state"]

log = logging.getLogger(__name__)

_FORMAT = 1
_NAME = re.compile(r"^step_(\d{8})$")


def get_rng_state(generator: torch.Generator | None = None) -> dict:
    """The global RNG states (Python, NumPy, torch, CUDA) and ``generator``'s, as tensors/lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore :func:`get_rng_state` (CUDA states only where devices are present)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if generator is not None:
        generator.set_state(state["generator"])


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _to_json(obj: Any) -> Any:
    """``obj`` without tensors (they become shape strings), for ``meta.json``."""
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return f"tensor{tuple(obj.shape)}"
    return obj


class Checkpointer:
    """Writes, lists, rotates and loads training-state checkpoints in one directory.

    Args:
        directory: where ``step_<step>/`` checkpoints go.
        every: steps between checkpoints (None: only at epoch ends).
        keep: how many of the newest checkpoints to keep (>= 1).
        extra: entries stored in every checkpoint and its ``meta.json`` (config, bands, stats).
        save: the function writing ``state.pt`` (``torch.save``); a test may pass one that fails.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        every: int | None = None,
        keep: int = 3,
        extra: dict | None = None,
        save: Callable[[Any, Path], None] = torch.save,
    ):
        if keep < 1:
            raise ValueError(f"keep is {keep}; keep at least the newest checkpoint (keep >= 1)")
        self.directory, self.every, self.keep = Path(directory), every, keep
        self.extra = dict(extra or {})
        self._save = save

    def due(self, step: int) -> bool:
        """Whether ``step`` (steps done) is a ``every``-step checkpoint."""
        return self.every is not None and step % self.every == 0

    def list(self) -> list[Path]:
        """The checkpoints present, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and _NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The newest checkpoint, or None."""
        found = self.list()
        return found[-1] if found else None

    def save(self, state: dict, *, step: int, meta: dict | None = None) -> Path:
        """Write ``state`` (plus ``extra``) as checkpoint ``step``, then drop the oldest.

        Raises:
            OSError: ``ENOSPC`` when the disk fills up, naming the directory and the free space;
                the previous checkpoints are left intact.
        """
        path = self.directory / f"step_{step:08d}"
        payload = {"format": _FORMAT, "versions": versions(), **self.extra, **state}
        info = {**_to_json({k: v for k, v in payload.items() if k not in _BULKY}), **(meta or {})}
        try:
            with atomic_dir(path) as tmp:
                self._save(payload, tmp / "state.pt")
                write_json(tmp / "meta.json", info)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            free = shutil.disk_usage(self.directory).free
            previous = self.latest()
            raise OSError(
                errno.ENOSPC,
                f"disk full while writing checkpoint {path} ({free / 2**20:.1f} MiB free on "
                f"the file system of {self.directory}); free space there or lower "
                f"train.keep_checkpoints ({self.keep}); the previous checkpoint "
                f"{previous or '(none)'} is intact",
            ) from err
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s written", path)
        return path

    def load(self, path: str | Path | None = None) -> dict:
        """Load checkpoint ``path`` (a ``step_*`` directory; default the newest) on the CPU.

        Raises:
            FileNotFoundError: when there is no checkpoint.
            DataError: when the file is not a geogfm training checkpoint.
        """
        path = Path(path) if path is not None else self.latest()
        if path is None or not (path / "state.pt").is_file():
            raise FileNotFoundError(
                f"no training checkpoint at {path or self.directory}; start a run first"
            )
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _FORMAT or "step" not in state:
            raise DataError(f"{path} is not a geogfm training checkpoint (format {_FORMAT})")
        return state

    def meta(self, path: str | Path) -> dict:
        """A checkpoint's ``meta.json``."""
        return json.loads((Path(path) / "meta.json").read_text())


#: Entries of a checkpoint left out of its ``meta.json``.
_BULKY = ("model", "optimizer", "scheduler", "scaler", "ema", "rng", "history", "events")
