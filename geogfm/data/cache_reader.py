"""Reading the Zarr tile cache that the ``tile_cache`` stage writes.

The cache is a directory with one Zarr v3 store per grid cell, ``<cache>/<cell_id>.zarr``, and an
``index.json`` that lists the cells (id, CRS, bounds, shape, number of time steps), the bands and
the DN scale/offset. Each store holds ``reflectance`` (time, band, y, x) uint16 DN, ``valid`` (time,
y, x) bool and ``scl`` (time, y, x) uint8, with ``time``, ``band``, ``y``, ``x`` and ``item_id``
coordinates.

Readers here use :mod:`zarr` directly (no xarray per sample): opening a group is cheap, and a window
read decodes only the chunks it touches.

Artifacts computed from a cache record its :func:`cache_fingerprint`, and their readers refuse a
cache with another one (:func:`check_stats_match`), so statistics never silently describe other
pixels than the ones being loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
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
    "cache_fingerprint",
    "check_stats_match",
    "load_cache_index",
    "open_cell",
]

_MAKE_CACHE = "run `geogfm tile_cache` or `snakemake --cores 2 tile_cache`"
_MAKE_STATS = "rerun channel_stats (`geogfm channel_stats` or `snakemake --cores 2 channel_stats`)"


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


def cache_fingerprint(cache: str | Path) -> str:
    """A hash that changes whenever the tile cache's content can have changed; cheap to compute.

    The hash covers, in a fixed order and by paths relative to ``cache`` (so a moved or copied
    cache keeps its fingerprint):

    - the bytes of ``index.json``;
    - for every store the index lists, the bytes of every ``zarr.json`` (shapes, dtypes, chunking,
      codecs, attributes) and of every chunk of its 1-D arrays (the ``time``, ``band``, ``y``,
      ``x``, ``item_id`` coordinates);
    - for every chunk of the data arrays (``reflectance``, ``valid``, ``scl``), its path and size.

    So it detects a cache rebuilt with other cells, bands, dates, items, grid, chunking or codec,
    and any data chunk that was added, removed or re-encoded to another compressed size. It reads no
    data chunk (only lists them), which keeps it fast on a large cache; the one change it cannot see
    is a data chunk rewritten in place with the same compressed size. Files whose names start with
    ``.`` (temporary files) are ignored.

    Args:
        cache: the tile cache directory.

    Returns:
        The SHA-256 hex digest (64 characters).

    Raises:
        FileNotFoundError: if the cache, its ``index.json`` or a store is missing.
        DataError: if ``index.json`` is incomplete.
    """
    index = load_cache_index(cache)
    root = index.root
    h = hashlib.sha256(b"geogfm cache_fingerprint v1\n")

    def feed(*parts: str | bytes) -> None:
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            h.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: unambiguous

    feed("index.json", (root / "index.json").read_bytes())
    for cell_id in sorted(c.id for c in index.cells):
        store = index.store(cell_id)
        one_d: set[Path] = set()  # array directories whose chunks are hashed by content
        for dirpath, dirnames, filenames in os.walk(store):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = Path(dirpath)
            if "zarr.json" in filenames:
                meta = (here / "zarr.json").read_bytes()
                feed(here.relative_to(root).as_posix() + "/zarr.json", meta)
                shape = json.loads(meta).get("shape")
                if isinstance(shape, list) and len(shape) <= 1:
                    one_d.add(here)
            for name in sorted(f for f in filenames if f != "zarr.json" and not f.startswith(".")):
                path = here / name
                rel = path.relative_to(root).as_posix()
                if any(p in one_d for p in path.parents):
                    feed(rel, path.read_bytes())
                else:
                    feed(rel, str(path.stat().st_size))
    return h.hexdigest()


def check_stats_match(stats: Mapping[str, Any] | str | Path, cache_dir: str | Path) -> str:
    """Refuse channel statistics that were not computed from this tile cache.

    Args:
        stats: the statistics (the parsed ``channel_stats.json``) or the path of the JSON file.
        cache_dir: the tile cache about to be read.

    Returns:
        The cache's fingerprint (equal to the one the statistics record).

    Raises:
        FileNotFoundError: if ``stats`` is a path that does not exist, or the cache is missing.
        DataError: if the statistics record no cache fingerprint or another one than the cache's
            :func:`cache_fingerprint`; the message names both hashes and the fix.
    """
    where = "the channel statistics"
    if isinstance(stats, str | Path):
        path = Path(stats)
        if not path.is_file():
            raise FileNotFoundError(f"channel statistics {str(path)!r} not found; {_MAKE_STATS}")
        where = f"the channel statistics {path}"
        stats = json.loads(path.read_text())
    source = stats.get("source")
    recorded = source.get("cache_fingerprint") if isinstance(source, Mapping) else None
    actual = cache_fingerprint(cache_dir)
    if recorded is None:
        raise DataError(
            f"{where} record no cache fingerprint (source.cache_fingerprint), so they cannot be "
            f"checked against the tile cache {cache_dir} (fingerprint {actual}); {_MAKE_STATS}"
        )
    if recorded != actual:
        raise DataError(
            f"{where} were computed from a tile cache with fingerprint {recorded}, but the tile "
            f"cache {cache_dir} has fingerprint {actual}: the cache changed since the statistics "
            f"were computed; {_MAKE_STATS}"
        )
    return actual
