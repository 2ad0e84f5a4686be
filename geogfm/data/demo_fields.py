"""Procedural fields the demo landscape is drawn with (:mod:`geogfm.data.demo_landscape`).

Gaussian random fields by spectral synthesis (terrain, vigour, texture, clouds), anisotropic
Voronoi cells (farm parcels), meandering lines (roads, rivers), block means (10 m to 20 m and
60 m), the sensor's point spread, and the sun's position at an overpass. numpy only; every
random draw comes from the generator passed in.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

__all__ = ["block_mean", "gaussian_field", "meander", "psf", "solar_position", "voronoi"]


def _fast_len(n: int) -> int:
    """Smallest 5-smooth integer >= n (a fast FFT size)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def gaussian_field(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, *, beta: float | None = None
) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field (float32) by spectral synthesis.

    With ``beta=None`` the spectrum is Gaussian (smooth blobs of about ``scale`` pixels);
    otherwise a power law ``k**-beta`` rolled off below ``1/scale`` (fractal detail at every
    scale up to ``scale``). The field is periodic over a fast FFT size >= ``shape``, then cropped.
    """
    h, w = shape
    fh, fw = _fast_len(h), _fast_len(w)
    spec = np.fft.rfft2(rng.standard_normal((fh, fw), dtype=np.float32))
    k2 = np.fft.fftfreq(fh)[:, None] ** 2 + np.fft.rfftfreq(fw)[None, :] ** 2
    if beta is None:
        spec *= np.exp(-2.0 * math.pi**2 * scale**2 * k2)
    else:
        spec *= (k2 + scale**-2) ** (-beta / 4.0)
    spec[0, 0] = 0.0
    f = np.fft.irfft2(spec, s=(fh, fw))[:h, :w]
    f -= f.mean()
    return (f / max(f.std(), 1e-12)).astype(np.float32)


def voronoi(
    rng: np.random.Generator, shape: tuple[int, int], cell: tuple[float, float], angle: float
) -> np.ndarray:
    """Ids of anisotropic Voronoi cells over a ``shape`` grid: elongated parcels.

    Seeds are jittered on a grid of ``cell`` (along, across) pixels rotated by ``angle``; each pixel
    checks the 3x3 neighbouring grid cells only.
    """
    yy, xx = np.indices(shape, dtype=np.float32)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx * c + yy * s) / cell[0]
    v = (-xx * s + yy * c) / cell[1]
    iu, iv = np.floor(u).astype(np.int32), np.floor(v).astype(np.int32)
    u0, v0 = iu.min() - 1, iv.min() - 1
    nu, nv = iu.max() - u0 + 2, iv.max() - v0 + 2
    jitter = rng.uniform(0.1, 0.9, size=(2, nu, nv)).astype(np.float32)
    best = np.full(shape, np.inf, dtype=np.float32)
    ids = np.zeros(shape, dtype=np.int64)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            cu, cv = iu + du - u0, iv + dv - v0
            d = (u - (cu + u0) - jitter[0, cu, cv]) ** 2 + (v - (cv + v0) - jitter[1, cu, cv]) ** 2
            closer = d < best
            best[closer] = d[closer]
            ids[closer] = (cu * nv + cv)[closer]
    return ids


def meander(
    rng: np.random.Generator,
    shape: tuple[int, int],
    wavelength: tuple[float, float],
    amplitude: float,
) -> np.ndarray:
    """Distance (pixels) of every pixel of a ``shape`` grid to a meandering line across it."""
    yy, xx = np.indices(shape, dtype=np.float32)
    theta = rng.uniform(0.0, math.pi)
    cx, cy = np.array(shape[::-1]) * rng.uniform(0.3, 0.7, size=2)
    along = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    across = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    offset = np.zeros_like(along)
    for _ in range(3):
        lam = rng.uniform(*wavelength)
        offset += (
            amplitude
            * lam
            * rng.uniform(0.3, 1.0)
            * np.sin(2.0 * math.pi * along / lam + rng.uniform(0.0, 2.0 * math.pi))
        )
    return np.abs(across - offset)


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over ``k x k`` blocks of the last two axes (sizes divisible by ``k``)."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // k, k, w // k, k).mean(axis=(-3, -1))


def psf(img: np.ndarray) -> np.ndarray:
    """The sensor's point spread: a separable [0.2, 0.6, 0.2] blur of ``(B, H, W)``, edges held."""
    for axis in (1, 2):
        out = 0.6 * img
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(hi)] += 0.2 * img[tuple(lo)]  # from the previous row (column)
        out[tuple(lo)] += 0.2 * img[tuple(hi)]  # from the next one
        for edge in (0, -1):  # beyond the edge, the edge pixel itself
            idx = [slice(None)] * 3
            idx[axis] = edge
            out[tuple(idx)] += 0.2 * img[tuple(idx)]
        img = out
    return img


def solar_position(when: dt.datetime, lon: float, lat: float) -> tuple[float, float]:
    """Sun azimuth (degrees clockwise from north) and elevation (degrees) at ``when`` (UTC).

    NOAA's low-precision formulas (declination and equation of time as Fourier series), good to a
    fraction of a degree.
    """
    when = when.astimezone(dt.UTC)
    hour = when.hour + when.minute / 60 + when.second / 3600
    g = 2 * math.pi / 365 * (when.timetuple().tm_yday - 1 + (hour - 12) / 24)
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    hour_angle = math.radians((hour * 60 + eqtime + 4 * lon) / 4 - 180)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    elevation = 90 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zen))))
    azimuth = math.degrees(
        math.atan2(
            math.sin(hour_angle),
            math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi),
        )
    )
    return (azimuth + 180.0) % 360.0, elevation
