"""An independent audit of a written patch manifest's spatial split.

The ``patch_manifest`` stage writes the manifest to a temporary file, reads it back and runs
:func:`audit_manifest` on the rows it reads; if the audit fails, the stage fails and writes nothing.
The audit trusts nothing the split computed: it recomputes every footprint from the row's cell, row,
column and size and the cache's grid, checks the written bounds against them, and recomputes the
distances between the footprints of different splits from the rows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import CacheIndex
from geogfm.data.splits import SPLITS, min_gap, near_pairs

__all__ = ["audit_manifest"]

_BOUNDS = ["minx", "miny", "maxx", "maxy"]
_EXAMPLES = 3  # examples per failed check in the error message


def _footprints(rows: pd.DataFrame, index: CacheIndex) -> np.ndarray:
    """(N, 4) footprints of the rows' windows from the cache grid alone."""
    cells = {c.id: c for c in index.cells}
    missing = sorted(set(rows["cell_id"]) - set(cells))
    if missing:
        raise DataError(
            f"the manifest names cells {missing[:_EXAMPLES]} that the tile cache {index.root} "
            "lacks; rerun `geogfm patch_manifest` on this cache"
        )
    left = rows["cell_id"].map({k: c.bounds[0] for k, c in cells.items()}).to_numpy(np.float64)
    top = rows["cell_id"].map({k: c.bounds[3] for k, c in cells.items()}).to_numpy(np.float64)
    res = rows["cell_id"].map({k: c.resolution for k, c in cells.items()}).to_numpy(np.float64)
    row, col, size = (rows[k].to_numpy(np.float64) for k in ("row", "col", "size"))
    minx, maxy = left + col * res, top - row * res
    return np.stack([minx, maxy - size * res, minx + size * res, maxy], axis=1)


def audit_manifest(rows: pd.DataFrame, index: CacheIndex, *, buffer: int) -> dict:
    """Check that no patch is within ``buffer`` px of, or shares a pixel with, another split's.

    Checks, from the rows alone (and the cache's grid for the footprints):

    1. every split is one of ``train``, ``val``, ``test``; there are train and val rows;
    2. every row's ``minx, miny, maxx, maxy`` are its window's footprint in its cell;
    3. a location (cell, row, col) and a block have one split at every time step;
    4. for each pair of splits, no two footprints are closer than ``buffer`` pixels (Euclidean gap
       between the rectangles) and none overlap.

    Args:
        rows: the manifest as written (columns of :data:`geogfm.data.manifest.MANIFEST_COLUMNS`).
        index: the tile cache the manifest was made from.
        buffer: the minimum distance between splits, pixels.

    Returns:
        ``{"passed": True, "checked_locations": {split: n}, "pairs_within_buffer": {...},
        "pairs_sharing_pixels": {...}, "min_distance_m": {...}}``, pair keys like ``"train_val"``.

    Raises:
        DataError: naming every failed check with examples; no output should be written.
    """
    if buffer < 1:
        raise ValueError(f"buffer must be >= 1 pixel, got {buffer}")
    failures: list[str] = []
    bad_split = sorted(set(rows["split"]) - set(SPLITS))
    if bad_split:
        failures.append(f"unknown split value(s) {bad_split}")
    for s in ("train", "val"):
        if not (rows["split"] == s).any():
            failures.append(f"no {s} rows")

    crs = sorted(set(rows["crs"]))
    res = sorted({c.resolution for c in index.cells if c.id in set(rows["cell_id"])})
    if len(crs) != 1 or len(res) != 1:
        failures.append(f"rows on several grids: CRS {crs}, resolutions {res}")
    tol = 1e-6 * (res[0] if res else 1.0)
    expected = _footprints(rows, index)
    written = rows[_BOUNDS].to_numpy(np.float64)
    off = np.flatnonzero(np.abs(expected - written).max(axis=1) > tol)
    if len(off):
        ex = [str(rows["patch_id"].iloc[i]) for i in off[:_EXAMPLES]]
        failures.append(f"{len(off)} row(s) whose bounds are not their window's footprint: {ex}")

    for key in (["cell_id", "row", "col"], ["block_id"]):
        n_splits = rows.groupby(key)["split"].nunique()
        mixed = n_splits[n_splits > 1]
        if len(mixed):
            failures.append(
                f"{len(mixed)} {'/'.join(key)} value(s) in more than one split: "
                f"{[str(v) for v in mixed.index[:_EXAMPLES]]}"
            )

    # distances between the (unique) footprints of each pair of splits, from the written rows
    fp = rows.assign(**dict(zip(_BOUNDS, expected.T, strict=True)))
    locs = {
        s: fp.loc[fp["split"] == s, ["patch_id", *_BOUNDS]].drop_duplicates(_BOUNDS) for s in SPLITS
    }
    buffer_m = buffer * (res[0] if res else 1.0)
    within, sharing, min_dist = {}, {}, {}
    for i, lo in enumerate(SPLITS):
        for hi in SPLITS[i + 1 :]:
            key = f"{lo}_{hi}"
            a, b = locs[lo][_BOUNDS].to_numpy(), locs[hi][_BOUNDS].to_numpy()
            ia, ib, gap = near_pairs(a, b, buffer_m - tol)
            within[key], sharing[key] = int(len(gap)), int((gap < -tol).sum())
            d = min_gap(a, b, start=max(buffer_m, tol))
            min_dist[key] = None if math.isinf(d) else d
            if len(gap):
                ex = [
                    f"{locs[hi]['patch_id'].iloc[j]} at {g:g} m from {locs[lo]['patch_id'].iloc[k]}"
                    for k, j, g in list(zip(ia, ib, gap, strict=True))[:_EXAMPLES]
                ]
                failures.append(
                    f"{len(gap)} {hi}/{lo} patch pair(s) closer than the {buffer_m:g} m buffer "
                    f"({sharing[key]} sharing pixels), e.g. {ex}"
                )
    if failures:
        raise DataError(
            "patch_manifest's split audit failed, so the manifest was not written: "
            + "; ".join(failures)
            + ". The split leaks between train and evaluation patches; this is a bug in "
            "geogfm's split or a hand-edited manifest: report it with your params.yaml"
        )
    return {
        "passed": True,
        "buffer_m": buffer_m,
        "checked_locations": {s: len(locs[s]) for s in SPLITS},
        "pairs_within_buffer": within,
        "pairs_sharing_pixels": sharing,
        "min_distance_m": min_dist,
    }
