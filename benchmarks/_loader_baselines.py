"""Baseline datasets of the loader benchmark (``loader_throughput.py``): memmap and rasterio.

- :class:`MemmapPatches`: the cache's arrays as uncompressed ``.npy`` files, read through memmap.
- :class:`BatchedMemmapPatches`: the same, a batch read straight into one shared-memory tensor.
- :class:`RasterioPatches`: windowed reads of the source COGs, resampled to the window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pystac
import rasterio
import torch
import zarr
from rasterio.enums import Resampling
from rasterio.errors import WindowError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds
from torch.utils.data import Dataset

from geogfm.data import zarr_windows
from geogfm.data.datasets.sentinel2 import BANDS, SCL_INVALID_DEFAULT
from geogfm.data.loaders import seed_worker

ALL_BANDS = [b.key for b in BANDS]


class MemmapPatches(Dataset):
    """The same windows from uncompressed ``.npy`` copies of the cache arrays, via memmap."""

    def __init__(self, rows, folder: Path):
        self.rows = rows[["cell_id", "time_index", "row", "col", "size"]].to_numpy()
        self.folder, self._open = folder, {}

    def __len__(self):
        return len(self.rows)

    def _arrays(self, cell):
        if cell not in self._open:
            self._open[cell] = (
                np.load(self.folder / f"{cell}.reflectance.npy", mmap_mode="r"),
                np.load(self.folder / f"{cell}.valid.npy", mmap_mode="r"),
            )
        return self._open[cell]

    def __getitem__(self, i):
        cell, t, r, c, s = self.rows[i]
        refl, valid = self._arrays(cell)
        image = np.array(refl[t, :, r : r + s, c : c + s])  # (C, H, W) uint16, a copy
        return {
            "image": torch.from_numpy(image),
            "valid": torch.from_numpy(valid[t, r : r + s, c : c + s].copy()),
        }


class BatchedMemmapPatches(MemmapPatches):
    """:class:`MemmapPatches` reading a batch straight into one shared-memory tensor, as geogfm
    does (:meth:`StacPatchDataset.__getitems__`): the strict baseline for geogfm's transport."""

    def __getitems__(self, indices):
        n, s = len(indices), int(self.rows[indices[0]][4])
        bands = self._arrays(self.rows[indices[0]][0])[0].shape[1]
        image = _shared((n, bands, s, s), torch.uint16)
        valid = _shared((n, s, s), torch.bool)
        dn, mask = image.numpy(), valid.numpy()
        for k, i in enumerate(indices):
            cell, t, r, c, s = self.rows[i]
            refl, ok = self._arrays(cell)
            dn[k] = refl[t, :, r : r + s, c : c + s]
            mask[k] = ok[t, r : r + s, c : c + s]
        return {"image": image, "valid": valid}


def _shared(shape, dtype):
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _batch_as_is(batch):
    return batch


def write_memmaps(cache: Path, cells: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        group = zarr.open_group(cache / f"{cell}.zarr", mode="r")
        for name in ("reflectance", "valid"):
            data = group[name][:]
            out = np.lib.format.open_memmap(
                folder / f"{cell}.{name}.npy", mode="w+", dtype=data.dtype, shape=data.shape
            )
            out[:] = data
            out.flush()


class RasterioPatches(Dataset):
    """The same windows read from the source COGs: 12 bands resampled to the window, plus scl.

    Each file is opened once per worker; decoded blocks are kept in GDAL's block cache, whose size
    (``GDAL_CACHEMAX``) :func:`gdal_worker` sets in each worker.
    """

    def __init__(self, rows, items: dict[str, pystac.Item]):
        self.rows = rows[["item_id", "crs", "minx", "miny", "maxx", "maxy", "size"]].to_numpy()
        self.items, self._open = items, {}

    def __len__(self):
        return len(self.rows)

    def _src(self, href: str, crs: str, resampling: Resampling):
        """The file, or a ``WarpedVRT`` of it on ``crs`` if it is in another zone; kept open."""
        key = (href, resampling)
        if key not in self._open:
            src = rasterio.open(href)
            if src.crs.to_string() != crs:
                src = WarpedVRT(src, crs=crs, resampling=resampling)
            self._open[key] = src
        return self._open[key]

    def _read(self, href: str, crs: str, bounds, s: int, resampling: Resampling) -> np.ndarray:
        """The (s, s) window ``bounds`` of a file, resampled; 0 where the file has no pixels."""
        src = self._src(href, crs, resampling)
        win = from_bounds(*bounds, transform=src.transform)
        try:
            inside = win.intersection(Window(0, 0, src.width, src.height))
        except WindowError:  # the patch is outside this file
            return np.zeros((s, s), dtype=src.dtypes[0])
        if inside == win:
            return src.read(1, window=win, out_shape=(s, s), resampling=resampling)
        # the part inside the file, resampled into its place in the window
        sx, sy = s / win.width, s / win.height
        c0 = round((inside.col_off - win.col_off) * sx)
        r0 = round((inside.row_off - win.row_off) * sy)
        w, h = max(1, round(inside.width * sx)), max(1, round(inside.height * sy))
        out = np.zeros((s, s), dtype=src.dtypes[0])
        w, h = min(w, s - c0), min(h, s - r0)
        out[r0 : r0 + h, c0 : c0 + w] = src.read(
            1, window=inside, out_shape=(h, w), resampling=resampling
        )
        return out

    def __getitem__(self, i):
        item_id, crs, *bounds, s = self.rows[i]
        item = self.items[item_id.split(",")[0]]  # the first item of a merged day
        bands = []
        for key in ALL_BANDS:
            asset = item.assets[key]
            dn = self._read(asset.href, crs, bounds, s, Resampling.bilinear)
            offset = (asset.extra_fields.get("raster:bands") or [{}])[0].get("offset", 0.0)
            off = round(-offset / 1e-4)  # +1000 DN from processing baseline 04.00
            bands.append(np.where(dn > 0, np.clip(dn.astype(np.int32) - off, 1, 65535), 0))
        image = np.stack(bands).astype(np.uint16)  # (C, H, W)
        scl = self._read(item.assets["scl"].href, crs, bounds, s, Resampling.nearest)
        valid = (image > 0).all(axis=0) & ~np.isin(scl, SCL_INVALID_DEFAULT)
        return {"image": torch.from_numpy(image), "valid": torch.from_numpy(valid)}


def unpooled_worker(worker_id: int) -> None:
    """``worker_init_fn`` of geogfm without buffer reuse: a new shared-memory buffer per batch."""
    zarr_windows.POOL_SLOTS = 0
    seed_worker(worker_id)


def gdal_worker(cache_mb: int | None, worker_id: int) -> None:
    """``worker_init_fn`` of the rasterio loaders: GDAL's block cache size, then the seeds.

    ``cache_mb=None`` leaves GDAL's default (``GDAL_CACHEMAX`` unset: 5 % of RAM).
    """
    if cache_mb is not None:
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", cache_mb * 2**20)  # bytes; applied at once
    seed_worker(worker_id)
