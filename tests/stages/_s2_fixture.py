"""A tiny static Sentinel-2 L2A catalog with known surface reflectance, for the stage tests.

Shaped like Earth Search v1 ``sentinel-2-l2a`` (asset keys, ``eo:bands``, ``raster:bands`` with
nodata, scale and the baseline-04.00 offset, ``proj:*``, ``s2:processing_baseline``), small enough
to write in a few hundred milliseconds. Every scene over the same ground has the same surface
reflectance, so the tile cache must give the same numbers for baselines 03.01 and 04.00.

Scenes (64 x 64 pixels of 10 m, UTM 33N, top-left at x=500000, y=5000000 unless shifted):

- ``S2B_33TUM_20210814_0_L2A`` baseline 03.01, 5 % cloud, the left ``NODATA_COLS`` columns are
  nodata.
- ``S2A_33TUM_20220511_0_L2A`` baseline 04.00, 40 % cloud, a cloud (SCL 9) over ``CLOUD_ROWS,
  CLOUD_COLS``.
- ``S2B_33TUN_20220730_0_L2A`` baseline 04.00, 80 % cloud, 20 km further east.
- ``landcover`` collection: one ``ESA_WorldCover_33TUM`` item (asset ``map``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

EPSG = 32633
X0, Y0 = 500_000.0, 5_000_000.0
SIZE = 64  # 10 m pixels per side
BANDS_10M = ("blue", "green", "red")
BANDS_20M = ("nir08",)
NODATA_COLS = 8  # 10 m columns of nodata on the left of the 2021 scene
CLOUD_ROWS, CLOUD_COLS = slice(8, 24), slice(40, 56)  # 10 m pixels, 20 m aligned
CLOUD_REFLECTANCE = 0.6
EXT = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
_WAVELENGTH = {"blue": ("B02", 0.49), "green": ("B03", 0.56), "red": ("B04", 0.665)}
_WAVELENGTH |= {"nir08": ("B8A", 0.865), "scl": ("SCL", None)}


@dataclass(frozen=True)
class Scene:
    id: str
    datetime: dt.datetime
    baseline: str
    cloud_cover: float
    shift_x: float = 0.0  # metres east
    nodata_cols: int = 0
    cloud: bool = False


SCENES = (
    Scene(
        "S2B_33TUM_20210814_0_L2A",
        dt.datetime(2021, 8, 14, 10, 10, tzinfo=dt.UTC),
        "03.01",
        5.0,
        nodata_cols=NODATA_COLS,
    ),
    Scene(
        "S2A_33TUM_20220511_0_L2A",
        dt.datetime(2022, 5, 11, 10, 10, tzinfo=dt.UTC),
        "04.00",
        40.0,
        cloud=True,
    ),
    Scene(
        "S2B_33TUN_20220730_0_L2A",
        dt.datetime(2022, 7, 30, 10, 10, tzinfo=dt.UTC),
        "04.00",
        80.0,
        shift_x=20_000.0,
    ),
)


def surface(key: str, res: int = 10) -> np.ndarray:
    """Clear-sky surface reflectance of a band at its native resolution, in multiples of 1e-4."""
    n = SIZE * 10 // res
    row, col = np.mgrid[0:n, 0:n].astype(np.float64)
    if key == "blue":
        r = 500 + 10 * col
    elif key == "green":
        r = 600 + 10 * row
    elif key == "red":
        r = 700 + 5 * (row + col)
    elif key == "nir08":  # a ramp in x: bilinear resampling to 10 m reproduces it exactly inside
        r = 3000 + 40 * col
    else:
        raise KeyError(key)
    return r * 1e-4


def _write_cog(path: Path, data: np.ndarray, x0: float, res: int) -> None:
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=f"EPSG:{EPSG}",
        transform=from_origin(x0, Y0, res, res),
        nodata=0,
    ) as dst:
        dst.write(data[None])


def _geometry(x0: float) -> dict:
    x1, y1 = x0 + SIZE * 10, Y0 - SIZE * 10
    ring = [[x0, Y0], [x1, Y0], [x1, y1], [x0, y1], [x0, Y0]]
    return transform_geom(f"EPSG:{EPSG}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def _bbox(geom: dict) -> list[float]:
    xs, ys = zip(*geom["coordinates"][0], strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


def _s2_item(scene: Scene, folder: Path, esa_keys: bool = False) -> pystac.Item:
    folder.mkdir(parents=True, exist_ok=True)
    x0 = X0 + scene.shift_x
    offset = -0.1 if scene.baseline >= "04.00" else 0.0
    geom = _geometry(x0)
    item = pystac.Item(scene.id, geom, _bbox(geom), scene.datetime, {}, stac_extensions=list(EXT))
    item.properties.update(
        {
            "platform": "sentinel-2" + scene.id[2].lower(),
            "constellation": "sentinel-2",
            "eo:cloud_cover": scene.cloud_cover,
            "s2:processing_baseline": scene.baseline,
            "proj:code": f"EPSG:{EPSG}",
            "proj:shape": [SIZE, SIZE],
            "proj:transform": [10.0, 0.0, x0, 0.0, -10.0, Y0],
        }
    )
    # scl at 20 m: vegetation, clouds where asked, nodata on the nodata strip
    n20 = SIZE // 2
    scl = np.full((n20, n20), 4, np.uint8)
    if scene.cloud:
        scl[
            CLOUD_ROWS.start // 2 : CLOUD_ROWS.stop // 2,
            CLOUD_COLS.start // 2 : CLOUD_COLS.stop // 2,
        ] = 9
    scl[:, : scene.nodata_cols // 2] = 0
    for key in (*BANDS_10M, *BANDS_20M, "scl"):
        res = 10 if key in BANDS_10M else 20
        if key == "scl":
            data = scl
        else:
            refl = surface(key, res)
            if scene.cloud:
                d = res // 10  # 10 m pixels per native pixel
                rows = slice(CLOUD_ROWS.start // d, CLOUD_ROWS.stop // d)
                refl[rows, CLOUD_COLS.start // d : CLOUD_COLS.stop // d] = CLOUD_REFLECTANCE
            data = np.round((refl - offset) / 1e-4).astype(
                np.uint16
            )  # DN = (refl - offset) / scale
            data[:, : scene.nodata_cols * 10 // res] = 0
        _write_cog(folder / f"{key}.tif", data, x0, res)
        name, wl = _WAVELENGTH[key]
        eo = {"name": name, "common_name": key}
        if wl is not None:
            eo["center_wavelength"] = wl
        rb = {"nodata": 0, "data_type": str(data.dtype), "spatial_resolution": res}
        if key != "scl" and not esa_keys:
            rb |= {"scale": 0.0001, "offset": offset}
        fields = {
            "eo:bands": [eo],
            "raster:bands": [rb],
            "proj:shape": list(data.shape),
            "proj:transform": [float(res), 0.0, x0, 0.0, -float(res), Y0],
        }
        if esa_keys:  # Planetary Computer: ESA band names, no scale (the baseline says it)
            del fields["raster:bands"]
        asset = pystac.Asset(
            str(folder / f"{key}.tif"),
            media_type=pystac.MediaType.COG,
            roles=["data"] if key == "scl" else ["data", "reflectance"],
            extra_fields=fields,
        )
        item.add_asset(name if esa_keys else key, asset)
    return item


def _landcover_item(folder: Path) -> pystac.Item:
    folder.mkdir(parents=True, exist_ok=True)
    data = np.full((SIZE, SIZE), 10, np.uint8)
    data[:, SIZE // 2 :] = 40
    _write_cog(folder / "map.tif", data, X0, 10)
    geom = _geometry(X0)
    item = pystac.Item(
        "ESA_WorldCover_33TUM",
        geom,
        _bbox(geom),
        dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
        {},
    )
    item.add_asset(
        "map",
        pystac.Asset(str(folder / "map.tif"), media_type=pystac.MediaType.COG, roles=["data"]),
    )
    return item


def _collection(cid: str, items: list[pystac.Item]) -> pystac.Collection:
    bboxes = np.array([i.bbox for i in items])
    times = sorted(i.datetime for i in items)
    extent = pystac.Extent(
        pystac.SpatialExtent(
            [[*map(float, bboxes[:, :2].min(0)), *map(float, bboxes[:, 2:].max(0))]]
        ),
        pystac.TemporalExtent([[times[0], times[-1]]]),
    )
    coll = pystac.Collection(cid, f"{cid} (test fixture)", extent, license="proprietary")
    coll.add_items(items)
    return coll


def make_catalog(root: Path, scenes: tuple[Scene, ...] = SCENES, *, esa_keys: bool = False) -> Path:
    """Write the catalog under ``root`` and return the path of its ``catalog.json``.

    With ``esa_keys`` the assets are keyed and described as the Planetary Computer does: ESA band
    names (``B02``, ``SCL``) and no ``raster:bands``.
    """
    root = Path(root)
    s2 = [_s2_item(s, root / "sentinel-2-l2a" / s.id, esa_keys) for s in scenes]
    lc = [_landcover_item(root / "landcover" / "ESA_WorldCover_33TUM")]
    cat = pystac.Catalog("test", "geogfm test catalog")
    cat.add_child(_collection("sentinel-2-l2a", s2))
    cat.add_child(_collection("landcover", lc))
    cat.normalize_hrefs(str(root))
    cat.make_all_asset_hrefs_relative()
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"
