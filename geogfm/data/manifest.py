"""The patch manifest: every kept (cell, time, window) with its QA, provenance and split.

Windows of ``size`` pixels step by ``stride`` over each cell of the tile cache. For each time step a
window gets ``valid_fraction`` (share of pixels the cache marks valid) and ``cloud_fraction`` (share
of pixels whose scene class is a cloud, cirrus or shadow class); rows below ``min_valid_fraction``
or above ``max_cloud_fraction`` are left out. The windows that keep at least one row are split
spatially (:mod:`geogfm.data.splits`), so a location is in the same split at every time step, and a
window within the buffer of a window of another split is dropped at every time step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
from tqdm.auto import tqdm

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import CacheIndex
from geogfm.data.splits import SPLITS, spatial_block_split
from geogfm.data.windows import window_fractions, window_grid

__all__ = ["MANIFEST_COLUMNS", "build_manifest", "patch_id", "read_manifest", "write_manifest"]

log = logging.getLogger(__name__)

#: Manifest columns and their Arrow types, in file order.
_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("cell_id", pa.string()),
        ("time_index", pa.int64()),
        ("datetime", pa.string()),
        ("item_id", pa.string()),
        ("row", pa.int64()),
        ("col", pa.int64()),
        ("size", pa.int64()),
        ("crs", pa.string()),
        ("minx", pa.float64()),
        ("miny", pa.float64()),
        ("maxx", pa.float64()),
        ("maxy", pa.float64()),
        ("valid_fraction", pa.float64()),
        ("cloud_fraction", pa.float64()),
        ("block_id", pa.string()),
        ("split", pa.string()),
    ]
)
#: Manifest columns, in file order.
MANIFEST_COLUMNS: tuple[str, ...] = tuple(_SCHEMA.names)

_MAKE_MANIFEST = "run `geogfm patch_manifest` or `snakemake --cores 2 patch_manifest`"


def patch_id(cell_id: str, time_index: int, row: int, col: int) -> str:
    """Stable id of one (cell, time, window): ``"<cell_id>_t002_r00064_c00128"``."""
    return f"{cell_id}_t{time_index:03d}_r{row:05d}_c{col:05d}"


def _cell_rows(
    index: CacheIndex,
    cell_id: str,
    *,
    size: int,
    stride: int,
    min_valid_fraction: float,
    max_cloud_fraction: float,
    cloud_scl_classes: Sequence[int],
) -> tuple[pd.DataFrame, int]:
    """QA rows of one cell's kept (time, window) pairs, and the number of candidate rows."""
    cell = index.cell(cell_id)
    ds = xr.open_zarr(index.store(cell_id), consolidated=False, chunks=None)
    H, W = ds.sizes["y"], ds.sizes["x"]
    if cell.shape != (H, W):
        raise DataError(
            f"{index.store(cell_id)} is {H} x {W} pixels but index.json says {cell.shape}; "
            "the cache is inconsistent: rebuild it with `geogfm tile_cache`"
        )
    rows, cols = window_grid(H, W, size=size, stride=stride)
    times = ds["time"].values
    item_ids = [str(i) for i in ds["item_id"].values.tolist()]
    classes = np.asarray(cloud_scl_classes, dtype=np.uint8)
    parts = []
    for t in range(ds.sizes["time"]):
        valid = np.asarray(ds["valid"][t].values, dtype=bool)  # (H, W)
        cloud = np.isin(ds["scl"][t].values, classes)  # (H, W)
        vf = window_fractions(valid, rows, cols, size=size)
        cf = window_fractions(cloud, rows, cols, size=size)
        keep = (vf >= min_valid_fraction) & (cf <= max_cloud_fraction)
        if not keep.any():
            continue
        parts.append(
            pd.DataFrame(
                {
                    "cell_id": cell_id,
                    "time_index": np.int64(t),
                    "datetime": np.datetime_as_string(times[t], unit="s") + "Z",
                    "item_id": item_ids[t],
                    "row": rows[keep],
                    "col": cols[keep],
                    "valid_fraction": vf[keep],
                    "cloud_fraction": cf[keep],
                }
            )
        )
    n_candidates = len(rows) * ds.sizes["time"]
    ds.close()
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), n_candidates


