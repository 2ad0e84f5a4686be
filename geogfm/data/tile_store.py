"""Writing a tile-cache cell as a Zarr v3 store, file by file.

:func:`write_cell` writes what ``xarray.Dataset.to_zarr(zarr_format=3)`` would for the cell's
dataset -- the same arrays, chunks, codecs, CF-encoded times, dimension names and attributes, so
that ``xarray.open_zarr`` and ``zarr.open_group`` read the same dataset back (tested) -- but
directly: one JSON document per array and one ``write`` per chunk, each chunk compressed with one
call to Blosc. Through xarray and zarr's asynchronous pipeline the same store took 55-80 ms per cell
on two shared cores, most of it waiting on zarr's event loop; this takes about the time of the
compression. The stage hands it the cell's arrays (:class:`CellArrays`) rather than a Dataset:
the same bytes (tested), without the 5-6 ms per cell of building coordinates that no one reads.

The chunks are one time step of every band over the whole cell (see
:mod:`geogfm.data.tile_cache`); coordinates are single uncompressed chunks (a few kB). Chunk keys
use the ``.`` separator (``reflectance/c.3.0.0.0``), so a store is 11 folders and no more: creating
and removing folders is the slow part of a file system (2 ms per folder removed on this VM).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import xarray as xr
from xarray.coding.times import encode_cf_datetime

from geogfm.data.datasets.sentinel2 import band
from geogfm.data.tile_cache import CACHE_NODATA, CACHE_OFFSET, CACHE_SCALE, CODEC, Cell

__all__ = ["CellArrays", "cell_dataset", "write_cell"]

_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_CHUNKED = {"reflectance", "valid", "scl"}  # one chunk per time step; the rest: one chunk


def _codec_json(typesize: int) -> dict:
    c = CODEC.to_dict()["configuration"]
    return {
        "name": "blosc",
        "configuration": {
            "typesize": typesize,
            "cname": c["cname"],
            "clevel": c["clevel"],
            "shuffle": c["shuffle"],
            "blocksize": c["blocksize"],
        },
    }


def _compressor() -> numcodecs.Blosc:
    c = CODEC.to_dict()["configuration"]
    return numcodecs.Blosc(
        cname=c["cname"], clevel=c["clevel"], shuffle=_BLOSC_SHUFFLE[c["shuffle"]], blocksize=0
    )


def _json(value: Any) -> Any:
    """Attributes as JSON: numpy scalars and arrays to Python numbers and lists."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


_Var = tuple[tuple[str, ...], np.ndarray, dict]  # (dims, data, attrs), as xarray's Variable


@lru_cache(maxsize=256)
def _encode_times(raw: bytes) -> tuple[np.ndarray, str, str]:
    # cells of one plan mostly share their dates: encoded once
    num, units, calendar = encode_cf_datetime(np.frombuffer(raw, "datetime64[ns]"))
    return np.asarray(num), units, calendar


def _encode(name: str, data: np.ndarray) -> tuple[np.ndarray, str, Any, dict]:
    """``(data, zarr data_type, fill_value, extra attributes)`` of a variable, CF-encoded."""
    if data.dtype.kind == "M":  # times: integers since a reference, as xarray encodes them
        num, units, calendar = _encode_times(data.astype("datetime64[ns]").tobytes())
        return num, str(num.dtype), 0, {"units": units, "calendar": calendar}
    if data.dtype.kind in "OUS":
        return data.astype(object), "string", "", {}
    if data.dtype.kind == "b":
        return data, "bool", False, {}
    if data.dtype.kind == "f":
        return data, str(data.dtype), "NaN", {}
    if data.dtype.kind in "ui":
        return data, str(data.dtype), 0, {}
    raise TypeError(f"cannot write variable {name!r} of dtype {data.dtype} to the tile cache")


