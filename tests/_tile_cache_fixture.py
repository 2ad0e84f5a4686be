"""A tiny Zarr v3 tile cache, shaped like the ``tile_cache`` stage's output (contract artifact 3).

Two adjacent 64 x 64 cells of 10 m pixels in UTM 33N, three dates, three bands, written with xarray
(``to_zarr(zarr_format=3)``) plus ``index.json``. The cell boundary is inside a block of the 640 m
grid, so spatial blocks of 64 pixels hold windows of both cells.

Invalid pixels (``valid`` False), with the scene class the tile cache would give them:

- every scene: pixel (63, 63) saturated (SCL 1), so no 64-pixel window is ever fully valid;
- cell 0, time 0: the left ``NODATA_COLS`` columns are nodata (DN 0 in every band, SCL 0);
- cell 0, time 1: a bright cloud (SCL 9) over rows 8:40, cols 16:48;
- cell 1, time 1: a cloud shadow (SCL 3) over rows 0:8, cols 0:8;
- cell 1, time 2: cirrus (SCL 10) over rows 40:64, cols 24:64, medium cloud (SCL 8) over rows 40:48,
  0:24.

``chunks`` sets the ``reflectance`` chunks (time, band, y, x); ``valid`` and ``scl`` follow them.
Run as a script to write one: ``python tests/_tile_cache_fixture.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

EPSG = 32633
CRS = f"EPSG:{EPSG}"
RES = 10.0
SIZE = 64  # pixels per cell side
X0, Y0 = 500_040.0, 5_000_200.0  # top-left of cell 0; cell 1 is east of it
BANDS = ("blue", "green", "red")
TIMES = ("2021-08-14T10:05:31", "2021-11-02T10:05:41", "2022-02-20T10:05:29")
SCALE = 1e-4
NODATA_COLS = 6
MASK_SCL = (0, 1, 3, 8, 9, 10)


def cell_id(x0: float, y0: float) -> str:
    return f"{EPSG}_{int(x0):07d}_{int(y0):07d}"


CELLS = tuple(cell_id(X0 + i * SIZE * RES, Y0) for i in range(2))


def _scene(rng: np.random.Generator, cell: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """DN (band, y, x) uint16 and SCL (y, x) uint8 of one scene."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dn = np.empty((len(BANDS), SIZE, SIZE), dtype=np.uint16)
    for b in range(len(BANDS)):
        base = 600 + 400 * b + 300 * t + 200 * cell + 8 * xx + 5 * yy  # a smooth ramp per band
        dn[b] = (base + rng.integers(0, 400, (SIZE, SIZE))).astype(np.uint16)
    scl = np.full((SIZE, SIZE), 4, dtype=np.uint8)  # vegetation
    scl[yy > 40] = 5  # not vegetated
    scl[63, 63] = 1
    if (cell, t) == (0, 0):
        dn[:, :, :NODATA_COLS] = 0
        scl[:, :NODATA_COLS] = 0
    if (cell, t) == (0, 1):
        dn[:, 8:40, 16:48] = rng.integers(7000, 9000, (len(BANDS), 32, 32))
        scl[8:40, 16:48] = 9
    if (cell, t) == (1, 1):
        dn[:, 0:8, 0:8] //= 4
        scl[0:8, 0:8] = 3
    if (cell, t) == (1, 2):
        scl[40:64, 24:64] = 10
        scl[40:48, 0:24] = 8
    return dn, scl


def write_tile_cache(
    root: str | Path, *, seed: int = 0, chunks: tuple[int, int, int, int] = (1, 3, 32, 32)
) -> Path:
    """Write the fixture cache into ``root`` (created); returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    times = np.array(TIMES, dtype="datetime64[ns]")
    cells = []
    for i, cid in enumerate(CELLS):
        x0 = X0 + i * SIZE * RES
        dn, scl = zip(*(_scene(rng, i, t) for t in range(len(TIMES))), strict=True)
        dn, scl = np.stack(dn), np.stack(scl)  # (T, C, H, W), (T, H, W)
        valid = (dn != 0).all(axis=1) & ~np.isin(scl, MASK_SCL)
        ds = xr.Dataset(
            {
                "reflectance": (("time", "band", "y", "x"), dn),
                "valid": (("time", "y", "x"), valid),
                "scl": (("time", "y", "x"), scl),
            },
            coords={
                "time": times,
                "band": np.array(BANDS, dtype=object),
                "y": Y0 - RES * (np.arange(SIZE) + 0.5),
                "x": x0 + RES * (np.arange(SIZE) + 0.5),
                "item_id": (
                    "time",
                    np.array([f"S2B_33TUM_{t[:10].replace('-', '')}_0_L2A" for t in TIMES], object),
                ),
            },
            attrs={
                "crs": CRS,
                "transform": [RES, 0.0, x0, 0.0, -RES, Y0],
                "resolution": RES,
                "cell_id": cid,
            },
        )
        ds.to_zarr(
            root / f"{cid}.zarr",
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={
                "reflectance": {"chunks": chunks},
                "valid": {"chunks": (chunks[0], *chunks[2:])},
                "scl": {"chunks": (chunks[0], *chunks[2:])},
            },
        )
        cells.append(
            {
                "id": cid,
                "crs": CRS,
                "bounds": [x0, Y0 - SIZE * RES, x0 + SIZE * RES, Y0],
                "shape": [SIZE, SIZE],
                "n_times": len(TIMES),
            }
        )
    index = {"cells": cells, "bands": list(BANDS), "scale": SCALE, "offset": 0.0, "nodata": 0}
    (root / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return root


if __name__ == "__main__":
    print(write_tile_cache(sys.argv[1]))
