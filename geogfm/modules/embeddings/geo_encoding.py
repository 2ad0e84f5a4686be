"""What a geospatial token knows besides its grid position: its date, its place and its bands.

- ``TemporalEncoding``: a date, as (year, day-of-year), to ``D`` channels. Half of them are the
  1-D sine-cosine encoding of the year (counted from 2000); the other half are harmonics of the
  annual cycle, ``sin, cos(2π k · doy / 365.25)`` for ``k = 1 .. D/4``, so 31 December sits next to
  1 January and the same season of two years shares that half. Input per frame: (B, T, 2).
- ``LocationEncoding``: (latitude, longitude) in degrees to ``D`` channels: harmonics
  ``sin, cos(k φ)`` and ``sin, cos(k λ)`` for ``k = 1 .. D/4`` (radians). Integer frequencies make
  longitude wrap exactly at ±180°. Input per sample: (B, 2).
- ``wavelength_encoding``: a band's centre wavelength (micrometres, encoded in nanometres) with the
  1-D sine-cosine encoding, as DOFA does; :class:`SpectralPatchEmbed` turns it into the band's
  patch-embedding kernel, so one model takes any set of bands.

Both module encodings are fixed functions times one learned scale, initialised at 0.1, so they
start as a small perturbation of the spatial code and the model decides how much to use them
(Prithvi-EO-2.0 adds its temporal and location encodings the same way). ``date_features`` and
``band_wavelengths`` turn dates and band names into the tensors these take.

References:
    Szwarcman et al., "Prithvi-EO-2.0: A Versatile Multi-Temporal Foundation Model for Earth
    Observation Applications", 2024 (temporal and location encodings).
    Xiong et al., "Neural Plasticity-Inspired Multimodal Foundation Model for Earth Observation"
    (DOFA), 2024 (wavelength-conditioned patch embedding).
    Mai et al., "Sphere2Vec", 2023 (multi-scale sinusoidal location encoders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from geogfm.data.datasets.sentinel2 import BANDS
from geogfm.modules.embeddings.positional_encoding import sincos

__all__ = [
    "LocationEncoding",
    "TemporalEncoding",
    "band_wavelengths",
    "date_features",
    "wavelength_encoding",
]


def date_features(dates: Sequence | np.ndarray) -> Tensor:
    """Dates (any nesting of ISO strings, ``datetime.date`` or ``datetime64``) -> (..., 2) float32.

    The last axis is (year, day of year), day 1 = 1 January: the input of
    :class:`TemporalEncoding`. E.g. ``[["2021-08-14", "2022-02-20"]]`` -> (1, 2, 2).
    """
    d = np.asarray(dates, dtype="datetime64[D]")
    year_start = d.astype("datetime64[Y]")
    year = year_start.astype(np.int64) + 1970
    doy = (d - year_start.astype("datetime64[D]")).astype(np.int64) + 1
    return torch.from_numpy(np.stack([year, doy], axis=-1).astype(np.float32))


def band_wavelengths(bands: Sequence[str]) -> list[float]:
    """Centre wavelengths (micrometres) of Sentinel-2 bands given by key (``"nir08"``) or name.

    Raises:
        ValueError: naming an unknown band and the known keys.
    """
    table = {b.key: b.center_wavelength for b in BANDS} | {
        b.name: b.center_wavelength for b in BANDS
    }
    unknown = [b for b in bands if b not in table]
    if unknown:
        raise ValueError(
            f"unknown band(s) {unknown}; known Sentinel-2 bands are {[b.key for b in BANDS]}"
        )
    return [table[b] for b in bands]


def wavelength_encoding(wavelengths: Tensor, dim: int) -> Tensor:
    """Wavelengths (C,) in micrometres -> (C, dim): sine-cosine of the wavelength in nanometres."""
    return sincos(wavelengths * 1000.0, dim)


def _harmonics(angle: Tensor, n: int) -> Tensor:
    """``angle`` (...) radians -> (..., 2n): sin(k·angle) for k = 1..n, then cos(k·angle)."""
    k = torch.arange(1, n + 1, dtype=angle.dtype, device=angle.device)  # (n,)
    a = angle[..., None] * k  # (..., n)
    return torch.cat([a.sin(), a.cos()], dim=-1)


class TemporalEncoding(nn.Module):
    """(year, day-of-year) -> D channels: year sine-cosine and annual harmonics, learned scale.

    Args:
        dim: ``D``, a multiple of 4.
        init_scale: initial value of the learned scale.
    """

    def __init__(self, dim: int, init_scale: float = 0.1) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"dim={dim} must be a multiple of 4 for the temporal encoding")
        self.dim = dim
        self.scale = nn.Parameter(torch.tensor(init_scale))

    def forward(self, year_doy: Tensor) -> Tensor:
        """``year_doy`` (..., 2) (from :func:`date_features`) -> (..., D)."""
        year, doy = year_doy.float().unbind(-1)  # (...) each
        e_year = sincos(year - 2000.0, self.dim // 2)  # (..., D/2)
        e_doy = _harmonics(2 * math.pi * doy / 365.25, self.dim // 4)  # (..., D/2)
        return self.scale * torch.cat([e_year, e_doy], dim=-1)  # (..., D)


class LocationEncoding(nn.Module):
    """(latitude, longitude) degrees -> D channels of multi-scale harmonics, learned scale.

    Args:
        dim: ``D``, a multiple of 4.
        init_scale: initial value of the learned scale.
    """

    def __init__(self, dim: int, init_scale: float = 0.1) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"dim={dim} must be a multiple of 4 for the location encoding")
        self.dim = dim
        self.scale = nn.Parameter(torch.tensor(init_scale))

    def forward(self, latlon: Tensor) -> Tensor:
        """``latlon`` (..., 2) degrees -> (..., D)."""
        lat, lon = torch.deg2rad(latlon.float()).unbind(-1)  # (...) each
        n = self.dim // 4
        return self.scale * torch.cat([_harmonics(lat, n), _harmonics(lon, n)], dim=-1)