_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _write(path: Path, data: bytes) -> None:
    # a new file, written whole with one call (no buffered file object: ~500 files a cache)
    fd = os.open(path, _FLAGS, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_cell(ds: xr.Dataset | CellArrays, path: str) -> None:
    """Write a cell's dataset as a Zarr v3 store: one chunk per time step (see the module doc).

    Args:
        ds: the cell's dataset (see :func:`cell_dataset`), or its arrays (:class:`CellArrays`,
            the same store without building the dataset).
        path: the store's folder; must not exist.

    Raises:
        FileExistsError: if ``path`` exists.
    """
    if isinstance(ds, CellArrays):
        coords, data_vars, group_attrs = _variables(ds)
    else:
        coords = {n: (v.dims, np.asarray(v.values), dict(v.attrs)) for n, v in ds.coords.items()}
        data_vars = {
            n: (v.dims, np.asarray(v.values), dict(v.attrs)) for n, v in ds.data_vars.items()
        }
        group_attrs = dict(ds.attrs)
    _write_store(coords, data_vars, group_attrs, Path(path))


def _write_store(
    coords: dict[str, _Var], data_vars: dict[str, _Var], group_attrs: dict, root: Path
) -> None:
    root.mkdir(parents=True, exist_ok=False)
    _write(root / "zarr.json", _doc({"attributes": _json(group_attrs), "zarr_format": 3,
                                     "node_type": "group"}))  # fmt: skip
    blosc = _compressor()
    dims = {d for dims, _, _ in (*coords.values(), *data_vars.values()) for d in dims}
    coord_names = [n for n in coords if n not in dims]
    for name, (var_dims, values, var_attrs) in {**coords, **data_vars}.items():
        data, dtype, fill, extra = _encode(name, values)
        attrs = {**_json(var_attrs), **extra}
        if name in data_vars:
            names = sorted(c for c in coord_names if set(coords[c][0]) <= set(var_dims))
            if names:
                attrs["coordinates"] = " ".join(names)
        chunked = name in _CHUNKED
        chunks = (1, *data.shape[1:]) if chunked else data.shape
        codecs: list[dict] = [
            {"name": "vlen-utf8", "configuration": {}}
            if dtype == "string"
            else {"name": "bytes", "configuration": {"endian": "little"}}
        ]
        if chunked:
            codecs.append(_codec_json(data.dtype.itemsize))
        meta = {
            "shape": list(data.shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
            "fill_value": fill,
            "codecs": codecs,
            "attributes": attrs,
            "dimension_names": list(var_dims),
            "zarr_format": 3,
            "node_type": "array",
            "storage_transformers": [],
        }
        folder = root / name
        folder.mkdir()
        _write(folder / "zarr.json", _doc(meta))
        if data.ndim == 0:
            _write(folder / "c", _bytes(data, dtype))
            continue
        if not data.size:
            continue
        rest = ".0" * (data.ndim - 1)
        if chunked:  # c.<t>.0.0[.0]
            for t in range(data.shape[0]):
                chunk = np.ascontiguousarray(data[t : t + 1])
                _write(folder / f"c.{t}{rest}", blosc.encode(chunk))
        else:
            _write(folder / f"c.0{rest}", _bytes(data, dtype))


def _bytes(data: np.ndarray, dtype: str) -> bytes:
    if dtype == "string":
        return numcodecs.VLenUTF8().encode(data.ravel())
    return np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()


def _doc(meta: dict) -> bytes:
    return json.dumps(meta, indent=2).encode()


@dataclass(frozen=True)
class CellArrays:
    """A cell's content as arrays: what :func:`cell_dataset` makes a Dataset of.

    :func:`write_cell` writes it directly (the same store as of the Dataset, without building
    it: its coordinates and pandas conversions cost as much as writing the cell).
    """

    cell: Cell  #: the cell
    bands: tuple[str, ...]  #: the band names, in order
    refl: np.ndarray  #: ``(T, C, H, W)`` uint16 cache DN
    valid: np.ndarray  #: ``(T, H, W)`` bool
    scl: np.ndarray  #: ``(T, H, W)`` uint8 scene classes
    times: tuple[dt.datetime, ...]  #: each time step's acquisition time (timezone-aware)
    item_ids: tuple[str, ...]  #: each time step's items, comma-separated
    mask_scl_classes: tuple[int, ...]  #: the SCL classes masked out of ``valid``

    def dataset(self) -> xr.Dataset:
        """The cell as the cache's xarray Dataset (see :func:`cell_dataset`)."""
        coords, data_vars, attrs = _variables(self)
        return xr.Dataset(data_vars, coords=xr.Coordinates(coords, indexes={}), attrs=attrs)


def _variables(a: CellArrays) -> tuple[dict[str, _Var], dict[str, _Var], dict]:
    """``(coords, data_vars, attrs)`` of a cell's Dataset, each variable ``(dims, data, attrs)``."""
    cell, bands = a.cell, list(a.bands)
    H, W = cell.geobox.shape
    res = cell.geobox.resolution.x
    left, top = cell.geobox.affine.c, cell.geobox.affine.f
    res_y = abs(cell.geobox.resolution.y)
    wkt = _wkt(cell.geobox.crs)
    grid = {"grid_mapping": "spatial_ref"}
    time = np.array([t.astimezone(dt.UTC).replace(tzinfo=None) for t in a.times], "datetime64[ns]")
    data_vars: dict[str, _Var] = {
        "reflectance": (
            ("time", "band", "y", "x"),
            a.refl,
            {
                "long_name": "surface reflectance / scale",
                "scale": CACHE_SCALE,
                "offset": CACHE_OFFSET,
                "nodata": CACHE_NODATA,
                **grid,
            },
        ),
        "valid": (
            ("time", "y", "x"),
            a.valid,
            {
                "long_name": "all bands have data and scl is not masked",
                "mask_scl_classes": [int(c) for c in a.mask_scl_classes],
                **grid,
            },
        ),
        "scl": (("time", "y", "x"), a.scl, {"long_name": "scene classification", **grid}),
    }
    coords: dict[str, _Var] = {
        "time": (("time",), time, {}),
        "band": (("band",), np.array(bands, dtype=object), {}),
        "y": (("y",), top - (np.arange(H) + 0.5) * res_y, {}),
        "x": (("x",), left + (np.arange(W) + 0.5) * res, {}),
        "item_id": (("time",), np.array(list(a.item_ids), dtype=object), {}),
        "center_wavelength": (
            ("band",),
            np.array([band(b).center_wavelength for b in bands]),
            {"long_name": "band centre wavelength", "units": "um"},
        ),
        "spatial_ref": (
            (),
            np.asarray(np.int32(0)),
            {
                "crs_wkt": wkt,
                "spatial_ref": wkt,
                "GeoTransform": f"{left} {res} 0.0 {top} 0.0 {-res_y}",
            },
        ),
    }
    attrs = {
        "crs": cell.crs,
        "transform": [float(v) for v in tuple(cell.geobox.affine)[:6]],
        "resolution": float(res),
        "cell_id": cell.id,
    }
    return coords, data_vars, attrs


_wkts: dict[str, str] = {}


def _wkt(crs: Any) -> str:
    # the CRS's WKT, computed once per CRS (pyproj takes 2-3 ms)
    key = str(crs)
    wkt = _wkts.get(key)
    if wkt is None:
        wkt = _wkts[key] = crs.to_wkt()
    return wkt


def cell_dataset(
    cell: Cell,
    bands: Sequence[str],
    refl: np.ndarray,
    valid: np.ndarray,
    scl: np.ndarray,
    times: Sequence[dt.datetime],
    item_ids: Sequence[str],
    mask_scl_classes: Sequence[int],
) -> xr.Dataset:
    """The cell's arrays as the cache's xarray Dataset, with coordinates and CF grid mapping.

    Args:
        cell: the cell.
        bands: the band names, in order.
        refl: ``(T, C, H, W)`` uint16 cache DN.
        valid: ``(T, H, W)`` bool.
        scl: ``(T, H, W)`` uint8 scene classes.
        times: each time step's acquisition time (timezone-aware).
        item_ids: each time step's items, comma-separated.
        mask_scl_classes: the SCL classes masked out of ``valid``.

    Returns:
        The dataset that :func:`write_cell` writes. Its coordinates carry no pandas indexes
        (building them is a large part of the cost, and the store does not keep them):
        ``xarray.open_zarr`` of the store has them.
    """
    arrays = CellArrays(
        cell, tuple(bands), refl, valid, scl, tuple(times), tuple(item_ids),
        tuple(mask_scl_classes),
    )  # fmt: skip
    return arrays.dataset()
