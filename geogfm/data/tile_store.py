"""Writing a tile-cache cell as a Zarr v3 store, file by file.

:func:`write_cell` writes what ``xarray.Dataset.to_zarr(zarr_format=3)`` would for the cell's
dataset -- the same arrays, chunks, codecs, CF-encoded times, dimension names and attributes, so
that ``xarray.open_zarr`` and ``zarr.open_group`` read the same dataset back (tested) -- but
directly: one JSON document per array and one ``write`` per chunk, each chunk compressed with one
call to Blosc. Through xarray and zarr's asynchronous pipeline the same store took 55-80 ms per cell
on two shared cores, most of it waiting on zarr's event loop; this takes about the time of the
compression.

The chunks are one time step of every band over the whole cell (see
:mod:`geogfm.data.tile_cache`); coordinates are single uncompressed chunks (a few kB). Chunk keys
use the ``.`` separator (``reflectance/c.3.0.0.0``), so a store is 11 folders and no more: creating
and removing folders is the slow part of a file system (2 ms per folder removed on this VM).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import xarray as xr
from xarray.coding.times import encode_cf_datetime

from geogfm.data.datasets.sentinel2 import band
from geogfm.data.tile_cache import CACHE_NODATA, CACHE_OFFSET, CACHE_SCALE, CODEC, Cell

__all__ = ["cell_dataset", "write_cell"]

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


def _encode(name: str, var: xr.Variable) -> tuple[np.ndarray, str, Any, dict]:
    """``(data, zarr data_type, fill_value, extra attributes)`` of a variable, CF-encoded."""
    data = np.asarray(var.values)
    if data.dtype.kind == "M":  # times: integers since a reference, as xarray encodes them
        num, units, calendar = encode_cf_datetime(data)
        return (
            np.asarray(num),
            str(np.asarray(num).dtype),
            0,
            {
                "units": units,
                "calendar": calendar,
            },
        )
    if data.dtype.kind in "OUS":
        return data.astype(object), "string", "", {}
    if data.dtype.kind == "b":
        return data, "bool", False, {}
    if data.dtype.kind == "f":
        return data, str(data.dtype), "NaN", {}
    if data.dtype.kind in "ui":
        return data, str(data.dtype), 0, {}
    raise TypeError(f"cannot write variable {name!r} of dtype {data.dtype} to the tile cache")


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_cell(ds: xr.Dataset, path: str) -> None:
    """Write a cell's dataset as a Zarr v3 store: one chunk per time step (see the module doc).

    Args:
        ds: the cell's dataset (see :func:`geogfm.data.tile_load.load_cell`).
        path: the store's folder; must not exist.

    Raises:
        FileExistsError: if ``path`` exists.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=False)
    _write(root / "zarr.json", _doc({"attributes": _json(ds.attrs), "zarr_format": 3,
                                     "node_type": "group"}))  # fmt: skip
    blosc = _compressor()
    coord_names = [n for n in ds.coords if n not in ds.dims]
    for name, var in {**ds.coords, **ds.data_vars}.items():
        var = var.variable
        data, dtype, fill, extra = _encode(name, var)
        attrs = {**_json(dict(var.attrs)), **extra}
        if name in ds.data_vars:
            coords = sorted(c for c in coord_names if set(ds[c].dims) <= set(var.dims))
            if coords:
                attrs["coordinates"] = " ".join(coords)
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
            "dimension_names": list(var.dims),
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
    H, W = cell.geobox.shape
    res = cell.geobox.resolution.x
    left, top = cell.geobox.affine.c, cell.geobox.affine.f
    res_y = abs(cell.geobox.resolution.y)
    wkt = cell.geobox.crs.to_wkt()
    grid = {"grid_mapping": "spatial_ref"}
    time = np.array([t.astimezone(dt.UTC).replace(tzinfo=None) for t in times], "datetime64[ns]")
    return xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                refl,
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
                valid,
                {
                    "long_name": "all bands have data and scl is not masked",
                    "mask_scl_classes": [int(c) for c in mask_scl_classes],
                    **grid,
                },
            ),
            "scl": (("time", "y", "x"), scl, {"long_name": "scene classification", **grid}),
        },
        coords=xr.Coordinates(
            {
                "time": ("time", time),
                "band": ("band", np.array(list(bands), dtype=object)),
                "y": ("y", top - (np.arange(H) + 0.5) * res_y),
                "x": ("x", left + (np.arange(W) + 0.5) * res),
                "item_id": ("time", np.array(item_ids, dtype=object)),
                "center_wavelength": (
                    "band",
                    np.array([band(b).center_wavelength for b in bands]),
                    {"long_name": "band centre wavelength", "units": "um"},
                ),
                "spatial_ref": (
                    (),
                    np.int32(0),
                    {
                        "crs_wkt": wkt,
                        "spatial_ref": wkt,
                        "GeoTransform": f"{left} {res} 0.0 {top} 0.0 {-res_y}",
                    },
                ),
            },
            indexes={},
        ),
        attrs={
            "crs": cell.crs,
            "transform": [float(v) for v in tuple(cell.geobox.affine)[:6]],
            "resolution": float(res),
            "cell_id": cell.id,
        },
    )
