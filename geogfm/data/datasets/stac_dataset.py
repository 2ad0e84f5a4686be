"""A map-style dataset of patch windows read from the Zarr tile cache, one date or several.

Each item is a window of a cell listed in the patch manifest. Single-date (the default, what the
``pretrain`` stage trains on), one item per manifest row: a (cell, time, window). Multi-date, with a
:class:`~geogfm.data.transforms.temporal_sampling.TemporalSampler`: one item per window location,
whose manifest rows at the different dates are grouped, and the sampler picks ``T`` of them.

Pixels come straight from the cell's Zarr store: a window is cut out of the decoded chunk(s) it
overlaps (the tile cache lays chunks out so that a training patch lies in one), without xarray or
zarr's per-read machinery (:mod:`geogfm.data.zarr_windows`); the last decoded chunks are kept per
process, up to a byte budget. Stores are opened lazily, once per process, so a ``DataLoader``
worker never reuses a handle opened in its parent. A batch is read straight into one tensor
(:meth:`StacPatchDataset.__getitems__`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import band_names, load_cache_index, open_cell
from geogfm.data.manifest import read_manifest
from geogfm.data.transforms.temporal_sampling import TemporalSampler
from geogfm.data.zarr_windows import ZarrWindows, batch_tensor

__all__ = ["StacPatchDataset"]


class StacPatchDataset(Dataset):
    """Patches of the tile cache listed in a patch manifest.

    Samples are dicts:

    - ``image``: (C, H, W), or (T, C, H, W) multi-date; float32 reflectance
      (``DN * scale + offset``), or the cache's uint16 DN with ``units="dn"``; bands in ``bands``
      order;
    - ``valid``: (H, W) or (T, H, W) bool, False for nodata, cloud and shadow pixels;
    - ``time``: int64 tensor, seconds since 1970-01-01 UTC, shape () or (T,);
    - ``datetime``: ISO str, or a list of T; ``time_index``: int, or (T,) int64 tensor;
    - ``patch_id``: str (multi-date: the window's id, without the time step);
    - ``cell``: the cell id; ``bounds``: ``(minx, miny, maxx, maxy)`` in CRS units; ``crs``.

    Args:
        manifest: ``patches.parquet`` (or its directory), or a manifest DataFrame.
        cache_dir: the tile cache directory.
        split: ``"train"``, ``"val"`` or ``None`` for every row.
        bands: band names to read, in output order; each must be in the cache.
        units: ``"reflectance"`` (float32) or ``"dn"`` (uint16 as cached, for transport; see
            :class:`~geogfm.data.transforms.normalization.DeviceNormalize`).
        temporal: a sampler for multi-date samples; ``None`` for single-date samples.
        random_frames: with ``temporal``, draw frames at random per sample (training); False for
            the sampler's deterministic pick (validation).
        seed: mixed with the worker's torch seed for the random frame draws.
        transforms: a ``dict -> dict`` callable applied to each sample (e.g. :class:`Normalize`).
        chunk_cache_bytes: decoded Zarr chunks kept per process (0: decode every read).

    Raises:
        FileNotFoundError: if the manifest or the cache is missing.
        DataError: if a band is not in the cache, the manifest names cells the cache lacks, or no
            window has enough frames for ``temporal``.
    """

    #: Which manifest rows a split selects.
    splits: tuple[str, ...] = ("train", "val")

    def __init__(
        self,
        manifest: str | Path | pd.DataFrame,
        cache_dir: str | Path,
        *,
        split: Literal["train", "val"] | None,
        bands: Sequence[str],
        units: Literal["reflectance", "dn"] = "reflectance",
        temporal: TemporalSampler | None = None,
        random_frames: bool = True,
        seed: int = 0,
        transforms: Callable[[dict], dict] | None = None,
        chunk_cache_bytes: int = 64 * 2**20,
    ):
        if split is not None and split not in self.splits:
            raise ValueError(f"split must be one of {self.splits} or None, got {split!r}")
        if units not in ("reflectance", "dn"):
            raise ValueError(f'units must be "reflectance" or "dn", got {units!r}')
        if not bands:
            raise ValueError("bands is empty; name at least one cached band")
        rows = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
        if split is not None:
            rows = rows[rows["split"] == split]
        rows = rows.reset_index(drop=True)
        self.index = load_cache_index(cache_dir)
        self.split, self.bands, self.units = split, list(bands), units
        self.temporal, self.random_frames, self.seed = temporal, random_frames, int(seed)
        self.transforms = transforms
        self.chunk_cache_bytes = int(chunk_cache_bytes)
        #: reflectance = DN * scale + offset
        self.scale, self.offset = self.index.scale, self.index.offset

        # columns as numpy arrays: indexing a DataFrame per sample is slow
        self._patch_id = rows["patch_id"].to_numpy(dtype=object)
        self._cell = rows["cell_id"].to_numpy(dtype=object)
        self._time = rows["time_index"].to_numpy(dtype=np.int64)
        self._datetime = rows["datetime"].to_numpy(dtype=object)
        when = pd.to_datetime(rows["datetime"], utc=True).dt.tz_localize(None)
        self._stamp = when.to_numpy().astype("datetime64[s]")
        self._row = rows["row"].to_numpy(dtype=np.int64)
        self._col = rows["col"].to_numpy(dtype=np.int64)
        self._size = rows["size"].to_numpy(dtype=np.int64)
        self._crs = rows["crs"].to_numpy(dtype=object)
        self._bounds = rows[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=np.float64)
        self._valid_fraction = rows["valid_fraction"].to_numpy(dtype=np.float64)
        self._band_index = self._check_bands()
        self._groups = self._group_frames(rows) if temporal is not None else None
        self._readers: dict[str, tuple[ZarrWindows, ZarrWindows]] = {}
        self._pid = os.getpid()
        self._rng: tuple[int, np.random.Generator] | None = None

    def _check_bands(self) -> dict[str, slice | np.ndarray]:
        """Per cell, where each requested band sits in the store's band axis."""
        band_index: dict[str, slice | np.ndarray] = {}
        for cell_id in sorted(set(self._cell)):
            self.index.cell(cell_id)  # raises if the manifest is from another cache
            cached = band_names(open_cell(self.index, cell_id))
            missing = [b for b in self.bands if b not in cached]
            if missing:
                raise DataError(
                    f"band(s) {missing} are not in the tile cache {self.index.store(cell_id)} "
                    f"(bands {cached}); add them to tile_cache.bands and rerun "
                    "`geogfm tile_cache`, or remove them from data.bands"
                )
            idx = [cached.index(b) for b in self.bands]
            # consecutive bands in store order read as one slice, others band by band
            contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
            band_index[cell_id] = slice(idx[0], idx[-1] + 1) if contiguous else np.array(idx)
        return band_index

    def _group_frames(self, rows: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per window location: its manifest rows in time order, and the deterministic pick."""
        assert self.temporal is not None
        if len(rows) == 0:
            return []
        order = np.lexsort((self._stamp, self._col, self._row, self._cell.astype(str)))
        key = rows[["cell_id", "row", "col", "size"]].to_numpy()[order]
        starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]).any(axis=1)])
        groups, dropped = [], 0
        for members in np.split(order, starts[1:]):
            pick = self.temporal.select(self._stamp[members], self._valid_fraction[members])
            if pick is None:
                dropped += 1
                continue
            groups.append((members, members[pick]))
        if not groups:
            raise DataError(
                f"no window of the {self.split or 'whole'} manifest has the frames {self.temporal} "
                f"needs ({dropped} windows, at most "
                f"{max((len(m) for m in np.split(order, starts[1:])), default=0)} dates each); "
                "lower data.num_frames or data.min_frame_valid_fraction, or cache more dates"
            )
        return groups

    def __len__(self) -> int:
        return len(self._patch_id) if self._groups is None else len(self._groups)

    def _windows(self, cell_id: str) -> tuple[ZarrWindows, ZarrWindows]:
        """The cell's ``reflectance`` and ``valid`` readers, opened once per process."""
        if self._pid != os.getpid():  # a forked worker: open its own handles
            self._readers, self._pid, self._rng = {}, os.getpid(), None
        if cell_id not in self._readers:
            group = open_cell(self.index, cell_id)
            budget = self.chunk_cache_bytes
            self._readers[cell_id] = (
                ZarrWindows(group["reflectance"], cache_bytes=budget),
                ZarrWindows(group["valid"], cache_bytes=budget // 8),
            )
        return self._readers[cell_id]

    def _frame_rng(self) -> np.random.Generator:
        """The process's generator for frame draws: seeded from ``seed`` and the torch seed.

        In a ``DataLoader`` worker the torch seed is the loader's base seed plus the worker id,
        so draws follow the loader's generator; in the main process, ``torch.manual_seed``.
        """
        torch_seed = torch.initial_seed()
        if self._rng is None or self._rng[0] != torch_seed:
            self._rng = (torch_seed, np.random.default_rng([self.seed, torch_seed]))
        return self._rng[1]

    def _read(
        self, i: int, out: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """DN (C, H, W) uint16 and valid (H, W) bool of manifest row ``i`` (into ``out``)."""
        cell_id = self._cell[i]
        reflectance, valid = self._windows(cell_id)
        t, r, c, s = int(self._time[i]), int(self._row[i]), int(self._col[i]), int(self._size[i])
        dn_out, valid_out = out if out is not None else (None, None)
        dn = reflectance.read(t, r, c, s, self._band_index[cell_id], out=dn_out)
        mask = valid.read(t, r, c, s, slice(None), out=valid_out)
        return dn, mask.astype(bool, copy=False)

    def _image(self, dn: np.ndarray) -> torch.Tensor:
        if self.units == "dn":
            return torch.from_numpy(dn)
        image = dn.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        return torch.from_numpy(image)

    def _describe(self, i: int) -> dict:
        """Everything but the pixels of single-date row ``i``."""
        return {
            "time": torch.tensor(self._stamp[i].astype(np.int64)),
            "datetime": self._datetime[i],
            "time_index": int(self._time[i]),
            "patch_id": self._patch_id[i],
            "cell": self._cell[i],
            "bounds": tuple(float(v) for v in self._bounds[i]),
            "crs": self._crs[i],
        }

    def __getitem__(self, i: int) -> dict:
        if self._groups is None:
            dn, valid = self._read(i)
            sample = {
                "image": self._image(dn),  # (C, H, W)
                "valid": torch.from_numpy(valid),  # (H, W)
                **self._describe(i),
            }
        else:
            members, frames = self._groups[i]
            if self.random_frames:
                pick = self.temporal.select(
                    self._stamp[members], self._valid_fraction[members], self._frame_rng()
                )
                frames = members[pick]
            dn, valid = zip(*(self._read(int(j)) for j in frames), strict=True)
            j = int(frames[0])  # the window's location is every frame's
            sample = {
                "image": self._image(np.stack(dn)),  # (T, C, H, W)
                "valid": torch.from_numpy(np.stack(valid)),  # (T, H, W)
                "time": torch.from_numpy(self._stamp[frames].astype(np.int64)),  # (T,)
                "datetime": [self._datetime[k] for k in frames],
                "time_index": torch.from_numpy(self._time[frames]),
                "patch_id": f"{self._cell[j]}_r{self._row[j]:05d}_c{self._col[j]:05d}",
                "cell": self._cell[j],
                "bounds": tuple(float(v) for v in self._bounds[j]),
                "crs": self._crs[j],
            }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The samples of a batch (the ``DataLoader``'s batched fetch).

        Single-date DN samples without transforms are read straight into one (B, C, H, W) tensor
        (and one (B, H, W) mask), in shared memory in a worker: each sample's ``image`` and
        ``valid`` are rows of them, which :func:`geogfm.data.loaders.collate_patches` passes on
        as the batch without stacking a copy. Other samples are read one by one.
        """
        sizes = {int(self._size[i]) for i in indices} if self._groups is None else set()
        if self.units != "dn" or self.transforms is not None or len(sizes) != 1:
            return [self[i] for i in indices]
        s, C, B = sizes.pop(), len(self.bands), len(indices)
        image = batch_tensor((B, C, s, s), torch.uint16)
        valid = batch_tensor((B, s, s), torch.bool)
        dn, mask = image.numpy(), valid.numpy()
        samples = []
        for k, i in enumerate(indices):
            self._read(i, out=(dn[k], mask[k]))
            samples.append({**self._describe(i), "image": image[k], "valid": valid[k]})
        return samples

    def __getstate__(self) -> dict:
        # zarr handles and decoded chunks stay behind when the dataset is pickled (spawned workers)
        return {**self.__dict__, "_readers": {}, "_rng": None}

    def __repr__(self) -> str:
        frames = "" if self.temporal is None else f", temporal={self.temporal}"
        return (
            f"{type(self).__name__}(split={self.split!r}, bands={self.bands}, units={self.units!r}"
            f"{frames}, samples={len(self)}, cache={str(self.index.root)!r})"
        )
