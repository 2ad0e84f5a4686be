"""ChunkReader and store_band_names against zarr's own reads of the same arrays."""

import numpy as np
import pytest
import zarr
from _tile_cache_fixture import BANDS, write_tile_cache

from geogfm.data.cache_reader import (
    ChunkReader,
    band_names,
    load_cache_index,
    open_cell,
    store_band_names,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # chunks that do not divide the 64 x 64 cells: edge chunks are cut
    return write_tile_cache(tmp_path_factory.mktemp("cache") / "cache", chunks=(2, 3, 24, 40))


def _every_chunk(reader):
    grids = [range(-(-s // c)) for s, c in zip(reader.shape, reader.chunks, strict=True)]
    yield from np.ndindex(*(len(g) for g in grids))


@pytest.mark.parametrize("name", ["reflectance", "valid", "scl"])
def test_blocks_equal_zarr_slices_for_every_chunk(cache, name):
    index = load_cache_index(cache)
    for cell in index.cells:
        array = open_cell(index, cell.id)[name]
        data = array[:]
        for reader in (ChunkReader(index.store(cell.id) / name), ChunkReader(array)):
            assert reader.direct
            assert (reader.shape, reader.chunks, reader.dtype) == (
                array.shape,
                array.chunks,
                array.dtype,
            )
            for coords in _every_chunk(reader):
                box = tuple(
                    slice(i * c, (i + 1) * c) for i, c in zip(coords, reader.chunks, strict=True)
                )
                np.testing.assert_array_equal(reader.block(coords), data[box], err_msg=str(coords))


def test_block_decodes_into_a_given_buffer(cache):
    index = load_cache_index(cache)
    reader = ChunkReader(index.store(index.cells[0].id) / "reflectance")
    out = np.empty(int(np.prod(reader.chunks)), dtype=reader.dtype)
    block = reader.block((0, 0, 0, 0), out=out)
    assert np.shares_memory(block, out)
    np.testing.assert_array_equal(
        block, open_cell(index, index.cells[0].id)["reflectance"][:2, :, :24, :40]
    )


def test_a_chunk_that_is_not_stored_reads_as_the_fill_value(tmp_path):
    array = zarr.create_array(
        tmp_path / "a", shape=(4, 6), chunks=(2, 3), dtype="uint16", fill_value=7
    )
    array[:2, :3] = 1  # only chunk (0, 0) is written
    reader = ChunkReader(tmp_path / "a")
    assert reader.direct
    np.testing.assert_array_equal(reader.block((0, 0)), np.ones((2, 3)))
    np.testing.assert_array_equal(reader.block((1, 1)), np.full((2, 3), 7))


def test_other_layouts_are_read_through_zarr(tmp_path):
    data = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6)
    sharded = zarr.create_array(
        tmp_path / "sharded", shape=(4, 6), chunks=(2, 3), shards=(4, 6), dtype="uint16"
    )
    sharded[:] = data
    v2 = zarr.create_array(
        tmp_path / "v2", shape=(4, 6), chunks=(2, 3), dtype="uint16", zarr_format=2
    )
    v2[:] = data
    for path in (tmp_path / "sharded", tmp_path / "v2"):
        reader = ChunkReader(path)
        assert not reader.direct
        assert (reader.shape, reader.chunks) == ((4, 6), (2, 3))
        np.testing.assert_array_equal(reader.block((1, 1)), data[2:4, 3:6])


def test_store_band_names_equal_zarr_band_names(cache, tmp_path):
    index = load_cache_index(cache)
    for cell in index.cells:
        assert store_band_names(index.store(cell.id)) == band_names(open_cell(index, cell.id))
        assert store_band_names(index.store(cell.id)) == list(BANDS)
    # fixed-length strings in a zarr v2 group: read through zarr
    group = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    group.create_array("band", shape=(3,), dtype="<U5")[:] = np.array(["a", "bb", "ccc"])
    assert store_band_names(tmp_path / "v2.zarr") == ["a", "bb", "ccc"]


def test_uncompressed_chunks_are_copied_out_of_the_read_buffer(tmp_path):
    data = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6)
    array = zarr.create_array(
        tmp_path / "raw", shape=(4, 6), chunks=(2, 3), dtype="uint16", compressors=None
    )
    array[:] = data
    reader = ChunkReader(tmp_path / "raw")
    assert reader.direct
    first = reader.block((0, 0))
    out = np.empty(6, dtype=np.uint16)
    second = reader.block((1, 1), out=out)  # reuses the thread's read buffer
    np.testing.assert_array_equal(first, data[:2, :3])  # not overwritten by the second read
    np.testing.assert_array_equal(second, data[2:, 3:])
    assert np.shares_memory(second, out)
