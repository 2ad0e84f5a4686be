"""Windows of Zarr v3 arrays read by decoding whole chunks directly, for fast patch loading.

A training patch lies in one chunk of the tile cache (or a few), so the fastest read is: the chunk
file's bytes, one codec call, and a copy of the window out of the decoded chunk. zarr's own indexing
does the same work through an async pipeline whose overhead per call (~0.4 ms) is as large as the
copy; :class:`ZarrWindows` skips it for the layouts zarr v3 writes by default (see
:func:`chunk_decoder`) and falls back to zarr for any other. Decoded chunks are kept in a small LRU,
so windows that share a chunk (overlapping or small patches) decode it once.

Batches are read straight into shared memory in a ``DataLoader`` worker (:func:`batch_tensor`), so
they reach the main process without a copy. A fresh shared-memory tensor per batch costs more than
the read itself (its pages are allocated and zeroed on first touch: ~1.2 ms per 224 x 224 x 12
patch against ~0.6 ms to read it from cached chunks), so each worker keeps a pool of them and reuses
one once the main process has let it go: a :class:`BufferLease` travels with the batch, and when
the main process's last reference to the buffer dies (the training loop is done with the batch, or
the pin-memory thread has copied it), the buffer returns to the pool. A buffer the main process
still holds is never written, however many batches it keeps.
"""

from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import torch
import zarr
from torch.utils.data import get_worker_info
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec
from zarr.storage import LocalStore

__all__ = ["BufferLease", "ZarrWindows", "batch_tensor", "chunk_decoder", "lease"]


def chunk_decoder(array: zarr.Array) -> Callable[[bytes], Any] | None:
    """``bytes -> buffer`` decoding one stored chunk of ``array``, or None if not a simple layout.

    Simple: a local store, a regular chunk grid, the ``bytes`` codec in native (little) byte
    order, then at most one of the zstd, blosc or gzip compressors (what zarr v3 writes by
    default). Anything else (sharding, transposes, checksums) is read through zarr.
    """
    meta = array.metadata
    if meta.zarr_format != 3 or not isinstance(array.store_path.store, LocalStore):
        return None
    if not np.little_endian:
        return None
    if type(meta.chunk_grid).__name__ != "RegularChunkGrid":
        return None
    first, *rest = meta.codecs
    if not isinstance(first, BytesCodec) or (first.endian and first.endian.value != "little"):
        return None
    if not rest:
        return bytes
    if len(rest) > 1:
        return None
    codec = {ZstdCodec: numcodecs.Zstd, BloscCodec: numcodecs.Blosc, GzipCodec: numcodecs.GZip}
    make = codec.get(type(rest[0]))
    return make().decode if make is not None else None


