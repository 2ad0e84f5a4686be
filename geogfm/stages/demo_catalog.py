"""``demo_catalog`` stage: write the offline demo STAC catalog.

The catalog is shaped like Earth Search v1's ``sentinel-2-l2a`` so the rest of the DAG cannot tell
it from the real thing. A root catalog holds two collections:

- ``sentinel-2-l2a``: per date, one item per tile, twelve reflectance COGs at their native
  10/20/60 m and an ``scl`` COG, with ``eo:bands``, ``raster:bands`` (scale, offset, nodata),
  ``proj:*``, ``eo:cloud_cover`` measured on the scene and the processing baseline (with its +1000
  DN offset from 04.00 on);
- ``landcover``: one ESA WorldCover-like item per tile, asset ``map``, on the tile's grid.

There are two tiles, as there are where an area of interest meets a UTM zone boundary: one in the
zone of ``demo_catalog.lon``, and one in the neighbouring zone that overlaps it by half, each on
its own zone's grid (``proj:code``) and seen by the same datatake on every date (same time,
platform, clouds and swath edge). By default they straddle the 32 | 33 boundary at 12 E. The pixels
come from one :class:`geogfm.data.demo_landscape.DemoLandscape` laid out on the first tile's grid;
:mod:`geogfm.data.demo_tiles` places the tiles, and this module writes the files and the metadata,
byte-identical for the same params.

Layout (relative hrefs, so the directory can move)::

    <out>/catalog.json
    <out>/sentinel-2-l2a/collection.json
    <out>/sentinel-2-l2a/<item id>/<item id>.json, B01.tif, ..., B12.tif, B8A.tif, SCL.tif
    <out>/landcover/collection.json
    <out>/landcover/landcover_<tile>_2021/landcover_<tile>_2021.json, map.tif

with item ids like ``S2B_33TTL_20210814_0_L2A`` and ``S2B_32TQR_20210814_0_L2A``.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import logging
import os
import shutil
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
from geogfm.data.demo_tiles import TileGrid, demo_tiles, landscape_views
from geogfm.data.demo_view import DemoScene

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
_WORKERS = 2  # dates simulated at once


def processing_baseline(day: dt.date) -> str:
    """The L2A processing baseline of a product acquired on ``day`` ("04.00" from 2022-01-25)."""
    return [b for start, b in _BASELINES if day >= start][-1]


# ---------------------------------------------------------------------------------------------- COG


def _write_cog(
    path: Path, data: np.ndarray, grid: TileGrid, resolution: int, resampling: str
) -> None:
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
        "level": 1,  # DEFLATE level: fast to write, and readers cannot tell
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


def _footprint(grid: TileGrid, pixels: tuple[tuple[float, float], ...]) -> dict[str, Any]:
    ring = grid.lonlat(list(reversed(pixels)))  # pixel rows grow southwards: reverse for CCW
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _bbox(geometry: dict[str, Any]) -> list[float]:
    lons, lats = zip(*geometry["coordinates"][0], strict=True)
    return [min(lons), min(lats), max(lons), max(lats)]


def _add_proj(obj: pystac.Item | pystac.Asset, grid: TileGrid, resolution: int) -> None:
    proj = ProjectionExtension.ext(obj)
    if isinstance(obj, pystac.Item):
        proj.epsg = grid.epsg
        obj.properties["proj:epsg"] = grid.epsg  # Earth Search v1 (projection v1.x) spelling, too
    h, w = grid.shape(resolution)
    proj.shape = [h, w]
    proj.transform = list(grid.transform(resolution))[:6]


def _overpass(day: dt.date, lon: float) -> dt.datetime:
    """Sentinel-2's overpass on ``day`` at longitude ``lon``: about 10:30 mean solar time."""
    # central Europe is imaged at about 10:06 UTC (11:06 mean solar time at 15 E)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start + dt.timedelta(seconds=round((11.1 - lon / 15.0) * 3600))


def _s2_item(
    item_dir: Path, *, scene: DemoScene, grid: TileGrid, when: dt.datetime, partial: bool
) -> pystac.Item:
    """Write a tile's scene of ``when`` as COGs into ``item_dir`` and describe it."""
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


