"""``geogfm stac_query``: search the configured catalog and record exactly what was found.

Writes ``<out>/items.json`` (a STAC ItemCollection with absolute asset hrefs, sorted by ``(datetime,
id)``) and ``<out>/lock.json`` (the query, the catalog, and per item its id, collection, datetime,
processing baseline and asset hrefs with sizes and checksums: sha256 of local files, ``ETag`` and
``Content-Length`` of http ones), both at once: the folder is written under a temporary name and
renamed into place, so a failed search or a missing asset leaves the previous output (or none).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pystac

from geogfm.core.config import GeoGFMConfig
from geogfm.core.io import atomic_dir
from geogfm.data.stac import collection_bbox, is_url, item_datetime, search_items
from geogfm.data.stac_lock import write_lock

__all__ = ["run"]

log = logging.getLogger(__name__)

#: The collection whose extent is the default area of the demo catalog.
DEMO_COLLECTION = "sentinel-2-l2a"


def run(cfg: GeoGFMConfig, *, catalog_dir: Path, out: Path) -> dict[str, Any]:
    """Search ``cfg.stac_query`` and write ``items.json`` and ``lock.json`` into ``out``.

    Args:
        cfg: the configuration; its ``stac_query`` section is used.
        catalog_dir: the demo catalog folder (``data/demo``), used when ``stac_query.catalog`` is
            ``"demo"``.
        out: the output folder (``data/stac``), replaced whole.

    Returns:
        A summary: item count, catalog, first and last datetime, items per processing baseline.

    Raises:
        FileNotFoundError: if the demo or local catalog does not exist.
        ValueError: if the query is malformed (bbox, intersects, datetime).
        DataError: if the search finds nothing (the message repeats the query), names an unknown
            collection, asks a cloud filter of an API that cannot apply it, if the API or an asset
            server fails or does not answer after the retries, or if an asset is missing. Nothing
            is written then.
    """
    q = cfg.stac_query
    bbox = q.bbox
    if q.catalog == "demo":
        location = str((Path(catalog_dir) / "catalog.json").resolve())
        if not Path(location).is_file():
            raise FileNotFoundError(
                f"demo catalog {location!r} not found; run `geogfm demo_catalog` first "
                "(or pass --catalog-dir to where it was written)"
            )
        if bbox is None and q.intersects is None:
            bbox = collection_bbox(location, DEMO_COLLECTION)
            log.info("bbox not set: using the %s collection extent %s", DEMO_COLLECTION, bbox)
    elif is_url(q.catalog):
        location = q.catalog
    else:
        location = str(Path(q.catalog).resolve())
    query = {
        "catalog": q.catalog,
        "collections": list(q.collections),
        "bbox": bbox,
        "intersects": q.intersects,
        "datetime": q.datetime,
        "max_cloud_cover": q.max_cloud_cover,
        "max_items": q.max_items,
    }
    items = search_items(
        catalog=location,
        collections=q.collections,
        bbox=bbox,
        intersects=q.intersects,
        datetime=q.datetime,
        max_cloud_cover=q.max_cloud_cover,
        max_items=q.max_items,
        page_size=q.page_size,
        retries=q.retries,
        timeout=q.timeout,
    )
    with atomic_dir(out) as tmp:
        ic = pystac.ItemCollection(items)
        (tmp / "items.json").write_text(json.dumps(ic.to_dict(transform_hrefs=False), indent=2))
        write_lock(
            items, query, tmp / "lock.json", catalog=location, retries=q.retries, timeout=q.timeout
        )
    times = [item_datetime(i) for i in items]
    baselines = Counter(str(i.properties.get("s2:processing_baseline")) for i in items)
    summary = {
        "items": len(items),
        "catalog": location,
        "first": min(times).isoformat(),
        "last": max(times).isoformat(),
        "processing_baselines": dict(sorted(baselines.items())),
    }
    log.info("stac_query: %s", summary)
    return summary
