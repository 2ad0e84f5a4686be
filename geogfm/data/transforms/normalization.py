"""Per-band normalisation with the statistics the ``channel_stats`` stage wrote.

Statistics are artifacts, never literals: :func:`load_stats` reads ``channel_stats.json`` and
:class:`Normalize` picks the mean and std of each band by name, so the band order of a dataset and
of the statistics file may differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from geogfm.core.errors import DataError

__all__ = ["Normalize", "load_stats"]

_MAKE_STATS = "run `geogfm channel_stats` or `snakemake --cores 2 channel_stats`"


def _pick(stats: dict, bands: Sequence[str], source: str) -> tuple[list[float], list[float]]:
    for key in ("bands", "mean", "std"):
        if key not in stats:
            raise DataError(f"channel statistics {source} lack {key!r}; {_MAKE_STATS}")
    missing = [b for b in bands if b not in stats["bands"]]
    if missing:
        raise DataError(
            f"band(s) {missing} are not in the channel statistics {source} (which has "
            f"{stats['bands']}); add them to tile_cache.bands and rerun the data stages, or "
            "remove them from data.bands"
        )
    idx = [stats["bands"].index(b) for b in bands]
    mean = [float(stats["mean"][i]) for i in idx]
    std = [float(stats["std"][i]) for i in idx]
    flat = [b for b, s in zip(bands, std, strict=True) if not s > 0]
    if flat:
        raise DataError(
            f"band(s) {flat} have std 0 in the channel statistics {source}: a constant band cannot "
            "be normalised; remove it from data.bands"
        )
    return mean, std


def load_stats(path: str | Path, bands: Sequence[str]) -> dict:
    """Read ``channel_stats.json`` and check it covers ``bands``.

    Args:
        path: the statistics file.
        bands: the bands that will be normalised.

    Returns:
        The statistics dict, as written by the stage.

    Raises:
        FileNotFoundError: if the file is missing (naming the stage that makes it).
        DataError: if a band is missing or has std 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"channel statistics {str(path)!r} not found; {_MAKE_STATS}")
    stats = json.loads(path.read_text())
    _pick(stats, bands, str(path))
    return stats


class Normalize:
    """``(x - mean) / std`` per band, invalid pixels set to 0 (the mean of every band).

    A ``dict -> dict`` transform: reads ``sample["image"]`` (C, H, W) in reflectance and, if
    present, ``sample["valid"]`` (H, W) bool; returns a new dict with ``image`` float32 normalised.

    Args:
        stats: a statistics dict (``channel_stats.json`` or a checkpoint's copy).
        bands: the C band names of the images, in image order.

    Raises:
        DataError: if a band is missing from ``stats`` or has std 0.
    """

    def __init__(self, stats: dict, bands: Sequence[str]):
        mean, std = _pick(stats, bands, "(given)")
        self.bands = list(bands)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, sample: dict) -> dict:
        """Normalise ``sample["image"]``; other keys are passed through."""
        image = torch.as_tensor(sample["image"], dtype=torch.float32)  # (C, H, W)
        assert image.shape[0] == len(self.bands), (tuple(image.shape), self.bands)
        image = (image - self.mean) / self.std
        if "valid" in sample:
            valid = torch.as_tensor(sample["valid"], dtype=torch.bool)  # (H, W)
            image = torch.where(valid[None], image, torch.zeros((), dtype=image.dtype))
        return {**sample, "image": image}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bands={self.bands})"