def _landcover_item(item_dir: Path, *, landcover: np.ndarray, grid: TileGrid) -> pystac.Item:
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

    _write_cog(item_dir / "map.tif", landcover, grid, 10, "mode")
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
    grids = demo_tiles(lon=c.lon, lat=c.lat, size=c.size)
    transform, shape, views = landscape_views(grids)
    days = [dt.date.fromisoformat(d) for d in sorted(c.dates)]
    log.info(
        "demo catalog: tiles %s (%d x %d px at 10 m), %d dates, seed %d",
        ", ".join(f"{g.mgrs} ({g.crs})" for g in grids),
        c.size,
        c.size,
        len(days),
        c.seed,
    )
    landscape = DemoLandscape(seed=c.seed, size=shape, lon=c.lon, lat=c.lat)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)

    def scenes(i: int, day: dt.date) -> list[pystac.Item]:
        """Render one date and write each tile's item (into its own folder)."""
        when = _overpass(day, c.lon)
        partial = i % 3 == 1  # every third date comes from the orbit that clips the area
        sky = landscape.render(when, cloud_cover=c.cloud_cover)
        items = []
        for key, (grid, view) in enumerate(zip(grids, views, strict=True)):
            scene = landscape.observe(sky, view, partial=partial, key=key)
            if len(scene.footprint) < 3:
                log.info("%s %s: beyond the swath edge, no product", grid.mgrs, day)
                continue
            # the item's id is known once the scene is described: write into a scratch folder
            scratch = tmp / S2_COLLECTION / f"_scene{i}_{key}"
            scratch.mkdir(parents=True)
            item = _s2_item(scratch, scene=scene, grid=grid, when=when, partial=partial)
            scratch.rename(scratch.parent / item.id)
            items.append(item)
            log.info(
                "%s: %s, baseline %s, cloud cover %.1f %%, no data %.1f %%",
                item.id,
                grid.crs,
                item.properties["s2:processing_baseline"],
                item.properties["eo:cloud_cover"],
                item.properties["s2:nodata_pixel_percentage"],
            )
        return items

    try:
        # dates in parallel (numpy and GDAL release the GIL); each date's files and randomness
        # are its own, so the output does not depend on the order they finish in
        s2_items = []
        with cf.ThreadPoolExecutor(_WORKERS) as pool:
            done = pool.map(scenes, range(len(days)), days)
            for items in tqdm(done, total=len(days), desc="demo scenes", unit="date", disable=None):
                s2_items += items
        lc_items = []
        for grid, view in zip(grids, views, strict=True):
            lc_dir = tmp / LANDCOVER_COLLECTION / f"landcover_{grid.mgrs}_2021"
            lc_dir.mkdir(parents=True)
            landcover = landscape.sample_landcover(view)
            lc_items.append(_landcover_item(lc_dir, landcover=landcover, grid=grid))

        tiles = " and ".join(g.mgrs for g in grids)
        catalog = pystac.Catalog(
            id="geogfm-demo",
            title="geogfm demo catalog",
            description=(
                f"Offline demo catalog generated by geogfm (seed {c.seed}): Sentinel-2 L2A-like "
                f"scenes of tiles {tiles} (two UTM zones) and their land cover."
            ),
        )
        for coll, items in (
            (_s2_collection(s2_items), s2_items),
            (_landcover_collection(lc_items), lc_items),
        ):
            coll.add_items(items)
            catalog.add_child(coll)
        # a file path: pystac would take the ".tmp-<pid>" suffix of the folder for a file extension
        catalog.normalize_hrefs(str(tmp.resolve() / "catalog.json"))
        for item in [*s2_items, *lc_items]:
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
        "tiles": [g.mgrs for g in grids],
        "crs": [g.crs for g in grids],
        "size": c.size,
        "items": [it.id for it in s2_items],
        "cloud_cover": [it.properties["eo:cloud_cover"] for it in s2_items],
        "processing_baseline": [it.properties["s2:processing_baseline"] for it in s2_items],
    }
    log.info("demo catalog written to %s: %d scenes + land cover", out, len(s2_items))
    return summary