class ZarrWindows:
    """Windows ``array[t, ..., r:r+h, c:c+w]`` of a zarr v3 array shaped (T, [B,] Y, X).

    Whole chunks are read and decoded directly (see :func:`chunk_decoder`) and the window is
    copied out of them; the decoded chunks are kept in an LRU up to ``cache_bytes``. Arrays that
    are not laid out simply, or whose middle axis is split over chunks, go through zarr.
    """

    def __init__(self, array: zarr.Array, *, cache_bytes: int):
        self.array = array
        self.shape, self.chunks = tuple(array.shape), tuple(array.chunks)
        self.dtype = np.dtype(array.dtype)
        middle_whole = all(c >= s for c, s in zip(self.chunks[1:-2], self.shape[1:-2], strict=True))
        self._decode = chunk_decoder(array) if middle_whole else None
        self._root = Path(array.store_path.store.root) / array.store_path.path
        self._fill = self.dtype.type(array.metadata.fill_value)
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._cache_bytes, self._held = int(cache_bytes), 0

    def _chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        """The decoded chunk at chunk-grid ``coords``, shaped ``self.chunks`` (read-only)."""
        chunk = self._cache.get(coords)
        if chunk is not None:
            self._cache.move_to_end(coords)
            return chunk
        path = self._root / self.array.metadata.encode_chunk_key(coords)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # zarr does not store chunks that are all fill value
            chunk = np.full(self.chunks, self._fill, dtype=self.dtype)
        else:
            chunk = np.frombuffer(self._decode(raw), dtype=self.dtype).reshape(self.chunks)
        if chunk.nbytes <= self._cache_bytes:
            self._cache[coords] = chunk
            self._held += chunk.nbytes
            while self._held > self._cache_bytes:
                self._held -= self._cache.popitem(last=False)[1].nbytes
        return chunk

    def read(
        self,
        t: int,
        r: int,
        c: int,
        size: int,
        select: slice | np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """``array[t, select, r:r+size, c:c+size]`` (``select`` ignored for 3-D arrays).

        Written into ``out`` when given (same shape; any dtype numpy can cast to).
        """
        three_d = len(self.shape) == 3
        if self._decode is None:
            if three_d:
                window = self.array[t, r : r + size, c : c + size]
            elif isinstance(select, slice):
                window = self.array[t, select, r : r + size, c : c + size]
            else:
                window = self.array.oindex[t, select, r : r + size, c : c + size]
            if out is None:
                return np.asarray(window)
            out[...] = window
            return out
        ct, (cy, cx) = self.chunks[0], self.chunks[-2:]
        if out is None:
            n_mid = () if three_d else (len(np.arange(self.shape[1])[select]),)
            out = np.empty((*n_mid, size, size), dtype=self.dtype)
        for iy in range(r // cy, (r + size - 1) // cy + 1):
            y0, y1 = max(r, iy * cy), min(r + size, (iy + 1) * cy)
            for ix in range(c // cx, (c + size - 1) // cx + 1):
                x0, x1 = max(c, ix * cx), min(c + size, (ix + 1) * cx)
                zeros = (0,) * (len(self.shape) - 3)
                chunk = self._chunk((t // ct, *zeros, iy, ix))[t % ct]  # ([B,] cy, cx)
                src = (..., slice(y0 - iy * cy, y1 - iy * cy), slice(x0 - ix * cx, x1 - ix * cx))
                dst = (..., slice(y0 - r, y1 - r), slice(x0 - c, x1 - c))
                if three_d:
                    out[dst] = chunk[src]
                elif isinstance(select, slice):
                    out[dst] = chunk[select][src]
                else:  # band by band: copies only the window, never a whole chunk
                    for k, b in enumerate(select):
                        out[k][dst] = chunk[b][src]
        return out


def _shared(shape: tuple[int, ...], dtype: torch.dtype, storage=None) -> torch.Tensor:
    """A tensor on ``storage``, or on a new shared-memory storage of exactly its size."""
    if storage is None:
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


#: Shared-memory buffers a worker keeps for reuse (two per batch: ``image`` and ``valid``). The
#: main process holds a worker's batches for at most ``prefetch_factor`` (2) in flight, plus the one
#: the training loop uses and the next one it fetches: 4 batches, 8 buffers. Beyond this, while the
#: consumer keeps more batches alive, new buffers are allocated as if there were no pool.
POOL_SLOTS = 16


class _BufferPool:
    """A worker's shared-memory batch buffers, each free or in use.

    ``state[k]`` (in shared memory, so the main process can clear it) is 1 from :meth:`take`
    until the main process has dropped slot ``k``'s buffer (see :class:`BufferLease`), or for good
    if it was never leased (then someone else may hold it).
    """

    def __init__(self, slots: int):
        self.state = _shared((slots,), torch.uint8)
        self.state.zero_()
        self._state = self.state.numpy()
        self.storages: list[torch.UntypedStorage] = []
        self._slot: dict[int, int] = {}  # data pointer -> slot
        self.allocated = 0  # buffers allocated (pooled or not), for tests and benchmarks

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor on a free buffer of at least its size (a new one if none is free)."""
        nbytes = math.prod(shape) * dtype.itemsize
        free = [k for k in range(len(self.storages)) if self._state[k] == 0]
        fits = [k for k in free if self.storages[k].nbytes() >= nbytes]
        if fits:
            k = min(fits, key=lambda k: self.storages[k].nbytes())
        else:
            if len(self.storages) < len(self._state):  # a new slot
                k = len(self.storages)
                self.storages.append(torch.UntypedStorage(0))
            elif free:  # a free buffer too small for this batch: replace it
                k = free[0]
            else:  # every buffer is held: one outside the pool
                self.allocated += 1
                return _shared(shape, dtype)
            self._slot.pop(self.storages[k].data_ptr(), None)
            self.storages[k] = torch.UntypedStorage._new_shared(nbytes)
            self._slot[self.storages[k].data_ptr()] = k
            self.allocated += 1
        self._state[k] = 1
        return _shared(shape, dtype, self.storages[k])

    def lease(self, tensor: torch.Tensor) -> BufferLease | None:
        """The lease of the pooled buffer ``tensor`` lies on, or None if it is not pooled."""
        k = self._slot.get(tensor.untyped_storage().data_ptr())
        return None if k is None else BufferLease(self.state, k, tensor)


_POOL: tuple[int, _BufferPool] | None = None  # (pid, the pool of this worker process)


def _pool() -> _BufferPool:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), _BufferPool(POOL_SLOTS))
    return _POOL[1]


def _release(state: torch.Tensor, slot: int) -> None:
    state[slot] = 0


def _bind(state: torch.Tensor, slot: int, tensor: torch.Tensor) -> None:
    """Unpickling a lease: free ``slot`` once ``tensor``'s storage dies in this process."""
    weakref.finalize(tensor.untyped_storage(), _release, state, slot).atexit = False


class BufferLease:
    """Hands a pooled batch buffer back to its worker once the receiving process drops it.

    Put it in the batch beside the tensor (:func:`geogfm.data.loaders.collate_patches` does):
    unpickled in the main process, it attaches a finalizer to the received tensor's storage, which
    clears the buffer's slot when the last tensor, view or array on that storage is gone, and it
    becomes None. The worker writes a buffer only while its slot is clear.
    """

    __slots__ = ("slot", "state", "tensor")

    def __init__(self, state: torch.Tensor, slot: int, tensor: torch.Tensor):
        self.state, self.slot, self.tensor = state, slot, tensor

    def __reduce__(self):  # noqa: D105
        return _bind, (self.state, self.slot, self.tensor)


def lease(tensor: torch.Tensor) -> BufferLease | None:
    """The :class:`BufferLease` of a batch tensor from :func:`batch_tensor`, if it is pooled.

    Only in a ``DataLoader`` worker; a pooled buffer that is never leased stays in use for good.
    """
    if get_worker_info() is None or _POOL is None or _POOL[0] != os.getpid():
        return None
    return _POOL[1].lease(tensor)


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor, in reused shared memory when in a ``DataLoader`` worker.

    A tensor in shared memory goes to the main process as a handle, without a copy. In a worker
    it lies on a buffer of the worker's pool (see the module docstring), and the caller must pass
    it on with its :func:`lease`, or the buffer is never reused; every element must be written.
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    return _pool().take(shape, dtype)
