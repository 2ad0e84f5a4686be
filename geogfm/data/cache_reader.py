"""Reading the Zarr tile cache that the ``tile_cache`` stage writes.

The cache is a directory with one Zarr v3 store per grid cell, ``<cache>/<cell_id>.zarr``, and an
``index.json`` that lists the cells (id, CRS, bounds, shape, number of time steps), the bands and
the DN scale/offset. Each store holds ``reflectance`` (time, band, y, x) uint16 DN, ``valid`` (time,
y, x) bool and ``scl`` (time, y, x) uint8, with ``time``, ``band``, ``y``, ``x`` and ``item_id``
coordinates.

Readers here use :mod:`zarr` directly (no xarray per sample): opening a group is cheap, and a window
read decodes only the chunks it touches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from geogfm.core.errors import DataError

__all__ = [
    "CacheCell",
    "CacheIndex",
    "band_names",
    "load_cache_index",
    "open_cell",
]

_MAKE_CACHE = "run `geogfm tile_cache` or `snakemake --cores 2 tile_cache`"


@dataclass(frozen=True)
class CacheCell:
    """One grid cell of the tile cache, as ``index.json`` lists it."""

    id: str  #: cell id, e.g. ``"32633_0512000_5120000"``; the store is ``<cache>/<id>.zarr``
    crs: str  #: e.g. ``"EPSG:32633"``
    bounds: tuple[float, float, float, float]  #: (minx, miny, maxx, maxy) in CRS units
    shape: tuple[int, int]  #: (H, W) pixels
    n_times: int  #: time steps in the store

    @property
    def resolution(self) -> float:
        """Pixel side in CRS units, from the bounds and the shape."""
        return (self.bounds[2] - self.bounds[0]) / self.shape[1]


@dataclass(frozen=True)
class CacheIndex:
    """The parsed ``index.json`` of a tile cache."""

    root: Path  #: the cache directory
    cells: tuple[CacheCell, ...]  #: cells in index order
    bands: tuple[str, ...]  #: band names in store order
    scale: float  #: reflectance per DN
    offset: float  #: reflectance at DN 0 (after the processing-baseline offset is removed: 0.0)
    nodata: int  #: DN of "no data"

    def cell(self, cell_id: str) -> CacheCell:
        """Look up a cell by id.

        Raises:
            DataError: if the cache has no such cell.
        """
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise DataError(
            f"cell {cell_id!r} is not in the tile cache {self.root} "
            f"(cells: {[c.id for c in self.cells]}); the manifest was made from another cache: "
            "rerun `geogfm patch_manifest` on this cache"
        )

    def store(self, cell_id: str) -> Path:
        """Path of a cell's Zarr store."""
        return self.root / f"{cell_id}.zarr"


def load_cache_index(cache: str | Path) -> CacheIndex:
    """Read and check ``<cache>/index.json``.

    Args:
        cache: the tile cache directory.

    Returns:
        The parsed index.

    Raises:
        FileNotFoundError: if the directory, its ``index.json`` or a cell's store is missing.
        DataError: if ``index.json`` lacks a key or lists no cells.
    """
    cache = Path(cache)
    path = cache / "index.json"
    if not path.is_file():
        what = "directory" if not cache.is_dir() else "index file"
        raise FileNotFoundError(
            f"tile cache {what} {str(path if cache.is_dir() else cache)!r} not found; {_MAKE_CACHE}"
        )
    raw: dict[str, Any] = json.loads(path.read_text())
    try:
        cells = tuple(
            CacheCell(
                id=str(c["id"]),
                crs=str(c["crs"]),
                bounds=tuple(float(v) for v in c["bounds"]),  # type: ignore[arg-type]
                shape=(int(c["shape"][0]), int(c["shape"][1])),
                n_times=int(c["n_times"]),
            )
            for c in raw["cells"]
        )
        index = CacheIndex(
            root=cache,
            cells=cells,
            bands=tuple(str(b) for b in raw["bands"]),
            scale=float(raw["scale"]),
            offset=float(raw.get("offset", 0.0)),
            nodata=int(raw.get("nodata", 0)),
        )
    except KeyError as err:
        raise DataError(
            f"{path}: missing key {err}; the cache is incomplete: {_MAKE_CACHE}"
        ) from None
    if not cells:
        raise DataError(f"{path} lists no cells; {_MAKE_CACHE} with an area that has imagery")
    for c in cells:
        if not index.store(c.id).is_dir():
            raise FileNotFoundError(
                f"Zarr store {str(index.store(c.id))!r} listed in {path} not found; {_MAKE_CACHE}"
            )
    return index


def open_cell(index: CacheIndex, cell_id: str) -> zarr.Group:
    """Open a cell's Zarr store read-only.

    Args:
        index: the cache index.
        cell_id: the cell.

    Returns:
        The store's root group (arrays ``reflectance``, ``valid``, ``scl``, ``band``, ...).
    """
    return zarr.open_group(index.store(cell_id), mode="r")


def band_names(group: zarr.Group) -> list[str]:
    """The store's ``band`` coordinate as a list of str (fixed- or variable-length strings)."""
    return [str(b) for b in np.asarray(group["band"][:]).tolist()]
