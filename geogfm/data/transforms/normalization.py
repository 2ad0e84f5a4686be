"""Per-band normalisation with the statistics the ``channel_stats`` stage wrote.

Statistics are artifacts, never literals: :func:`load_stats` reads ``channel_stats.json`` and every
transform here picks its band's values by name, so the band order of a dataset and of the
statistics file may differ. Three normalisations, all ``dict -> dict`` on reflectance samples:

- :class:`Normalize`: z-score, ``(x - mean) / std``, invalid pixels set to 0;
- :class:`PercentileClip`: clip each band to two of its percentiles (e.g. 2 and 98 %);
- :class:`DynamicRange`: map each band's ``[low, high]`` (percentiles, or min/max) onto [0, 1].

:class:`DeviceNormalize` is the z-score (with an optional percentile clip) for batches: the loader
ships the cache's uint16 DN, 4x fewer bytes than float32 through worker pipes and host-to-device
copies, and the training loop turns them into float32 z-scores on the training device in one
multiply-add (``DN * scale / std + (offset - mean) / std``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from geogfm.core.errors import DataError

__all__ = ["DeviceNormalize", "DynamicRange", "Normalize", "PercentileClip", "load_stats"]

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


def _percentile(stats: dict, q: float | None, bands: Sequence[str], bound: str) -> list[float]:
    """Per band, percentile ``q`` of the statistics, or the ``min``/``max`` when ``q`` is None."""
    idx = [stats["bands"].index(b) for b in bands]
    if q is None:
        return [float(stats[bound][i]) for i in idx]
    table = stats.get("percentiles", {})
    key = next((k for k in table if float(k) == float(q)), None)
    if key is None:
        raise DataError(
            f"percentile {q} is not in the channel statistics (which have {sorted(table)}); add "
            "it to channel_stats.percentiles and rerun `geogfm channel_stats`"
        )
    return [float(table[key][i]) for i in idx]


def _band_bounds(stats, bands, low, high) -> tuple[torch.Tensor, torch.Tensor]:
    _pick(stats, bands, "(given)")
    lo = torch.tensor(_percentile(stats, low, bands, "min"), dtype=torch.float32)
    hi = torch.tensor(_percentile(stats, high, bands, "max"), dtype=torch.float32)
    if not (hi > lo).all():
        flat = [b for b, a, z in zip(bands, lo, hi, strict=True) if not z > a]
        raise DataError(f"band(s) {flat} have high <= low percentile ({low}, {high}) in the stats")
    return lo[:, None, None], hi[:, None, None]  # (C, 1, 1)


class PercentileClip:
    """Clip each band to ``[p_low, p_high]``, its percentiles in the statistics.

    A ``dict -> dict`` transform on ``sample["image"]`` (C, H, W) reflectance; ``None`` for a bound
    uses the band's ``min``/``max``.

    Args:
        stats: a statistics dict.
        bands: the C band names of the images, in image order.
        low: lower percentile (a key of ``stats["percentiles"]``), e.g. 2.0.
        high: upper percentile, e.g. 98.0.

    Raises:
        DataError: if a band or a percentile is missing from ``stats``.
    """

    def __init__(
        self,
        stats: dict,
        bands: Sequence[str],
        *,
        low: float | None = 2.0,
        high: float | None = 98.0,
    ):
        self.bands, self.low, self.high = list(bands), low, high
        self.lo, self.hi = _band_bounds(stats, bands, low, high)

    def __call__(self, sample: dict) -> dict:
        """Clip ``sample["image"]``; other keys are passed through."""
        image = torch.as_tensor(sample["image"], dtype=torch.float32)  # (C, H, W)
        return {**sample, "image": torch.clamp(image, self.lo, self.hi)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bands={self.bands}, low={self.low}, high={self.high})"


class DynamicRange(PercentileClip):
    """Map each band's ``[p_low, p_high]`` linearly onto [0, 1], clipping outside; invalid -> 0.

    The usual normalisation for display and for models trained on [0, 1] inputs. ``None`` for a
    bound uses the band's ``min``/``max`` (no clipping on that side).

    Args:
        stats: a statistics dict.
        bands: the C band names of the images, in image order.
        low: lower percentile, e.g. 2.0, or None for the minimum.
        high: upper percentile, e.g. 98.0, or None for the maximum.
    """

    def __call__(self, sample: dict) -> dict:
        """Rescale ``sample["image"]``; other keys are passed through."""
        image = torch.as_tensor(sample["image"], dtype=torch.float32)  # (C, H, W)
        image = torch.clamp((image - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        if "valid" in sample:
            valid = torch.as_tensor(sample["valid"], dtype=torch.bool)  # (H, W)
            image = torch.where(valid[None], image, torch.zeros((), dtype=image.dtype))
        return {**sample, "image": image}


class DeviceNormalize:
    """Batch z-score of cached DN on the training device: ``(DN * scale + offset - mean) / std``.

    Call it on a batch already on the device: ``image`` (B, C, H, W) or (B, T, C, H, W) of any
    dtype (the loader's uint16 DN; float reflectance with ``scale=1, offset=0``) and ``valid``
    (B, H, W) or (B, T, H, W); returns float32 z-scores with invalid pixels set to 0, the mean
    of every band, as :class:`Normalize` does per sample. With ``clip``, reflectance is first
    clipped to two percentiles of the statistics (:class:`PercentileClip`).

    Args:
        stats: a statistics dict (reflectance units, as ``channel_stats`` writes).
        bands: the C band names of the images, in image order.
        scale: reflectance per DN of the images (the cache's ``scale``).
        offset: reflectance at DN 0 (the cache's ``offset``).
        clip: ``(low, high)`` percentiles to clip to before the z-score, or None.

    Raises:
        DataError: if a band (or a clip percentile) is missing from ``stats`` or has std 0.
    """

    def __init__(
        self,
        stats: dict,
        bands: Sequence[str],
        *,
        scale: float = 1.0,
        offset: float = 0.0,
        clip: tuple[float | None, float | None] | None = None,
    ):
        mean, std = _pick(stats, bands, "(given)")
        self.bands, self.scale, self.offset, self.clip = list(bands), scale, offset, clip
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        # z = DN * a + b, folded in float64 once
        coef = [(scale / s).float(), ((offset - m) / s).float()]
        if clip is not None:
            lo, hi = _band_bounds(stats, bands, *clip)
            coef += [
                (lo[:, 0, 0].double() - m).div(s).float(),
                (hi[:, 0, 0].double() - m).div(s).float(),
            ]
        self._coef = torch.stack(coef)[:, :, None, None]  # (2 or 4, C, 1, 1)
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, image: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise a batch on its device; see the class docstring for shapes."""
        assert image.shape[-3] == len(self.bands), (tuple(image.shape), self.bands)
        coef = self._on.get(image.device)
        if coef is None:
            coef = self._on[image.device] = self._coef.to(image.device)
        z = torch.addcmul(coef[1], image.to(torch.float32), coef[0])  # (..., C, H, W)
        if self.clip is not None:
            z = torch.maximum(torch.minimum(z, coef[3]), coef[2])
        if valid is not None:
            z = torch.where(valid.unsqueeze(-3), z, torch.zeros((), dtype=z.dtype, device=z.device))
        return z

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_on": {}}  # device copies are not pickled

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bands={self.bands}, scale={self.scale}, offset={self.offset}, "
            f"clip={self.clip})"
        )
