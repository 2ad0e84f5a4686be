"""A Landsat surface-reflectance time series on one grid, and its windows as samples.

:class:`LandsatSeries` reads a folder of ESPA scenes -- one sub-folder per scene, named by its scene
id and holding ``<id>_b<N>.tif`` per band (int16 reflectance x 10000, nodata -9999) and
``<id>_fmask.tif`` (CFmask classes) -- as a series sorted by date, with validity from the CFmask
and the valid DN range (:mod:`geogfm.data.datasets.landsat` states the bands and encodings).
:class:`LandsatPatchDataset` serves its windows as samples shaped like the tile cache's, one date
or several (with a :mod:`~geogfm.data.transforms.temporal_sampling` sampler).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from torch.utils.data import Dataset

from geogfm.core.errors import DataError
from geogfm.data.datasets.landsat import (
    ESPA_SR_SCALE,
    ESPA_SR_VALID_RANGE,
    FMASK_INVALID_DEFAULT,
    LandsatScene,
    fmask_valid,
    parse_scene_id,
    sensor_bands,
)
from geogfm.data.transforms.patchify import tile_windows
from geogfm.data.transforms.temporal_sampling import TemporalSampler

__all__ = ["LandsatPatchDataset", "LandsatSeries"]


class LandsatSeries:
    """A dated series of ESPA surface-reflectance scenes on one grid.

    Args:
        root: a folder of scene folders ``<scene id>/`` holding ``<scene id>_b<N>.tif`` (int16
            reflectance x 10000, nodata -9999) and ``<scene id>_fmask.tif`` (CFmask classes).
        bands: asset keys to read, in output order; each must exist for every scene's sensor.
        mask_classes: CFmask classes that make a pixel invalid.

    Raises:
        FileNotFoundError: if ``root`` has no scene folder, or a scene lacks a file.
        DataError: if a band is not on a scene's sensor or the scenes are not on one grid.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        bands: Sequence[str] = ("red", "nir08", "swir16"),
        mask_classes: Sequence[int] = FMASK_INVALID_DEFAULT,
    ):
        self.root, self.bands = Path(root), list(bands)
        fmask_valid(np.zeros(1, np.uint8), mask_classes)  # validates the classes
        self.mask_classes = tuple(mask_classes)
        folders = (
            sorted(p for p in self.root.glob("L*") if p.is_dir()) if self.root.is_dir() else []
        )
        if not folders:
            raise FileNotFoundError(
                f"no Landsat scene folders (L*/<id>_b<N>.tif) under {str(self.root)!r}; point "
                "root at a folder of ESPA scene folders"
            )
        scenes = sorted((parse_scene_id(p.name) for p in folders), key=lambda s: (s.date, s.id))
        self.scenes: list[LandsatScene] = scenes
        self.files: list[tuple[list[Path], Path]] = [self._files(s) for s in scenes]
        #: acquisition dates as ``datetime64[s]`` (midnight UTC: ids carry no time of day)
        self.times = np.array([s.date for s in scenes], dtype="datetime64[s]")
        with rasterio.open(self.files[0][1]) as src:
            self.crs, self.transform = src.crs.to_string(), src.transform
            self.shape: tuple[int, int] = (src.height, src.width)
        self._valid: np.ndarray | None = None

    def _files(self, scene: LandsatScene) -> tuple[list[Path], Path]:
        table = {b.key: b for b in sensor_bands(scene.sensor)}
        missing = [b for b in self.bands if b not in table]
        if missing:
            raise DataError(
                f"band(s) {missing} are not on {scene.sensor} (scene {scene.id}); its bands are "
                f"{list(table)}"
            )
        folder = self.root / scene.id
        paths = [folder / f"{scene.id}_b{table[b].number}.tif" for b in self.bands]
        fmask = folder / f"{scene.id}_fmask.tif"
        for p in [*paths, fmask]:
            if not p.is_file():
                raise FileNotFoundError(f"{str(p)!r} not found: scene {scene.id} is incomplete")
        return paths, fmask

    def __len__(self) -> int:
        return len(self.scenes)

    def read(self, t: int, window: tuple[int, int, int] | None = None) -> dict:
        """One date, whole or a square window ``(row, col, size)``.

        Returns:
            ``image`` (C, H, W) float32 reflectance (0 where invalid), ``valid`` (H, W) bool
            (CFmask class not masked, and every band has data within the valid range),
            ``fmask`` (H, W) uint8, ``time`` (seconds since 1970), ``scene_id``, ``bounds``,
            ``crs``.
        """
        paths, fmask_path = self.files[t]
        H, W = self.shape
        r, c, s = window if window is not None else (0, 0, None)
        win = Window(c, r, s or W, s or H)
        dn = []
        for p in paths:
            with rasterio.open(p) as src:
                if (src.height, src.width) != self.shape or src.transform != self.transform:
                    raise DataError(
                        f"{p} is on another grid than {self.files[0][1]}: a series must share one"
                    )
                dn.append(src.read(1, window=win))
        dn = np.stack(dn)  # (C, h, w) int16
        with rasterio.open(fmask_path) as src:
            fmask = src.read(1, window=win)
        lo, hi = ESPA_SR_VALID_RANGE
        valid = fmask_valid(fmask, self.mask_classes) & ((dn >= lo) & (dn <= hi)).all(axis=0)
        image = np.where(valid, dn.astype(np.float32) * np.float32(ESPA_SR_SCALE), 0.0)
        left, bottom, right, top = window_bounds(win, self.transform)
        return {
            "image": image.astype(np.float32),
            "valid": valid,
            "fmask": fmask,
            "time": int(self.times[t].astype(np.int64)),
            "scene_id": self.scenes[t].id,
            "bounds": (left, bottom, right, top),
            "crs": self.crs,
        }

    def valid_masks(self) -> np.ndarray:
        """(T, H, W) bool validity of every date (CFmask and ranges), read once and kept."""
        if self._valid is None:
            self._valid = np.stack([self.read(t)["valid"] for t in range(len(self))])
        return self._valid

    def __repr__(self) -> str:
        first, last = self.scenes[0].date, self.scenes[-1].date
        return (
            f"{type(self).__name__}({str(self.root)!r}, {len(self)} dates {first}..{last}, "
            f"bands={self.bands}, grid {self.shape} {self.crs})"
        )