def build_manifest(
    index: CacheIndex,
    *,
    size: int,
    stride: int,
    min_valid_fraction: float,
    max_cloud_fraction: float = 1.0,
    cloud_scl_classes: Sequence[int],
    block_size: int,
    val_fraction: float,
    test_fraction: float = 0.0,
    buffer: int,
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """Enumerate, QA and split every window of a tile cache.

    Args:
        index: the tile cache index.
        size: window side, pixels (the model's image size).
        stride: step between windows, pixels.
        min_valid_fraction: rows with a smaller share of valid pixels are left out.
        max_cloud_fraction: rows with a larger share of cloud pixels are left out.
        cloud_scl_classes: SCL classes counted in ``cloud_fraction``.
        block_size: spatial split block side, pixels.
        val_fraction: fraction of blocks for val.
        test_fraction: fraction of blocks for test (0: no test split).
        buffer: windows closer than this many pixels to a window of a higher-ranked split
            (test > val > train) are dropped.
        seed: seed of the block draw.

    Returns:
        The manifest (columns :data:`MANIFEST_COLUMNS`, sorted by cell, time, row, col) and the
        split audit dict.

    Raises:
        ValueError: if ``size`` is larger than a cell.
        DataError: if the cells are not on one grid, no window passes the thresholds, or the split
            is impossible.
    """
    grids = sorted({(c.crs, c.resolution) for c in index.cells})
    if len(grids) > 1:
        raise DataError(
            f"the tile cache {index.root} has cells on {len(grids)} grids (CRS, resolution) "
            f"{grids}; the spatial split measures its buffer on one grid: rebuild the cache with "
            "one tile_cache.crs and tile_cache.resolution"
        )
    crs, resolution = grids[0]
    small = [c for c in index.cells if size > min(c.shape)]
    if small:
        raise ValueError(
            f"chip size {size} px (model.image_size) is larger than cell {small[0].id} of "
            f"{small[0].shape[0]} x {small[0].shape[1]} px; lower model.image_size or raise "
            "tile_cache.cell_size and rebuild the cache"
        )
    frames, n_candidates = [], 0
    for cell in tqdm(index.cells, desc="patch_manifest", unit="cell", disable=None):
        df, n = _cell_rows(
            index,
            cell.id,
            size=size,
            stride=stride,
            min_valid_fraction=min_valid_fraction,
            max_cloud_fraction=max_cloud_fraction,
            cloud_scl_classes=cloud_scl_classes,
        )
        n_candidates += n
        if len(df):
            frames.append(df)
    if not frames:
        raise DataError(
            f"no window passes patch_manifest.min_valid_fraction={min_valid_fraction} and "
            f"patch_manifest.max_cloud_fraction={max_cloud_fraction}: 0 of {n_candidates} "
            f"(cell, time, window) candidates in {len(index.cells)} cell(s) are kept; lower "
            "min_valid_fraction, raise max_cloud_fraction, or cache less cloudy dates"
        )
    rows = pd.concat(frames, ignore_index=True)
    n_kept_qa = len(rows)

    # the split is spatial: one decision per window location, shared by all its time steps
    loc = rows[["cell_id", "row", "col"]].drop_duplicates().reset_index(drop=True)
    cells = {c.id: c for c in index.cells}
    cell_of = [cells[c] for c in loc["cell_id"]]
    res = resolution
    minx = np.array([c.bounds[0] for c in cell_of]) + loc["col"].to_numpy() * res
    maxy = np.array([c.bounds[3] for c in cell_of]) - loc["row"].to_numpy() * res
    bounds = np.stack([minx, maxy - size * res, minx + size * res, maxy], axis=1)  # (N, 4)
    loc["crs"] = crs
    split = spatial_block_split(
        bounds,
        crs=crs,
        resolution=resolution,
        block_size=block_size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        buffer=buffer,
        seed=seed,
    )
    loc[["minx", "miny", "maxx", "maxy"]] = bounds
    loc["block_id"] = split.block_id.astype(str)
    loc["split"] = split.split.astype(str)
    loc = loc[~split.dropped]

    manifest = rows.merge(loc, on=["cell_id", "row", "col"], how="inner", validate="many_to_one")
    manifest["size"] = np.int64(size)
    manifest["patch_id"] = [
        patch_id(c, t, r, k)
        for c, t, r, k in zip(
            manifest["cell_id"],
            manifest["time_index"],
            manifest["row"],
            manifest["col"],
            strict=True,
        )
    ]
    manifest = manifest.sort_values(["cell_id", "time_index", "row", "col"], ignore_index=True)
    manifest = manifest[list(MANIFEST_COLUMNS)]

    audit = {
        "chip_size": size,
        "stride": stride,
        "min_valid_fraction": min_valid_fraction,
        "max_cloud_fraction": max_cloud_fraction,
        "cells": [c.id for c in index.cells],
        "rows": {
            "candidates": n_candidates,
            "kept_min_valid": n_kept_qa,
            "dropped_min_valid": n_candidates - n_kept_qa,
            "dropped_for_buffer": n_kept_qa - len(manifest),
            **{s: int((manifest["split"] == s).sum()) for s in SPLITS},
        },
        **split.audit,
    }
    log.info(
        "manifest: %d rows (%d train, %d val, %d test) of %d candidates; %d windows dropped for "
        "the buffer",
        len(manifest),
        audit["rows"]["train"],
        audit["rows"]["val"],
        audit["rows"]["test"],
        n_candidates,
        audit["windows"]["dropped_for_buffer"],
    )
    return manifest, audit


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest to Parquet with a fixed schema (no pandas metadata: same rows, same bytes).

    The write is not atomic by itself; the stage writes into a temporary directory.
    """
    table = pa.Table.from_pydict(
        {name: manifest[name].to_numpy() for name in MANIFEST_COLUMNS}, schema=_SCHEMA
    )
    pq.write_table(table, path, compression="zstd")


def read_manifest(path: str | Path, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a manifest written by the ``patch_manifest`` stage.

    Args:
        path: ``patches.parquet``, or the manifests directory holding it.
        columns: the columns to read (default: all of :data:`MANIFEST_COLUMNS`).

    Returns:
        The manifest with those columns, in file order.

    Raises:
        FileNotFoundError: if the file is missing (naming the stage that makes it).
        DataError: if a column is missing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "patches.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"patch manifest {str(path)!r} not found; {_MAKE_MANIFEST}")
    names = pq.read_schema(path).names
    missing = [c for c in MANIFEST_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"patch manifest {path} lacks column(s) {missing}; it is from another version: "
            f"{_MAKE_MANIFEST}"
        )
    wanted = list(MANIFEST_COLUMNS if columns is None else columns)
    return pq.read_table(path, columns=wanted).to_pandas()
