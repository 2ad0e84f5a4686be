"""The tile cache's direct Zarr v3 writer against xarray's ``to_zarr`` of the same dataset."""

import datetime as dt

import numpy as np
import pytest
import xarray as xr
import zarr
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox

from geogfm.data.cache_reader import ChunkReader
from geogfm.data.tile_cache import CODEC, Cell
from geogfm.data.tile_store import CellArrays, cell_dataset, write_cell
from geogfm.data.zarr_windows import ZarrWindows

BANDS = ["blue", "green", "red", "nir08"]


def _arrays() -> CellArrays:
    rng = np.random.default_rng(0)
    T, H, W = 3, 32, 48
    geobox = GeoBox((H, W), Affine(10, 0, 500_000, 0, -10, 5_000_000), CRS("EPSG:32633"))
    cell = Cell("32633_0500000_5000000", 32633, geobox, ("a", "b", "c"))
    refl = rng.integers(0, 10_000, (T, len(BANDS), H, W), dtype=np.uint16)
    valid = rng.random((T, H, W)) > 0.3
    scl = rng.integers(0, 12, (T, H, W), dtype=np.uint8)
    times = [dt.datetime(2021, 8, 14, 10, 5, 31, 123456, dt.UTC) + dt.timedelta(days=40 * k)
             for k in range(T)]  # fmt: skip
    return CellArrays(
        cell, tuple(BANDS), refl, valid, scl, tuple(times), ("a", "b,c", "d"), (0, 1, 3)
    )


@pytest.fixture
def cell_ds() -> xr.Dataset:
    a = _arrays()
    return cell_dataset(a.cell, a.bands, a.refl, a.valid, a.scl, a.times, a.item_ids, [0, 1, 3])


def test_store_reads_back_as_xarrays_own(tmp_path, cell_ds):
    write_cell(cell_ds, str(tmp_path / "ours.zarr"))
    encoding = {v: {"chunks": cell_ds[v].shape[:1] and (1, *cell_ds[v].shape[1:]),
                    "compressors": [CODEC]} for v in ("reflectance", "valid", "scl")}  # fmt: skip
    cell_ds.to_zarr(tmp_path / "xr.zarr", zarr_format=3, consolidated=False, encoding=encoding)
    ours = xr.open_zarr(tmp_path / "ours.zarr", consolidated=False).load()
    theirs = xr.open_zarr(tmp_path / "xr.zarr", consolidated=False).load()
    xr.testing.assert_identical(ours, theirs)
    indexed = cell_ds  # the dataset carries no indexes (cheaper); the store's reader makes them
    for dim in ("time", "band", "y", "x"):
        indexed = indexed.set_xindex(dim)
    xr.testing.assert_identical(ours, indexed)
    for name in ("reflectance", "valid", "scl"):
        assert ours[name].encoding["chunks"] == theirs[name].encoding["chunks"]
        assert ours[name].encoding["chunks"][0] == 1  # one chunk per time step


def test_store_reads_with_zarr_and_the_direct_chunk_readers(tmp_path, cell_ds):
    write_cell(cell_ds, str(tmp_path / "c.zarr"))
    group = zarr.open_group(tmp_path / "c.zarr", mode="r")
    refl = group["reflectance"]
    np.testing.assert_array_equal(refl[:], cell_ds.reflectance.values)
    np.testing.assert_array_equal(group["valid"][:], cell_ds.valid.values)
    assert refl.chunks == (1, len(BANDS), 32, 48)
    windows = ZarrWindows(refl, cache_bytes=1 << 20)
    assert windows._decode is not None  # the fast path, not zarr's
    np.testing.assert_array_equal(
        windows.read(2, 3, 4, 16, slice(None)), cell_ds.reflectance.values[2, :, 3:19, 4:20]
    )
    reader = ChunkReader(refl)
    assert reader.direct


def test_existing_store_is_refused(tmp_path, cell_ds):
    (tmp_path / "c.zarr").mkdir()
    with pytest.raises(FileExistsError):
        write_cell(cell_ds, str(tmp_path / "c.zarr"))


def test_the_arrays_write_the_same_store_as_their_dataset(tmp_path, cell_ds):
    """The stage writes the arrays without building the Dataset: the same files, byte for byte."""
    write_cell(cell_ds, str(tmp_path / "ds.zarr"))
    write_cell(_arrays(), str(tmp_path / "arrays.zarr"))
    files = sorted(p.relative_to(tmp_path / "ds.zarr") for p in (tmp_path / "ds.zarr").rglob("*"))
    assert files == sorted(
        p.relative_to(tmp_path / "arrays.zarr") for p in (tmp_path / "arrays.zarr").rglob("*")
    )
    chunks = [f for f in files if f.name == "c" or f.name.startswith("c.")]
    assert len(chunks) == 3 * 3 + 7  # a chunk per time step of 3 arrays, one per coordinate
    for f in files:
        a, b = tmp_path / "ds.zarr" / f, tmp_path / "arrays.zarr" / f
        assert a.is_dir() == b.is_dir()
        if a.is_file():
            assert a.read_bytes() == b.read_bytes(), f
    xr.testing.assert_identical(_arrays().dataset(), cell_ds)
