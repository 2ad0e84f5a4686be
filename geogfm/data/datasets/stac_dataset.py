"""A map-style dataset of patch windows read from the Zarr tile cache.

Each item is one row of the patch manifest: a (cell, time, window) whose pixels come straight from
the cell's Zarr store (``zarr`` arrays, no xarray per sample). Stores are opened lazily, once per
process, so a ``DataLoader`` worker never reuses a handle opened in its parent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import band_names, load_cache_index, open_cell
from geogfm.data.manifest import read_manifest

__all__ = ["StacPatchDataset"]


class StacPatchDataset(Dataset):
    """Patches of the tile cache listed in a patch manifest.

    Samples are dicts:

    - ``image``: (C, H, W) float32 reflectance (``DN * scale + offset``), bands in ``bands`` order;
    - ``valid``: (H, W) bool, False for nodata, cloud and shadow pixels;
    - ``patch_id``, ``cell_id``: str; ``time_index``: int; ``datetime``: ISO str;
    - ``bounds``: ``(minx, miny, maxx, maxy)`` in CRS units; ``crs``: e.g. ``"EPSG:32633"``.

    Args:
        manifest: ``patches.parquet`` (or its directory), or a manifest DataFrame.
        cache_dir: the tile cache directory.
        split: ``"train"``, ``"val"`` or ``None`` for every row.
        bands: band names to read, in output order; each must be in the cache.
        transforms: a ``dict -> dict`` callable applied to each sample (e.g. :class:`Normalize`).

    Raises:
        FileNotFoundError: if the manifest or the cache is missing.
        DataError: if a band is not in the cache or the manifest names cells the cache lacks.
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
        transforms: Callable[[dict], dict] | None = None,
    ):
        if split is not None and split not in self.splits:
            raise ValueError(f"split must be one of {self.splits} or None, got {split!r}")
        if not bands:
            raise ValueError("bands is empty; name at least one cached band")
        rows = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
        if split is not None:
            rows = rows[rows["split"] == split]
        rows = rows.reset_index(drop=True)
        self.index = load_cache_index(cache_dir)
        self.split = split
        self.bands = list(bands)
        self.transforms = transforms

        # columns as numpy arrays: indexing a DataFrame per sample is slow
        self._patch_id = rows["patch_id"].to_numpy(dtype=object)
        self._cell = rows["cell_id"].to_numpy(dtype=object)
        self._time = rows["time_index"].to_numpy(dtype=np.int64)
        self._datetime = rows["datetime"].to_numpy(dtype=object)
        self._row = rows["row"].to_numpy(dtype=np.int64)
        self._col = rows["col"].to_numpy(dtype=np.int64)
        self._size = rows["size"].to_numpy(dtype=np.int64)
        self._crs = rows["crs"].to_numpy(dtype=object)
        self._bounds = rows[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=np.float64)

        # per cell: where each requested band sits in the store's band axis
        self._band_index: dict[str, slice | np.ndarray] = {}
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
            # consecutive bands in store order read as one slice, others by orthogonal indexing
            contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
            self._band_index[cell_id] = slice(idx[0], idx[-1] + 1) if contiguous else np.array(idx)
        self._stores: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._patch_id)

    def _arrays(self, cell_id: str) -> tuple[Any, Any]:
        """The cell's ``reflectance`` and ``valid`` zarr arrays, opened once per process."""
        if self._pid != os.getpid():  # a forked worker: open its own handles
            self._stores, self._pid = {}, os.getpid()
        if cell_id not in self._stores:
            group = open_cell(self.index, cell_id)
            self._stores[cell_id] = (group["reflectance"], group["valid"])
        return self._stores[cell_id]

    def __getitem__(self, i: int) -> dict:
        cell_id = self._cell[i]
        t, r, c, s = int(self._time[i]), int(self._row[i]), int(self._col[i]), int(self._size[i])
        reflectance, valid_array = self._arrays(cell_id)
        band = self._band_index[cell_id]
        if isinstance(band, slice):
            dn = reflectance[t, band, r : r + s, c : c + s]  # (C, H, W) uint16
        else:
            dn = reflectance.oindex[t, band, r : r + s, c : c + s]
        image = dn.astype(np.float32) * np.float32(self.index.scale) + np.float32(self.index.offset)
        valid = np.asarray(valid_array[t, r : r + s, c : c + s], dtype=bool)  # (H, W)
        sample = {
            "image": torch.from_numpy(image),
            "valid": torch.from_numpy(valid),
            "patch_id": self._patch_id[i],
            "cell_id": cell_id,
            "time_index": t,
            "datetime": self._datetime[i],
            "bounds": tuple(float(v) for v in self._bounds[i]),
            "crs": self._crs[i],
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def __getstate__(self) -> dict:
        # zarr handles stay behind when the dataset is pickled (spawned workers open their own)
        return {**self.__dict__, "_stores": {}}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, bands={self.bands}, "
            f"patches={len(self)}, cache={str(self.index.root)!r})"
        )
