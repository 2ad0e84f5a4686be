"""Which dates of a location's time series make one multi-date sample.

A location (a window of a cell) has a series of candidate frames: their timestamps and the fraction
of their pixels that are valid. A sampler picks ``num_frames`` of them, in time order, from the
frames whose valid fraction is at least ``min_valid_fraction``:

- :class:`FixedStride` -- every ``stride``-th eligible frame, from the first or a random start;
- :class:`Seasonal` -- one frame per season (``num_frames`` equal groups of months);
- :class:`RandomK` -- ``num_frames`` eligible frames drawn at random.

``select(times, valid_fraction, rng)`` returns the indices of the picked frames, or ``None`` when
the series cannot give a sample (too few eligible frames, a season without one). With ``rng=None``
every sampler is deterministic, which is what validation uses; with a generator, the random ones
draw afresh, which is what training uses. ``select(..., rng=None)`` is ``None`` exactly when the
location can never be sampled, so a dataset can drop it once, up front.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLERS", "FixedStride", "RandomK", "Seasonal", "TemporalSampler", "make_sampler"]


class TemporalSampler:
    """Base class: eligibility by valid fraction, and the ``select`` contract.

    Args:
        num_frames: frames per sample, ``T``.
        min_valid_fraction: frames with a smaller valid fraction are never picked.

    Raises:
        ValueError: if ``num_frames`` < 1 or ``min_valid_fraction`` is outside [0, 1].
    """

    def __init__(self, num_frames: int, *, min_valid_fraction: float = 0.0):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not 0.0 <= min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
        self.num_frames = int(num_frames)
        self.min_valid_fraction = float(min_valid_fraction)

    def eligible(self, valid_fraction: np.ndarray) -> np.ndarray:
        """Indices of the frames valid enough to be picked, in input order."""
        return np.flatnonzero(np.asarray(valid_fraction) >= self.min_valid_fraction)

    def select(
        self,
        times: np.ndarray,
        valid_fraction: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray | None:
        """Pick ``num_frames`` frames.

        Args:
            times: (N,) ``datetime64`` timestamps, sorted ascending.
            valid_fraction: (N,) valid fraction of each frame.
            rng: a generator for the random choices; ``None`` for the deterministic pick.

        Returns:
            (num_frames,) int64 indices into ``times``, ascending in time; or ``None``.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_frames={self.num_frames}, "
            f"min_valid_fraction={self.min_valid_fraction})"
        )


class FixedStride(TemporalSampler):
    """Every ``stride``-th eligible frame.

    Deterministically from the first eligible frame; with a generator, from a random start among
    those that leave room for ``num_frames`` frames.

    Args:
        num_frames: frames per sample.
        stride: step between picked frames, counted in eligible frames.
        min_valid_fraction: frames with a smaller valid fraction are skipped.
    """

    def __init__(self, num_frames: int, *, stride: int = 1, min_valid_fraction: float = 0.0):
        super().__init__(num_frames, min_valid_fraction=min_valid_fraction)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)

    def select(self, times, valid_fraction, rng=None):  # noqa: D102
        ok = self.eligible(valid_fraction)
        span = (self.num_frames - 1) * self.stride + 1  # eligible frames one sample covers
        if len(ok) < span:
            return None
        start = 0 if rng is None else int(rng.integers(0, len(ok) - span + 1))
        return ok[start : start + span : self.stride].astype(np.int64)


class Seasonal(TemporalSampler):
    """One frame per season, seasons being ``num_frames`` equal groups of months.

    Months are grouped from December on, so ``num_frames=4`` gives the meteorological seasons
    DJF, MAM, JJA, SON and ``num_frames=2`` gives December-May and June-November. Deterministically
    the frame of each season with the largest valid fraction (the earliest on ties); with a
    generator, a random eligible frame of each season. Frames come in season order, which is time
    order within a year; across years a sample may combine seasons of different years.

    Args:
        num_frames: seasons per year; one of 1, 2, 3, 4, 6, 12.
        min_valid_fraction: frames with a smaller valid fraction are skipped.
    """

    def __init__(self, num_frames: int = 4, *, min_valid_fraction: float = 0.0):
        super().__init__(num_frames, min_valid_fraction=min_valid_fraction)
        if 12 % self.num_frames:
            raise ValueError(
                f"Seasonal needs num_frames dividing the 12 months (1, 2, 3, 4, 6, 12), "
                f"got {num_frames}"
            )

    def season(self, times: np.ndarray) -> np.ndarray:
        """Season index, 0 .. num_frames - 1, of each timestamp (December opens season 0)."""
        month = np.asarray(times, dtype="datetime64[M]").astype(np.int64) % 12  # 0 = January
        return ((month + 1) % 12) // (12 // self.num_frames)

    def select(self, times, valid_fraction, rng=None):  # noqa: D102
        ok = self.eligible(valid_fraction)
        season = self.season(np.asarray(times)[ok])
        vf = np.asarray(valid_fraction, dtype=np.float64)[ok]
        picks = []
        for s in range(self.num_frames):
            members = ok[season == s]
            if len(members) == 0:
                return None
            if rng is None:
                picks.append(members[int(np.argmax(vf[season == s]))])  # first maximum
            else:
                picks.append(members[int(rng.integers(0, len(members)))])
        return np.asarray(picks, dtype=np.int64)


class RandomK(TemporalSampler):
    """``num_frames`` distinct eligible frames drawn at random, returned in time order.

    Deterministically (``rng=None``), ``num_frames`` eligible frames evenly spaced over the series.

    Args:
        num_frames: frames per sample.
        min_valid_fraction: frames with a smaller valid fraction are skipped.
    """

    def select(self, times, valid_fraction, rng=None):  # noqa: D102
        ok = self.eligible(valid_fraction)
        if len(ok) < self.num_frames:
            return None
        if rng is None:
            return ok[np.linspace(0, len(ok) - 1, self.num_frames).round().astype(np.int64)]
        return np.sort(rng.choice(ok, size=self.num_frames, replace=False)).astype(np.int64)


#: Sampler classes by their ``data.temporal_sampling`` name.
SAMPLERS: dict[str, type[TemporalSampler]] = {
    "stride": FixedStride,
    "seasonal": Seasonal,
    "random": RandomK,
}


def make_sampler(
    name: str, num_frames: int, *, min_valid_fraction: float = 0.0, stride: int = 1
) -> TemporalSampler:
    """Build a sampler by name (``"stride"``, ``"seasonal"`` or ``"random"``).

    Args:
        name: the strategy.
        num_frames: frames per sample.
        min_valid_fraction: frames with a smaller valid fraction are never picked.
        stride: step of ``"stride"`` (ignored by the others).

    Raises:
        ValueError: for an unknown name, naming the known ones.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown temporal sampling {name!r}; use one of {sorted(SAMPLERS)}")
    if name == "stride":
        return FixedStride(num_frames, stride=stride, min_valid_fraction=min_valid_fraction)
    return SAMPLERS[name](num_frames, min_valid_fraction=min_valid_fraction)