class LandsatPatchDataset(Dataset):
    """Windows of a :class:`LandsatSeries`, as samples shaped like the tile cache's.

    Single-date (``temporal=None``): one sample per (date, window) whose valid fraction is at least
    ``min_valid_fraction``. Multi-date: one sample per window, the sampler picking ``T`` dates from
    that window's valid fractions (at random per sample with ``random_frames``).

    Samples: ``image`` (C, H, W) or (T, C, H, W) float32 reflectance, ``valid`` (H, W) or
    (T, H, W), ``time`` int64 tensor (seconds since 1970), ``scene_id``, ``patch_id``, ``cell``
    (the series' path/row), ``bounds``, ``crs``.

    Args:
        series: the series.
        size: window side, pixels.
        overlap: pixels shared by neighbouring windows (windows cover the whole grid).
        min_valid_fraction: single-date windows with fewer valid pixels are left out.
        temporal: a sampler for multi-date samples.
        random_frames: draw frames at random per sample (with ``temporal``).
        seed: seed of the frame draws.

    Raises:
        DataError: if no sample is left.
    """

    def __init__(
        self,
        series: LandsatSeries,
        *,
        size: int,
        overlap: int = 0,
        min_valid_fraction: float = 0.0,
        temporal: TemporalSampler | None = None,
        random_frames: bool = True,
        seed: int = 0,
    ):
        self.series, self.size, self.temporal = series, int(size), temporal
        self.random_frames = random_frames
        self.rows, self.cols = tile_windows(*series.shape, size=size, overlap=overlap)
        masks = series.valid_masks()  # (T, H, W)
        # (T, N) valid fraction of every window at every date
        windows = zip(self.rows, self.cols, strict=True)
        vf = np.stack([masks[:, r : r + size, c : c + size].mean(axis=(1, 2)) for r, c in windows])
        self.valid_fraction = vf.T  # (T, N)
        self.seed, self._rng = int(seed), None
        if temporal is None:
            t, n = np.nonzero(self.valid_fraction >= min_valid_fraction)
            self.samples = [(np.array([ti]), ni) for ti, ni in zip(t, n, strict=True)]
        else:
            self.samples = []
            for n in range(len(self.rows)):
                pick = temporal.select(series.times, self.valid_fraction[:, n])
                if pick is not None:
                    self.samples.append((pick, n))
        if not self.samples:
            raise DataError(
                f"no {size} px window of {series} is valid enough (min_valid_fraction="
                f"{min_valid_fraction}, temporal={temporal}); lower the thresholds"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def _frame_rng(self) -> np.random.Generator:
        # seeded per process from the torch seed: DataLoader workers draw different frames
        torch_seed = torch.initial_seed()
        if self._rng is None or self._rng[0] != torch_seed:
            self._rng = (torch_seed, np.random.default_rng([self.seed, torch_seed]))
        return self._rng[1]

    def __getitem__(self, i: int) -> dict:
        frames, n = self.samples[i]
        if self.temporal is not None and self.random_frames:
            vf = self.valid_fraction[:, n]
            frames = self.temporal.select(self.series.times, vf, self._frame_rng())
        window = (int(self.rows[n]), int(self.cols[n]), self.size)
        reads = [self.series.read(int(t), window) for t in frames]
        image = np.stack([x["image"] for x in reads])  # (T, C, h, w)
        valid = np.stack([x["valid"] for x in reads])  # (T, h, w)
        times = np.array([x["time"] for x in reads], dtype=np.int64)
        single = self.temporal is None
        scene = self.series.scenes[0]
        return {
            "image": torch.from_numpy(image[0] if single else image),
            "valid": torch.from_numpy(valid[0] if single else valid),
            "time": torch.tensor(times[0]) if single else torch.from_numpy(times),
            "scene_id": reads[0]["scene_id"] if single else [x["scene_id"] for x in reads],
            "patch_id": f"p{scene.path:03d}r{scene.row:03d}_r{window[0]:05d}_c{window[1]:05d}",
            "cell": f"p{scene.path:03d}r{scene.row:03d}",
            "bounds": reads[0]["bounds"],
            "crs": reads[0]["crs"],
        }
