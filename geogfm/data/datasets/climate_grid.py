"""Gridded climate data (reanalysis, model output) as patches, with statistics of its own.

A climate grid is an xarray Dataset whose variables are (time, lat, lon) -- or one DataArray
(time, variable, lat, lon) -- in memory or in a Zarr store. Unlike reflectance, each variable has
its own unit and range, and missing values are NaN rather than a nodata DN, so the grid gets
statistics of its own (:func:`climate_stats`, in the ``channel_stats`` format, one "band" per
variable) and patches mark NaN as invalid.

:class:`ClimateGridDataset` serves square (lat, lon) windows of every time step as samples shaped
like the tile cache's: ``image`` (C, H, W) float32, z-scored per variable with the statistics and 0
where invalid, ``valid`` (H, W) True where every variable is finite, ``time``, ``bounds``
(degrees: west, south, east, north of the window's cells), ``crs`` (``EPSG:4326``), ``cell``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from geogfm.core.errors import DataError
from geogfm.data.transforms.patchify import tile_windows

__all__ = ["ClimateGridDataset", "climate_stats", "open_climate_grid"]

_LAT, _LON = ("lat", "latitude"), ("lon", "longitude")


def _dim(da: xr.DataArray, names: tuple[str, ...], where: str) -> str:
    for n in names:
        if n in da.dims:
            return n
    alternatives = " or ".join(repr(n) for n in names)
    raise DataError(
        f"{where} has dims {tuple(da.dims)}, no {alternatives} dimension; a climate grid needs "
        "(time, lat, lon) variables (or a DataArray (time, variable, lat, lon))"
    )


def open_climate_grid(
    source: xr.Dataset | xr.DataArray | str | Path, variables: Sequence[str] | None = None
) -> dict[str, xr.DataArray]:
    """The grid's variables as (time, lat, lon) DataArrays, lazily where the source is a store.

    Args:
        source: a Dataset of (time, lat, lon) variables, a DataArray (time, variable, lat, lon),
            or the path of a Zarr store holding such a Dataset.
        variables: which variables, in channel order; default all (time, lat, lon) variables,
            sorted by name.

    Returns:
        ``{name: DataArray (time, lat, lon)}`` in channel order, dims renamed to ``lat``/``lon``.

    Raises:
        FileNotFoundError: if a path does not exist.
        DataError: if a variable is missing or the dimensions are not (time, lat, lon).
    """
    if isinstance(source, str | Path):
        if not Path(source).exists():
            raise FileNotFoundError(f"climate grid {str(source)!r} not found")
        with warnings.catch_warnings():  # a store without consolidated metadata is fine
            warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
            source = xr.open_zarr(source, chunks=None)  # lazy, no dask: windows read on demand
    if isinstance(source, xr.DataArray):
        if "variable" not in source.dims:
            raise DataError(
                f"DataArray {source.name!r} has dims {tuple(source.dims)}, no 'variable'; give "
                "(time, variable, lat, lon) or a Dataset of (time, lat, lon) variables"
            )
        source = source.to_dataset(dim="variable")
    grids = {str(k): v for k, v in source.data_vars.items() if "time" in v.dims and v.ndim == 3}
    names = list(variables) if variables is not None else sorted(grids)
    missing = [v for v in names if v not in grids]
    if missing or not names:
        raise DataError(
            f"climate variable(s) {missing or names} are not (time, lat, lon) variables of the "
            f"grid; it has {sorted(grids)}"
        )
    out = {}
    for name in names:
        da = grids[name]
        lat, lon = _dim(da, _LAT, f"variable {name!r}"), _dim(da, _LON, f"variable {name!r}")
        out[name] = da.rename({lat: "lat", lon: "lon"}).transpose("time", "lat", "lon")
    first = next(iter(out.values()))
    for name, da in out.items():
        if da.shape != first.shape:
            raise DataError(f"variable {name!r} is {da.shape}, others {first.shape}: one grid")
    return out


def climate_stats(
    source: xr.Dataset | xr.DataArray | str | Path,
    variables: Sequence[str] | None = None,
    *,
    percentiles: Sequence[float] = (1.0, 2.0, 50.0, 98.0, 99.0),
    bins: int = 4096,
) -> dict:
    """Per-variable statistics over the finite values, in the ``channel_stats`` format.

    Count, mean, std (population) and min/max in float64, merged one time step at a time with
    Chan's parallel algorithm; percentiles from a second pass of ``bins``-bin histograms between
    each variable's min and max, within one bin width, ``(max - min) / bins``.

    Args:
        source: see :func:`open_climate_grid` (restrict it to the training period first).
        variables: which variables; default all.
        percentiles: percentiles to report, in [0, 100].
        bins: histogram bins per variable.

    Returns:
        ``{"bands": [...], "unit": "native", "count", "mean", "std", "min", "max",
        "percentiles": {"2.0": [...], ...}, "method": {...}}``.

    Raises:
        DataError: if a variable has no finite value.
    """
    grid = open_climate_grid(source, variables)
    names = list(grid)
    n = np.zeros(len(names))
    mean, m2 = np.zeros(len(names)), np.zeros(len(names))
    lo, hi = np.full(len(names), np.inf), np.full(len(names), -np.inf)
    T = next(iter(grid.values())).sizes["time"]
    for t in range(T):
        for k, da in enumerate(grid.values()):
            x = np.asarray(da.isel(time=t).values, dtype=np.float64)
            x = x[np.isfinite(x)]
            if x.size == 0:
                continue
            nb, mb = x.size, x.mean()
            delta = mb - mean[k]
            total = n[k] + nb
            mean[k] += delta * nb / total  # Chan et al.: merge (n, mean, M2) of two parts
            m2[k] += ((x - mb) ** 2).sum() + delta**2 * n[k] * nb / total
            n[k] = total
            lo[k], hi[k] = min(lo[k], x.min()), max(hi[k], x.max())
    empty = [v for v, c in zip(names, n, strict=True) if c == 0]
    if empty:
        raise DataError(f"climate variable(s) {empty} have no finite value in the grid")
    hist = np.zeros((len(names), bins), dtype=np.int64)
    for t in range(T):
        for k, da in enumerate(grid.values()):
            x = np.asarray(da.isel(time=t).values, dtype=np.float64)
            x = x[np.isfinite(x)]
            hist[k] += np.histogram(x, bins=bins, range=(lo[k], max(hi[k], lo[k] + 1e-12)))[0]
    table = {}
    for q in percentiles:
        values = []
        for k in range(len(names)):
            # the upper edge of the first bin whose cumulative count reaches q % (inverted cdf)
            i = int(np.searchsorted(np.cumsum(hist[k]), q / 100 * n[k], side="left"))
            width = (hi[k] - lo[k]) / bins
            values.append(float(min(hi[k], lo[k] + (min(i, bins - 1) + 1) * width)))
        table[str(float(q))] = values
    return {
        "bands": names,
        "unit": "native",
        "count": n.astype(np.int64).tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(m2 / n).tolist(),
        "min": lo.tolist(),
        "max": hi.tolist(),
        "percentiles": table,
        "method": {
            "values": "finite values of every time step",
            "std": "population (ddof=0)",
            "percentiles": f"{bins}-bin histograms over [min, max]: within one bin width",
        },
    }


class ClimateGridDataset(Dataset):
    """Square (lat, lon) windows of every time step of a climate grid.

    Args:
        source: see :func:`open_climate_grid`.
        variables: which variables, in channel order; default all.
        size: window side, grid cells.
        overlap: cells shared by neighbouring windows (windows cover the whole grid).
        stats: statistics to normalise with (e.g. the training period's, for a validation
            period); default: :func:`climate_stats` of ``source``.
        min_valid_fraction: windows with fewer finite cells are left out.
        name: the ``cell`` of the samples; default the store's name, or ``"grid"``.

    Raises:
        DataError: if the window is larger than the grid, a variable is missing from ``stats``,
            or no window is valid enough.
    """

    def __init__(
        self,
        source: xr.Dataset | xr.DataArray | str | Path,
        variables: Sequence[str] | None = None,
        *,
        size: int,
        overlap: int = 0,
        stats: dict | None = None,
        min_valid_fraction: float = 0.0,
        name: str | None = None,
    ):
        self.grid = open_climate_grid(source, variables)
        self.variables = list(self.grid)
        self.name = name or (Path(source).stem if isinstance(source, str | Path) else "grid")
        first = next(iter(self.grid.values()))
        T, H, W = first.shape
        if size > min(H, W):
            raise DataError(
                f"window size {size} is larger than the {H} x {W} climate grid; use size <= "
                f"{min(H, W)}"
            )
        self.size = int(size)
        self.stats = stats if stats is not None else climate_stats(source, self.variables)
        missing = [v for v in self.variables if v not in self.stats["bands"]]
        if missing:
            raise DataError(f"variable(s) {missing} are not in the stats ({self.stats['bands']})")
        idx = [self.stats["bands"].index(v) for v in self.variables]
        self._mean = np.array([self.stats["mean"][i] for i in idx], np.float32)[:, None, None]
        self._std = np.array([self.stats["std"][i] for i in idx], np.float32)[:, None, None]
        self.lat = np.asarray(first["lat"].values, dtype=np.float64)
        self.lon = np.asarray(first["lon"].values, dtype=np.float64)
        self.times = np.asarray(first["time"].values).astype("datetime64[s]")
        rows, cols = tile_windows(H, W, size=size, overlap=overlap)
        # finite fraction of every (time, window), from the grid's validity, one step at a time
        keep = []
        for t in range(T):
            valid = self._valid(t, 0, 0, H, W)
            for r, c in zip(rows, cols, strict=True):
                if valid[r : r + size, c : c + size].mean() >= min_valid_fraction:
                    keep.append((t, int(r), int(c)))
        if not keep:
            raise DataError(
                f"no {size} x {size} window of the climate grid has {min_valid_fraction:.0%} "
                "finite cells; lower min_valid_fraction"
            )
        self.samples = keep

    def _values(self, t: int, r: int, c: int, h: int, w: int) -> np.ndarray:
        window = {"time": t, "lat": slice(r, r + h), "lon": slice(c, c + w)}
        return np.stack([np.asarray(da.isel(window).values) for da in self.grid.values()])

    def _valid(self, t: int, r: int, c: int, h: int, w: int) -> np.ndarray:
        return np.isfinite(self._values(t, r, c, h, w)).all(axis=0)

    def _edges(self, coords: np.ndarray, start: int) -> tuple[float, float]:
        step = abs(coords[1] - coords[0]) if len(coords) > 1 else 0.0
        part = coords[start : start + self.size]
        return float(part.min() - step / 2), float(part.max() + step / 2)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        t, r, c = self.samples[i]
        x = self._values(t, r, c, self.size, self.size).astype(np.float32)  # (C, H, W)
        valid = np.isfinite(x).all(axis=0)  # (H, W)
        image = np.where(valid, (x - self._mean) / self._std, np.float32(0.0))
        south, north = self._edges(self.lat, r)
        west, east = self._edges(self.lon, c)
        return {
            "image": torch.from_numpy(image.astype(np.float32)),
            "valid": torch.from_numpy(valid),
            "time": torch.tensor(self.times[t].astype(np.int64)),
            "datetime": str(self.times[t]),
            "patch_id": f"{self.name}_t{t:04d}_r{r:05d}_c{c:05d}",
            "cell": self.name,
            "bounds": (west, south, east, north),
            "crs": "EPSG:4326",
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, variables={self.variables}, "
            f"size={self.size}, samples={len(self)})"
        )
