"""Reading the Zarr tile cache that the ``tile_cache`` stage writes.

The cache is a directory with one Zarr v3 store per grid cell, ``<cache>/<cell_id>.zarr``, and an
``index.json`` that lists the cells (id, CRS, bounds, shape, number of time steps), the bands and
the DN scale/offset. Each store holds ``reflectance`` (time, band, y, x) uint16 DN, ``valid`` (time,
y, x) bool and ``scl`` (time, y, x) uint8, with ``time``, ``band``, ``y``, ``x`` and ``item_id``
coordinates.

Readers here use :mod:`zarr` directly (no xarray per sample): opening a group is cheap, and a window
read decodes only the chunks it touches. :class:`ChunkReader` goes one step further for passes
over whole chunks: it reads a chunk's file and decodes it in one codec call, without zarr's
per-read machinery.

Artifacts computed from a cache record its :func:`cache_fingerprint`, and their readers refuse a
cache with another one (:func:`check_stats_match`), so statistics never silently describe other
pixels than the ones being loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from numcodecs.vlen import VLenUTF8
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, VLenUTF8Codec, ZstdCodec
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import LocalStore

from geogfm.core.errors import DataError

__all__ = [
    "CacheCell",
    "CacheIndex",
    "ChunkReader",
    "band_names",
    "cache_fingerprint",
    "check_stats_match",
    "load_cache_index",
    "open_cell",
    "store_band_names",
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


def _metadata(path: Path) -> Any | None:
    """The zarr v3 metadata of the array at ``path``, parsed without opening it; None if not v3."""
    try:
        raw = json.loads((path / "zarr.json").read_bytes())
        if raw.get("zarr_format") != 3 or raw.get("node_type") != "array":
            return None
        return ArrayV3Metadata.from_dict(raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _native_dtype(meta: Any) -> np.dtype:
    to_native = getattr(meta.dtype, "to_native_dtype", None)  # zarr >= 3.1: a ZDType
    return np.dtype(to_native() if to_native is not None else meta.dtype)


def _direct_decoder(meta: Any) -> Callable[..., Any] | None:
    """``(bytes, out) -> buffer`` decoding one stored chunk, or None if not a simple layout.

    Simple: a regular chunk grid, the ``bytes`` codec in little-endian order on a little-endian
    machine, then at most one of the zstd, blosc or gzip compressors (what zarr v3 and the tile
    cache write). Anything else (sharding, transposes, checksums) is read through zarr.
    """
    if not np.little_endian or type(meta.chunk_grid).__name__ != "RegularChunkGrid":
        return None
    first, *rest = meta.codecs
    if not isinstance(first, BytesCodec) or (first.endian and first.endian.value != "little"):
        return None
    if not rest:  # uncompressed: a copy out of the reused read buffer
        return lambda raw, out: bytes(raw) if out is None else _copy_into(raw, out)
    if len(rest) > 1:
        return None
    codec = _COMPRESSORS.get(type(rest[0]))
    return codec().decode if codec is not None else None


def _copy_into(raw: Any, out: np.ndarray) -> np.ndarray:
    np.frombuffer(out, dtype=np.uint8)[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


_COMPRESSORS = {ZstdCodec: numcodecs.Zstd, BloscCodec: numcodecs.Blosc, GzipCodec: numcodecs.GZip}


class ChunkReader:
    """Whole chunks of a zarr array: the chunk's file read and decoded in one codec call.

    zarr's own indexing does the same work through an async pipeline whose fixed cost per call is
    a large part of decoding a chunk; this reader skips it for the simple layouts zarr v3 writes
    in a local store (see ``direct``), and reads through zarr otherwise. Opened from a path, it
    parses the array's ``zarr.json`` itself and opens the array with zarr only when it needs to.
    Decoding releases the GIL, so threads reading different chunks run in parallel. Safe to share
    between threads.

    Args:
        array: the zarr array, or the path of its directory in a local store.
    """

    def __init__(self, array: zarr.Array | str | Path):
        if isinstance(array, zarr.Array):
            self._array: zarr.Array | None = array
            local = isinstance(array.store_path.store, LocalStore)
            meta = array.metadata if local and array.metadata.zarr_format == 3 else None
            self.path = Path(array.store_path.store.root) / array.store_path.path if local else None
        else:
            self._array, self.path = None, Path(array)
            meta = _metadata(self.path)
        self._decode = _direct_decoder(meta) if meta is not None else None
        #: True when chunks are decoded from their files, False when read through zarr
        self.direct = self._decode is not None
        if self.direct:
            self.shape, self.chunks = tuple(meta.shape), tuple(meta.chunk_grid.chunk_shape)
            self.dtype = _native_dtype(meta)
            self._fill = self.dtype.type(meta.fill_value)
            self._key = meta.encode_chunk_key
        else:
            self.shape, self.chunks = tuple(self.array.shape), tuple(self.array.chunks)
            self.dtype = np.dtype(self.array.dtype)

    @property
    def array(self) -> zarr.Array:
        """The zarr array (opened on first use)."""
        if self._array is None:
            self._array = zarr.open_array(self.path, mode="r")
        return self._array

    def block(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """The chunk at chunk-grid ``coords``, cut to the array's bounds (edge chunks are smaller).

        Args:
            coords: one index per axis, in chunks.
            out: a C-contiguous array of ``self.dtype`` with ``prod(self.chunks)`` elements to
                decode into (reused between calls to save allocations); direct reads only.

        Returns:
            The chunk's values (read-only), shaped ``min(chunk, shape - coords * chunk)`` per
            axis; a view of ``out`` when given and used.
        """
        lo = [i * c for i, c in zip(coords, self.chunks, strict=True)]
        hi = [min(a + c, s) for a, c, s in zip(lo, self.chunks, self.shape, strict=True)]
        if not self.direct:
            return np.asarray(self.array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
        assert self.path is not None and self._decode is not None
        try:
            with open(self.path / self._key(coords), "rb", buffering=0) as f:
                raw = _read_into_scratch(f)
        except FileNotFoundError:  # zarr does not store chunks that are all fill value
            chunk = np.full(self.chunks, self._fill, dtype=self.dtype)
        else:
            chunk = np.frombuffer(self._decode(raw, out), dtype=self.dtype).reshape(self.chunks)
        if all(b - a == c for a, b, c in zip(lo, hi, self.chunks, strict=True)):
            return chunk
        return chunk[tuple(slice(0, b - a) for a, b in zip(lo, hi, strict=True))]


_SCRATCH = threading.local()


def _read_into_scratch(f: Any) -> Any:
    """A file's bytes, in this thread's reusable buffer: valid until the thread's next call.

    Reusing the buffer saves an allocation, and its page faults, per chunk read.
    """
    size = os.fstat(f.fileno()).st_size
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < size:
        buf = _SCRATCH.buf = bytearray(max(size, 1 << 20))
    view = memoryview(buf)[:size]
    n = f.readinto(view)
    return view[:n]


def store_band_names(store: str | Path) -> list[str]:
    """The ``band`` coordinate of the Zarr store at ``store``, as :func:`band_names` gives it.

    Decodes the coordinate's one chunk directly when it is stored as zarr v3 writes strings
    (``vlen-utf8`` then at most one zstd, blosc or gzip compressor), which costs a small fraction
    of opening the store with zarr; opens it with zarr otherwise.
    """
    path = Path(store) / "band"
    meta = _metadata(path)
    if meta is not None and len(meta.shape) == 1 and meta.chunk_grid.chunk_shape == meta.shape:
        first, *rest = meta.codecs
        decode = _COMPRESSORS.get(type(rest[0])) if len(rest) == 1 else None
        if isinstance(first, VLenUTF8Codec) and (decode is not None or not rest):
            try:
                with open(path / meta.encode_chunk_key((0,)), "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                pass
            else:
                values = VLenUTF8().decode(decode().decode(raw) if decode else raw)
                if len(values) == meta.shape[0]:
                    return [str(v) for v in values]
    return band_names(zarr.open_group(store, mode="r"))


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

    def walk(path: str, rel: str, in_1d: bool) -> None:
        """Feed a directory (as ``os.walk`` visits it, top-down, sorted), then its subfolders."""
        dirs, files = [], []
        with os.scandir(path) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir():  # a link to a directory is listed but not followed, as os.walk
                    if not e.is_symlink():
                        dirs.append(e.name)
                else:
                    files.append(e)
        files.sort(key=lambda e: e.name)
        if any(e.name == "zarr.json" for e in files):
            with open(os.path.join(path, "zarr.json"), "rb") as f:
                meta = f.read()
            feed(f"{rel}/zarr.json", meta)
            shape = json.loads(meta).get("shape")
            in_1d = in_1d or (isinstance(shape, list) and len(shape) <= 1)
        for e in files:
            if e.name == "zarr.json":
                continue
            if in_1d:  # a chunk of a 1-D array: its bytes
                with open(e.path, "rb") as f:
                    feed(f"{rel}/{e.name}", f.read())
            else:  # a data chunk: its size
                feed(f"{rel}/{e.name}", str(e.stat().st_size))
        for name in sorted(dirs):
            walk(os.path.join(path, name), f"{rel}/{name}", in_1d)

    feed("index.json", (root / "index.json").read_bytes())
    for cell_id in sorted(c.id for c in index.cells):
        store = index.store(cell_id)
        walk(str(store), store.relative_to(root).as_posix(), False)
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
