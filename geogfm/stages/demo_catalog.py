"""``demo_catalog`` stage: write the offline demo STAC catalog.

The catalog is shaped like Earth Search v1's ``sentinel-2-l2a`` so the rest of the DAG cannot tell
it from the real thing. A root catalog holds two collections:

- ``sentinel-2-l2a``: one item per date, twelve reflectance COGs at their native 10/20/60 m and an
  ``scl`` COG, with ``eo:bands``, ``raster:bands`` (scale, offset, nodata), ``proj:*``,
  ``eo:cloud_cover`` measured on the scene and the processing baseline (with its +1000 DN offset
  from 04.00 on);
- ``landcover``: one ESA WorldCover-like item for the tile, asset ``map``.

The pixels come from :class:`geogfm.data.demo_landscape.DemoLandscape`; this module places the
tile on a UTM grid and writes the files and the metadata, byte-identical for the same params.

Layout (relative hrefs, so the directory can move)::

    <out>/catalog.json
    <out>/sentinel-2-l2a/collection.json
    <out>/sentinel-2-l2a/<item id>/<item id>.json, B01.tif, ..., B12.tif, B8A.tif, SCL.tif
    <out>/landcover/collection.json
    <out>/landcover/landcover_<tile>_2021/landcover_<tile>_2021.json, map.tif

with item ids like ``S2B_33TWL_20210814_0_L2A``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.eo import Band as EOBand
from pystac.extensions.eo import EOExtension
from pystac.extensions.grid import GridExtension
from pystac.extensions.mgrs import MgrsExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.extensions.sat import OrbitState, SatExtension
from pystac.extensions.view import ViewExtension
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform
from tqdm import tqdm

from geogfm.core.config import GeoGFMConfig
from geogfm.data.datasets.sentinel2 import (
    BANDS,
    NODATA,
    REFLECTANCE_SCALE,
    SCL_CLASSES,
    baseline_offset,
)
from geogfm.data.demo_landscape import LANDCOVER_CLASSES, LANDCOVER_COLORS, DemoLandscape

__all__ = ["LANDCOVER_COLLECTION", "S2_COLLECTION", "processing_baseline", "run"]

log = logging.getLogger(__name__)

#: Collection id of the Sentinel-2 scenes (Earth Search's).
S2_COLLECTION = "sentinel-2-l2a"
#: Collection id of the land-cover label layer.
LANDCOVER_COLLECTION = "landcover"

_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_S2_SCHEMA = "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json"
# Processing baselines and the dates they took over (ESA's L2A history, simplified).
_BASELINES = (
    (dt.date.min, "03.01"),
    (dt.date(2022, 1, 25), "04.00"),
    (dt.date(2022, 12, 6), "05.09"),
)
_FULL_ORBIT, _PARTIAL_ORBIT = 122, 79  # relative orbits: one sees the whole tile, one a part


def processing_baseline(day: dt.date) -> str:
    """The L2A processing baseline of a product acquired on ``day`` ("04.00" from 2022-01-25)."""
    return [b for start, b in _BASELINES if day >= start][-1]


# --------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class _Grid:
    """The demo tile on its UTM grid: ``size`` 10 m pixels from the top-left corner ``(x0, y0)``."""

    epsg: int
    x0: float
    y0: float
    size: int
    mgrs: str  # e.g. "33TWL"

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def transform(self, resolution: int) -> Affine:
        return Affine(resolution, 0.0, self.x0, 0.0, -resolution, self.y0)

    def shape(self, resolution: int) -> tuple[int, int]:
        side = -(-self.size * 10 // resolution)
        return side, side

    def lonlat(self, pixels: list[tuple[float, float]]) -> list[list[float]]:
        """10 m pixel coordinates ``(x, y)`` to ``[lon, lat]`` (rounded to ~1 cm)."""
        xs = [self.x0 + 10.0 * x for x, _ in pixels]
        ys = [self.y0 - 10.0 * y for _, y in pixels]
        lons, lats = warp_transform(self.crs, "EPSG:4326", xs, ys)
        return [[round(lon, 7), round(lat, 7)] for lon, lat in zip(lons, lats, strict=True)]


def _grid(*, lon: float, lat: float, size: int) -> _Grid:
    """Place a ``size``-pixel tile over ``(lon, lat)`` in its UTM zone.

    The corners snap to multiples of the largest ``2**k * 10`` m (at most 5120 m) that fits in the
    tile, so tile_cache's cells (corners on multiples of ``cell_size * resolution``) of up to that
    size cover the tile exactly, and the point stays inside the tile.
    """
    zone = min(int((lon + 180.0) // 6) + 1, 60)
    epsg = (32600 if lat >= 0 else 32700) + zone
    (cx,), (cy,) = warp_transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
    half = size * 10 / 2
    snap = 10.0 * 2 ** min(math.floor(math.log2(size)), 9)
    x0 = round((cx - half) / snap) * snap
    y0 = round((cy + half) / snap) * snap
    # MGRS 100 km square of the centre (the AA lettering Sentinel-2 tiles use)
    band = "CDEFGHJKLMNPQRSTUVWX"[min(int((lat + 80.0) // 8), 19)]
    column = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3][int(cx // 100_000) - 1]
    row = "ABCDEFGHJKLMNPQRSTUV"[(int(cy // 100_000) + (0 if zone % 2 else 5)) % 20]
    return _Grid(epsg=epsg, x0=x0, y0=y0, size=size, mgrs=f"{zone:02d}{band}{column}{row}")


# ---------------------------------------------------------------------------------------------- COG


def _write_cog(path: Path, data: np.ndarray, grid: _Grid, resolution: int, resampling: str) -> None:
    """Write one band as a deflate-compressed Cloud-Optimised GeoTIFF with overviews, nodata 0."""
    h, w = data.shape
    side = max(h, w)
    block = 512 if side >= 2048 else 256 if side >= 512 else 128  # GDAL's COG wants >= 128
    if side == block:  # one tile exactly the image's size reads as one strip (rasterio: not tiled)
        block *= 2
    profile: dict[str, Any] = {
        "driver": "COG",
        "width": w,
        "height": h,
        "count": 1,
        "dtype": data.dtype.name,
        "crs": grid.crs,
        "transform": grid.transform(resolution),
        "nodata": NODATA,
        "compress": "DEFLATE",
        "predictor": 2,
        "blocksize": block,
        "overview_resampling": resampling,
        "bigtiff": "NO",
    }
    if side <= block:  # GDAL would make none; a COG reader expects at least one
        profile["overview_count"] = 1
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _to_dn(reflectance: np.ndarray, offset: float) -> np.ndarray:
    """Reflectance (NaN = no data) to uint16 DN = (reflectance - offset) / scale, valid DN >= 1."""
    dn = np.zeros(reflectance.shape, dtype=np.uint16)
    valid = ~np.isnan(reflectance)
    shift = round(-offset / REFLECTANCE_SCALE)
    dn[valid] = np.clip(np.rint(reflectance[valid] / REFLECTANCE_SCALE) + shift, 1, 65535)
    return dn


# -------------------------------------------------------------------------------------------- items


def _eo_band(key: str) -> EOBand:
    b = next(b for b in BANDS if b.key == key)
    return EOBand.create(
        name=b.name,
        common_name=b.common_name,
        description=f"{b.common_name} ({b.name}), {b.resolution} m",
        center_wavelength=b.center_wavelength,
        full_width_half_max=b.full_width_half_max,
    )


def _footprint(grid: _Grid, pixels: tuple[tuple[float, float], ...]) -> dict[str, Any]:
    ring = grid.lonlat(list(reversed(pixels)))  # pixel rows grow southwards: reverse for CCW
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _bbox(geometry: dict[str, Any]) -> list[float]:
    lons, lats = zip(*geometry["coordinates"][0], strict=True)
    return [min(lons), min(lats), max(lons), max(lats)]


def _add_proj(obj: pystac.Item | pystac.Asset, grid: _Grid, resolution: int) -> None:
    proj = ProjectionExtension.ext(obj)
    if isinstance(obj, pystac.Item):
        proj.epsg = grid.epsg
        obj.properties["proj:epsg"] = grid.epsg  # Earth Search v1 (projection v1.x) spelling, too
    h, w = grid.shape(resolution)
    proj.shape = [h, w]
    proj.transform = list(grid.transform(resolution))[:6]


def _s2_item(
    item_dir: Path,
    *,
    landscape: DemoLandscape,
    grid: _Grid,
    day: dt.date,
    index: int,
    lon: float,
    cloud_cover: float,
) -> pystac.Item:
    """Simulate the scene of ``day``, write its COGs into ``item_dir`` and describe it."""
    # overpass: Sentinel-2 images central Europe at about 10:06 UTC (11:06 mean solar time at 15E)
    when = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
        seconds=round((11.1 - lon / 15.0) * 3600)
    )
    partial = index % 3 == 1  # every third date comes from the orbit that clips the tile
    scene = landscape.scene(when, cloud_cover=cloud_cover, partial=partial)
    baseline = processing_baseline(when.date())
    offset = baseline_offset(baseline)
    platform = "sentinel-2a" if (when.date().toordinal() // 5) % 2 == 0 else "sentinel-2b"
    item_id = f"S2{platform[-1].upper()}_{grid.mgrs}_{when:%Y%m%d}_0_L2A"

    geometry = _footprint(grid, scene.footprint)
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=_bbox(geometry),
        datetime=when,
        properties={},
    )
    item.common_metadata.platform = platform
    item.common_metadata.constellation = "sentinel-2"
    item.common_metadata.instruments = ["msi"]
    item.common_metadata.gsd = 10
    eo = EOExtension.ext(item, add_if_missing=True)
    eo.cloud_cover = round(scene.cloud_cover, 4)
    RasterExtension.add_to(item)
    ProjectionExtension.add_to(item)
    _add_proj(item, grid, 10)
    ViewExtension.ext(item, add_if_missing=True).apply(
        sun_azimuth=round(scene.sun_azimuth, 4), sun_elevation=round(scene.sun_elevation, 4)
    )
    MgrsExtension.ext(item, add_if_missing=True).apply(
        latitude_band=grid.mgrs[2], grid_square=grid.mgrs[3:], utm_zone=int(grid.mgrs[:2])
    )
    GridExtension.ext(item, add_if_missing=True).apply(code=f"MGRS-{grid.mgrs}")
    SatExtension.ext(item, add_if_missing=True).apply(
        orbit_state=OrbitState.DESCENDING,
        relative_orbit=_PARTIAL_ORBIT if partial else _FULL_ORBIT,
    )
    pct = scene.scl_percentages()
    item.stac_extensions.append(_S2_SCHEMA)
    item.properties.update(
        {
            "s2:processing_baseline": baseline,
            "s2:product_type": "S2MSI2A",
            "s2:nodata_pixel_percentage": round(pct[0], 4),
            "s2:saturated_defective_pixel_percentage": round(pct[1], 4),
            "s2:dark_features_percentage": round(pct[2], 4),
            "s2:cloud_shadow_percentage": round(pct[3], 4),
            "s2:vegetation_percentage": round(pct[4], 4),
            "s2:not_vegetated_percentage": round(pct[5], 4),
            "s2:water_percentage": round(pct[6], 4),
            "s2:unclassified_percentage": round(pct[7], 4),
            "s2:medium_proba_clouds_percentage": round(pct[8], 4),
            "s2:high_proba_clouds_percentage": round(pct[9], 4),
            "s2:thin_cirrus_percentage": round(pct[10], 4),
            "s2:snow_ice_percentage": round(pct[11], 4),
        }
    )

    for b in BANDS:
        _write_cog(
            item_dir / f"{b.name}.tif",
            _to_dn(scene.reflectance[b.key], offset),
            grid,
            b.resolution,
            "average",
        )
        asset = pystac.Asset(
            href=f"./{b.name}.tif",
            title=f"{b.common_name} ({b.name}) - {b.resolution}m",
            media_type=_COG,
            roles=["data", "reflectance"],
            extra_fields={"gsd": b.resolution},
        )
        item.add_asset(b.key, asset)
        EOExtension.ext(asset).bands = [_eo_band(b.key)]
        RasterExtension.ext(asset).bands = [
            RasterBand.create(
                nodata=NODATA,
                data_type=DataType.UINT16,
                bits_per_sample=15,
                spatial_resolution=b.resolution,
                scale=REFLECTANCE_SCALE,
                offset=offset,
            )
        ]
        _add_proj(asset, grid, b.resolution)

    _write_cog(item_dir / "SCL.tif", scene.scl, grid, 20, "nearest")
    scl = pystac.Asset(
        href="./SCL.tif",
        title="Scene classification map (SCL)",
        media_type=_COG,
        roles=["data"],
        extra_fields={"gsd": 20},
    )
    item.add_asset("scl", scl)
    RasterExtension.ext(scl).bands = [
        RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, spatial_resolution=20)
    ]
    ClassificationExtension.ext(scl, add_if_missing=True).classes = [
        Classification.create(value=v, name=name, nodata=v == 0 or None)
        for v, name in SCL_CLASSES.items()
    ]
    _add_proj(scl, grid, 20)
    return item


def _landcover_classes() -> list[Classification]:
    return [
        Classification.create(value=v, name=name, color_hint=LANDCOVER_COLORS[v].upper())
        for v, name in LANDCOVER_CLASSES.items()
    ]


def _landcover_item(item_dir: Path, *, landscape: DemoLandscape, grid: _Grid) -> pystac.Item:
    s = float(grid.size)
    geometry = _footprint(grid, ((0.0, 0.0), (s, 0.0), (s, s), (0.0, s)))
    item = pystac.Item(
        id=f"landcover_{grid.mgrs}_2021",
        geometry=geometry,
        bbox=_bbox(geometry),
        datetime=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
        properties={},
        start_datetime=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
        end_datetime=dt.datetime(2021, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    )
    item.common_metadata.gsd = 10
    RasterExtension.add_to(item)
    ProjectionExtension.add_to(item)
    _add_proj(item, grid, 10)
    GridExtension.ext(item, add_if_missing=True).apply(code=f"MGRS-{grid.mgrs}")

    _write_cog(item_dir / "map.tif", landscape.landcover, grid, 10, "mode")
    asset = pystac.Asset(
        href="./map.tif",
        title="Land cover classes (ESA WorldCover legend)",
        media_type=_COG,
        roles=["data"],
    )
    item.add_asset("map", asset)
    RasterExtension.ext(asset).bands = [
        RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, spatial_resolution=10)
    ]
    ClassificationExtension.ext(asset, add_if_missing=True).classes = _landcover_classes()
    return item


# -------------------------------------------------------------------------------------- collections


def _extent(items: list[pystac.Item]) -> pystac.Extent:
    boxes = np.array([it.bbox for it in items])
    bbox = [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]
    times = sorted(it.datetime for it in items if it.datetime)
    ends = [it.common_metadata.end_datetime for it in items if it.common_metadata.end_datetime]
    return pystac.Extent(
        pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times[0], max([times[-1], *ends])]])
    )


_PROVIDERS = [
    pystac.Provider(
        name="geogfm demo_catalog",
        description="Synthetic scenes of a procedural landscape (geogfm.data.demo_landscape)",
        roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.PROCESSOR],
    )
]


def _s2_collection(items: list[pystac.Item]) -> pystac.Collection:
    cc = [it.properties["eo:cloud_cover"] for it in items]
    coll = pystac.Collection(
        id=S2_COLLECTION,
        title="Sentinel-2 Level-2A (demo)",
        description=(
            "Synthetic Sentinel-2 L2A scenes shaped like Earth Search v1 sentinel-2-l2a: "
            "uint16 DN COGs at native resolution, reflectance = DN * scale + offset "
            "(offset -0.1 from processing baseline 04.00 on, see each asset's raster:bands)."
        ),
        extent=_extent(items),
        license="CC0-1.0",
        providers=_PROVIDERS,
        summaries=pystac.Summaries(
            {
                "platform": sorted({it.common_metadata.platform for it in items}),
                "constellation": ["sentinel-2"],
                "instruments": ["msi"],
                "gsd": sorted({b.resolution for b in BANDS}),
                "eo:bands": [_eo_band(b.key).to_dict() for b in BANDS],
                "eo:cloud_cover": {"minimum": min(cc), "maximum": max(cc)},
                "s2:processing_baseline": sorted(
                    {it.properties["s2:processing_baseline"] for it in items}
                ),
                "proj:code": sorted({it.properties["proj:code"] for it in items}),
            }
        ),
    )
    for schema in (EOExtension, RasterExtension, ProjectionExtension):
        coll.stac_extensions.append(schema.get_schema_uri())
    for b in BANDS:
        coll.item_assets[b.key] = pystac.ItemAssetDefinition.create(
            title=f"{b.common_name} ({b.name}) - {b.resolution}m",
            description=None,
            media_type=_COG,
            roles=["data", "reflectance"],
            extra_fields={
                "gsd": b.resolution,
                "eo:bands": [_eo_band(b.key).to_dict()],
                "raster:bands": [
                    {
                        "nodata": NODATA,
                        "data_type": "uint16",
                        "bits_per_sample": 15,
                        "spatial_resolution": b.resolution,
                        "scale": REFLECTANCE_SCALE,
                    }
                ],
            },
        )
    coll.item_assets["scl"] = pystac.ItemAssetDefinition.create(
        title="Scene classification map (SCL)",
        description=None,
        media_type=_COG,
        roles=["data"],
        extra_fields={
            "gsd": 20,
            "raster:bands": [{"nodata": NODATA, "data_type": "uint8", "spatial_resolution": 20}],
        },
    )
    return coll


def _landcover_collection(items: list[pystac.Item]) -> pystac.Collection:
    coll = pystac.Collection(
        id=LANDCOVER_COLLECTION,
        title="Land cover (demo, ESA WorldCover legend)",
        description=(
            "The demo landscape's land-cover map at 10 m, one item per tile, with the ESA "
            "WorldCover class codes; labels for probes."
        ),
        extent=_extent(items),
        license="CC0-1.0",
        providers=_PROVIDERS,
        summaries=pystac.Summaries({"gsd": [10]}),
    )
    ClassificationExtension.add_to(coll)
    coll.stac_extensions.append(RasterExtension.get_schema_uri())
    coll.item_assets["map"] = pystac.ItemAssetDefinition.create(
        title="Land cover classes (ESA WorldCover legend)",
        description=None,
        media_type=_COG,
        roles=["data"],
        extra_fields={
            "raster:bands": [{"nodata": NODATA, "data_type": "uint8", "spatial_resolution": 10}],
            "classification:classes": [c.to_dict() for c in _landcover_classes()],
        },
    )
    return coll


# --------------------------------------------------------------------------------------------- run


def run(cfg: GeoGFMConfig, *, out: Path) -> dict[str, Any]:
    """Write the demo STAC catalog into ``out`` (replacing it atomically).

    Args:
        cfg: the configuration; reads ``cfg.demo_catalog``.
        out: the catalog directory (``data/demo``); ``out/catalog.json`` is the root.

    Returns:
        A summary: the output, tile, CRS, item ids, their cloud cover and processing baselines.
    """
    c = cfg.demo_catalog
    out = Path(out)
    grid = _grid(lon=c.lon, lat=c.lat, size=c.size)
    days = [dt.date.fromisoformat(d) for d in sorted(c.dates)]
    log.info(
        "demo catalog: tile %s (%s, %d x %d px at 10 m), %d dates, seed %d",
        grid.mgrs,
        grid.crs,
        c.size,
        c.size,
        len(days),
        c.seed,
    )
    landscape = DemoLandscape(seed=c.seed, size=c.size, lon=c.lon, lat=c.lat)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        s2_items = []
        for i, day in enumerate(tqdm(days, desc="demo scenes", unit="scene", disable=None)):
            # the item's id is known after the scene is simulated: write into a scratch folder
            scratch = tmp / S2_COLLECTION / f"_scene{i}"
            scratch.mkdir(parents=True)
            item = _s2_item(
                scratch,
                landscape=landscape,
                grid=grid,
                day=day,
                index=i,
                lon=c.lon,
                cloud_cover=c.cloud_cover,
            )
            scratch.rename(scratch.parent / item.id)
            s2_items.append(item)
            log.info(
                "%s: baseline %s, cloud cover %.1f %%, no data %.1f %%",
                item.id,
                item.properties["s2:processing_baseline"],
                item.properties["eo:cloud_cover"],
                item.properties["s2:nodata_pixel_percentage"],
            )
        lc_dir = tmp / LANDCOVER_COLLECTION / f"landcover_{grid.mgrs}_2021"
        lc_dir.mkdir(parents=True)
        lc_item = _landcover_item(lc_dir, landscape=landscape, grid=grid)

        catalog = pystac.Catalog(
            id="geogfm-demo",
            title="geogfm demo catalog",
            description=(
                f"Offline demo catalog generated by geogfm (seed {c.seed}): Sentinel-2 L2A-like "
                f"scenes of tile {grid.mgrs} and its land cover."
            ),
        )
        for coll, items in (
            (_s2_collection(s2_items), s2_items),
            (_landcover_collection([lc_item]), [lc_item]),
        ):
            coll.add_items(items)
            catalog.add_child(coll)
        # a file path: pystac would take the ".tmp-<pid>" suffix of the folder for a file extension
        catalog.normalize_hrefs(str(tmp.resolve() / "catalog.json"))
        for item in [*s2_items, lc_item]:
            for key, asset in item.assets.items():
                href = Path(asset.get_absolute_href() or "")
                assert href.is_file(), f"asset {key} of {item.id} not at {href}"
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    summary = {
        "out": str(out),
        "tile": grid.mgrs,
        "crs": grid.crs,
        "size": c.size,
        "items": [it.id for it in s2_items],
        "cloud_cover": [it.properties["eo:cloud_cover"] for it in s2_items],
        "processing_baseline": [it.properties["s2:processing_baseline"] for it in s2_items],
    }
    log.info("demo catalog written to %s: %d scenes + land cover", out, len(s2_items))
    return summary
