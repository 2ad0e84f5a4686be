"""Real satellite files from ``../shared/realdata`` described as STAC items, for the tile cache.

The files stay where they are; each item's asset metadata (``proj:*`` from the file, ``eo:bands``,
``raster:bands`` with the scale and offset the folder's README gives) is computed with rasterio, as
rio-stac would. None of these samples has an L2A scene classification, so each item gets an ``scl``
asset written into a temporary folder: "vegetation" everywhere, or, for eo-learn's Slovenia
scenes, "cloud" where the patch's own cloud mask (``CLM``) says so.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.warp import transform_geom

REALDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata"
BIGEARTHNET = REALDATA / "bigearthnet_s2l2a_patches" / "BigEarthNet-S2-Example"
SLOVENIA = REALDATA / "eolearn_s2l1c_slovenia"
UKIS = REALDATA / "ukis_pysat_tiny_patches"
STAC_ITEMS = REALDATA / "stac_items"

#: ESA names of the 13 L1C bands in file order, and the Earth Search keys of the L2A ones.
L1C_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
             "B12")  # fmt: skip
KEYS = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
        "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
        "B11": "swir16", "B12": "swir22"}  # fmt: skip


def _proj(href: Path) -> dict:
    with rasterio.open(href) as src:
        return {
            "proj:code": f"EPSG:{src.crs.to_epsg()}",
            "proj:shape": [src.height, src.width],
            "proj:transform": list(src.transform)[:6],
        }


def _footprint(href: Path) -> dict:
    with rasterio.open(href) as src:
        w, s, e, n = src.bounds
        ring = [[w, n], [w, s], [e, s], [e, n], [w, n]]
        return transform_geom(src.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def _item(item_id: str, when: dt.datetime, first: Path, properties: dict) -> pystac.Item:
    geom = _footprint(first)
    xs, ys = zip(*geom["coordinates"][0], strict=True)
    item = pystac.Item(item_id, geom, [min(xs), min(ys), max(xs), max(ys)], when, properties)
    item.properties.update({k: v for k, v in _proj(first).items() if k == "proj:code"})
    return item


def _asset(href: Path, *, eo: list[dict], rb: list[dict], roles: list[str]) -> pystac.Asset:
    return pystac.Asset(
        str(href),
        media_type=pystac.MediaType.GEOTIFF,
        roles=roles,
        extra_fields={"eo:bands": eo, "raster:bands": rb, **_proj(href)},
    )


def write_scl(
    path: Path, like: Path, classes: np.ndarray | int = 4, resolution: float = 20.0
) -> Path:
    """An SCL GeoTIFF over the footprint of ``like`` (class 4, or a class per pixel of ``like``)."""
    with rasterio.open(like) as src:
        if isinstance(classes, np.ndarray):
            data, transform = classes.astype(np.uint8), src.transform
        else:
            k = resolution / src.res[0]
            shape = (math.ceil(src.height / k), math.ceil(src.width / k))
            data = np.full(shape, classes, np.uint8)
            transform = src.transform * rasterio.Affine.scale(k)
        crs = src.crs
    h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8",
               "crs": crs, "transform": transform, "nodata": 0}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def _scl_asset(href: Path) -> pystac.Asset:
    return _asset(href, eo=[], rb=[{"nodata": 0, "data_type": "uint8"}], roles=["data"])


def bigearthnet_item(patch: str, scratch: Path) -> pystac.Item:
    """A BigEarthNet L2A patch: one asset per band file, DN * 1e-4, no offset (baseline 02.0x)."""
    folder = BIGEARTHNET / patch
    meta = json.loads((folder / f"{patch}_labels_metadata.json").read_text())
    when = dt.datetime.fromisoformat(meta["acquisition_date"]).replace(tzinfo=dt.UTC)
    files = {name: folder / f"{patch}_{name}.tif" for name in KEYS}
    item = _item(patch, when, files["B02"], {"platform": "sentinel-2" + patch[2].lower()})
    for name, key in KEYS.items():
        with rasterio.open(files[name]) as src:
            res = src.res[0]
        eo = [{"name": name, "common_name": key}]
        rb = [{"nodata": 0, "data_type": "uint16", "scale": 1e-4, "offset": 0.0,
               "spatial_resolution": res}]  # fmt: skip
        item.add_asset(key, _asset(files[name], eo=eo, rb=rb, roles=["data", "reflectance"]))
    scl = write_scl(scratch / f"{patch}_SCL.tif", files["B05"])
    item.add_asset("scl", _scl_asset(scl))
    return item


def slovenia_items(scratch: Path) -> list[pystac.Item]:
    """eo-learn's five Slovenia L1C scenes: one 13-band float32 asset each (reflectance 0..1),
    keyed ``toa`` (not a band name: the band is found by its ``eo:bands`` entry), and an ``scl``
    from the patch's cloud mask."""
    index = json.loads((SLOVENIA / "index.json").read_text())
    clm = np.load(SLOVENIA / "original" / "TestEOPatch" / "mask" / "CLM.npy")[..., 0]  # (T, H, W)
    items = []
    for ref in sorted(index["reference_scenes"], key=lambda r: r["timestamp"]):
        when = dt.datetime.fromisoformat(ref["timestamp"]).replace(tzinfo=dt.UTC)
        href = SLOVENIA / "geotiff" / f"S2_L1C_{when:%Y-%m-%d}_13band.tif"
        item = _item(f"S2_L1C_SLOVENIA_{when:%Y%m%d}", when, href, {"platform": "sentinel-2"})
        eo = [{"name": n, "common_name": KEYS.get(n, "cirrus")} for n in L1C_NAMES]
        rb = [{"data_type": "float32", "scale": 1.0, "offset": 0.0}] * len(L1C_NAMES)
        item.add_asset("toa", _asset(href, eo=eo, rb=rb, roles=["data", "reflectance"]))
        classes = np.where(clm[ref["eopatch_time_index"]] > 0, 9, 4)
        scl = write_scl(scratch / f"{item.id}_SCL.tif", href, classes)
        item.add_asset("scl", _scl_asset(scl))
        items.append(item)
    return items


def ukis_item(stem: str, scratch: Path) -> pystac.Item:
    """A ukis-pysat L1C patch (13 bands in one uint16 file) with *no* ``raster:bands`` scale, so
    the Sentinel-2 rule applies: DN * 1e-4, offset -0.1 from the processing baseline in the name."""
    href = UKIS / f"{stem}.tif"
    baseline = stem.split("_")[3]  # "N0400"
    when = dt.datetime.strptime(stem.split("_")[2], "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    props = {"platform": "sentinel-2b", "s2:product_uri": f"{stem}.SAFE"}
    item = _item(stem, when, href, props)
    eo = [{"name": n} for n in L1C_NAMES]
    item.add_asset("data", _asset(href, eo=eo, rb=[], roles=["data"]))
    scl = write_scl(
        scratch / f"{stem}_SCL.tif", href, resolution=max(20.0, _proj(href)["proj:transform"][0])
    )
    item.add_asset("scl", _scl_asset(scl))
    assert baseline.startswith("N")
    return item


def write_items(items: list[pystac.Item], path: Path) -> Path:
    """Save items as the ItemCollection ``stac_query`` would write (absolute hrefs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return path
