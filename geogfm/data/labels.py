"""Label maps (e.g. ESA WorldCover) from a STAC collection, on a tile-cache cell's pixel grid.

A label collection has items whose asset (``map`` in the demo catalog) is a single-band raster of
class codes with a nodata value. :func:`read_label_map` reads every item that overlaps a cell onto
the cell's grid with nearest-neighbour resampling (class codes must never be averaged), through
GDAL's warper, so items in another UTM zone or at another resolution land on the right pixels;
where items overlap, the first one (by item id) that has a label wins. :func:`majority_labels`
turns pixel labels into one label per patch or per token.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform_bounds

from geogfm.core.errors import DataError
from geogfm.data.cache_reader import CacheCell

__all__ = ["LabelSource", "majority_labels", "open_label_source", "read_label_map"]

log = logging.getLogger(__name__)


class LabelSource:
    """The items of a label collection and how to read them.

    Args:
        items: the collection's items.
        asset: the asset key of the label raster.
        classes: class code -> name, from the asset's ``classification:classes`` (may be empty).
        nodata: the code of "no label".
        colors: class code -> ``"#rrggbb"``, from the classes' ``color_hint`` (may be empty).
    """

    def __init__(
        self,
        items: list[pystac.Item],
        *,
        asset: str,
        classes: dict[int, str],
        nodata: int,
        colors: dict[int, str] | None = None,
    ):
        self.items, self.asset, self.classes, self.nodata = items, asset, classes, nodata
        self.colors = colors or {}

    def __repr__(self) -> str:
        return f"LabelSource({len(self.items)} items, asset={self.asset!r}, nodata={self.nodata})"


def open_label_source(catalog: str | Path, *, collection: str, asset: str) -> LabelSource:
    """Find a label collection in a static STAC catalog.

    Args:
        catalog: the catalog's ``catalog.json``, or the directory holding it.
        collection: the collection id, e.g. ``"landcover"``.
        asset: the asset key of the label raster, e.g. ``"map"``.

    Returns:
        The collection's items (sorted by id), its classes and nodata value.

    Raises:
        FileNotFoundError: if there is no catalog at ``catalog``.
        DataError: if the collection is missing, empty, or an item lacks the asset.
    """
    path = Path(catalog)
    if path.is_dir():
        path = path / "catalog.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"label catalog {str(path)!r} not found; run `geogfm demo_catalog` (the demo's "
            "land cover) or pass --labels DIR of a catalog with a label collection"
        )
    root = pystac.Catalog.from_file(str(path))
    coll = root.get_child(collection)
    if coll is None:
        found = sorted(c.id for c in root.get_children())
        raise DataError(
            f"the catalog {path} has no collection {collection!r} (it has {found}); set "
            "evaluate.label_collection to one of them"
        )
    items = sorted(coll.get_items(recursive=True), key=lambda it: it.id)
    if not items:
        raise DataError(f"the label collection {collection!r} in {path} has no items")
    lacking = [it.id for it in items if asset not in it.assets]
    if lacking:
        raise DataError(
            f"label item(s) {lacking[:5]} have no asset {asset!r} (they have "
            f"{sorted(items[0].assets)}); set evaluate.label_asset"
        )
    first = items[0].assets[asset].to_dict()
    table = first.get("classification:classes", [])
    classes = {int(c["value"]): str(c.get("name", c["value"])) for c in table}
    colors = {int(c["value"]): f"#{c['color_hint']}" for c in table if c.get("color_hint")}
    bands = first.get("raster:bands") or [{}]
    nodata = int(bands[0].get("nodata") or 0)
    return LabelSource(items, asset=asset, classes=classes, nodata=nodata, colors=colors)


def read_label_map(source: LabelSource, cell: CacheCell) -> np.ndarray:
    """The labels of one cell, on its grid: (H, W) int32, ``source.nodata`` where none.

    Args:
        source: the label collection.
        cell: the tile-cache cell (its CRS, bounds and shape define the grid).

    Returns:
        The label map, nearest-neighbour resampled.
    """
    H, W = cell.shape
    dst_transform = from_bounds(*cell.bounds, W, H)
    out = np.full((H, W), source.nodata, np.int32)
    lon_lat = transform_bounds(cell.crs, "EPSG:4326", *cell.bounds)
    for item in source.items:
        if item.bbox is not None and not _overlap(item.bbox, lon_lat):
            continue
        href = item.assets[source.asset].get_absolute_href()
        with rasterio.open(href) as src:
            nodata = src.nodata if src.nodata is not None else source.nodata
            part = np.full((H, W), source.nodata, np.int32)
            reproject(
                source=rasterio.band(src, 1),
                destination=part,
                src_nodata=nodata,
                dst_nodata=source.nodata,
                dst_transform=dst_transform,
                dst_crs=cell.crs,
                resampling=Resampling.nearest,
            )
        fill = (out == source.nodata) & (part != source.nodata)
        out[fill] = part[fill]
    return out


def _overlap(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def majority_labels(labels: np.ndarray, block: int, *, nodata: int = 0) -> np.ndarray:
    """Most frequent label in each ``block x block`` square, ignoring ``nodata``.

    Args:
        labels: (..., H, W) int labels; H and W multiples of ``block``.
        block: square side, pixels (a patch's size for one label per patch, the token size for
            one per token).
        nodata: the label that does not vote; a square with no other label gets ``nodata``.

    Returns:
        (..., H / block, W / block) labels; ties go to the smaller code.
    """
    *lead, H, W = labels.shape
    assert H % block == 0 and W % block == 0, (labels.shape, block)
    h, w = H // block, W // block
    sq = labels.reshape(*lead, h, block, w, block).swapaxes(-3, -2)
    sq = sq.reshape(*lead, h, w, block * block)  # (..., h, w, block²)
    codes = np.unique(labels)
    codes = codes[codes != nodata]
    if not len(codes):
        return np.full((*lead, h, w), nodata, labels.dtype)
    counts = np.stack([(sq == c).sum(-1) for c in codes], axis=-1)  # (..., h, w, n_codes)
    best = codes[counts.argmax(-1)]
    return np.where(counts.max(-1) > 0, best, nodata).astype(labels.dtype)
