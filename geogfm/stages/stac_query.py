"""``geogfm stac_query``: search the configured catalog and record exactly what was found.

Writes ``<out>/items.json`` (a STAC ItemCollection with absolute asset hrefs, sorted by ``(datetime,
id)``) and ``<out>/lock.json`` (the query, the catalog, and per item its id, collection, datetime,
processing baseline and asset hrefs with sizes and checksums: sha256 of local files, ``ETag`` and
``Content-Length`` of http ones), both at once: the folder is written under a temporary name and
renamed into place, so a failed search or a missing asset leaves the previous output (or none).

``geogfm stac_query --check`` (:func:`check`) writes nothing: it runs the locked query again and
fails, naming the items and assets, if the catalog no longer gives what the lock recorded (an item
gone or new, an asset gone or with another size, sha256 or ETag, another processing baseline).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pystac

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_dir
from geogfm.data.stac import collection_bbox, is_url, item_datetime, search_items
from geogfm.data.stac_lock import lock_drift, resolve_lock, write_lock

__all__ = ["check", "run"]

log = logging.getLogger(__name__)

#: The collection whose extent is the default area of the demo catalog.
DEMO_COLLECTION = "sentinel-2-l2a"


def _location(catalog: str, catalog_dir: Path) -> str:
    """Where to search: the demo catalog's ``catalog.json``, an API URL or a local catalog path."""
    if catalog == "demo":
        location = str((Path(catalog_dir) / "catalog.json").resolve())
        if not Path(location).is_file():
            raise FileNotFoundError(
                f"demo catalog {location!r} not found; run `geogfm demo_catalog` first "
                "(or pass --catalog-dir to where it was written)"
            )
        return location
    return catalog if is_url(catalog) else str(Path(catalog).resolve())


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
    location = _location(q.catalog, catalog_dir)
    if q.catalog == "demo" and bbox is None and q.intersects is None:
        bbox = collection_bbox(location, DEMO_COLLECTION)
        log.info("bbox not set: using the %s collection extent %s", DEMO_COLLECTION, bbox)
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


def check(cfg: GeoGFMConfig, *, catalog_dir: Path, out: Path) -> dict[str, Any]:
    """Run the query of ``<out>/lock.json`` again and compare what is found with the lock.

    The locked query is searched again (``stac_query.catalog: demo`` is found in ``catalog_dir``,
    as by :func:`run`), every asset is checked again (sha256 of local files, size and ETag of http
    ones) and the result is compared with the lock by
    :func:`~geogfm.data.stac_lock.lock_drift`. Nothing is written.

    Args:
        cfg: the configuration; ``stac_query``'s page size, retries and timeout are used.
        catalog_dir: the demo catalog folder (``data/demo``).
        out: the folder holding ``lock.json`` (``data/stac``).

    Returns:
        A summary: items and assets checked, and ``"drift": 0``.

    Raises:
        FileNotFoundError: if there is no lock, or the catalog does not exist.
        DataError: listing every difference, one line per item or asset, if the catalog changed;
            or if the search itself fails (an API that does not answer).
    """
    q = cfg.stac_query
    lock_path = Path(out) / "lock.json"
    if not lock_path.is_file():
        raise FileNotFoundError(
            f"lock {str(lock_path)!r} not found; run `geogfm stac_query` first (or pass --out to "
            "the folder that holds lock.json)"
        )
    locked = json.loads(lock_path.read_text())
    query = locked["query"]
    now = {
        "catalog": q.catalog,
        "collections": list(q.collections),
        "intersects": q.intersects,
        "datetime": q.datetime,
        "max_cloud_cover": q.max_cloud_cover,
        "max_items": q.max_items,
    }
    changed = [k for k, v in now.items() if query.get(k) != v]
    if changed or (q.bbox is not None and list(query.get("bbox") or []) != list(q.bbox)):
        log.warning(
            "stac_query in the params differs from the locked query (%s): checking the locked "
            "query; `geogfm stac_query` would search with the new one",
            ", ".join(changed) or "bbox",
        )
    location = _location(query["catalog"], catalog_dir)
    try:
        items = search_items(
            catalog=location,
            collections=query["collections"],
            bbox=query.get("bbox"),
            intersects=query.get("intersects"),
            datetime=query.get("datetime"),
            max_cloud_cover=query.get("max_cloud_cover"),
            max_items=query.get("max_items"),
            page_size=q.page_size,
            retries=q.retries,
            timeout=q.timeout,
        )
    except DataError as err:
        if "found no items" not in str(err):  # the API failed: not an answer about the items
            raise
        items = []  # every locked item is gone: lock_drift names them
    current = resolve_lock(
        items, query, catalog=location, strict=False, retries=q.retries, timeout=q.timeout
    )
    drift = lock_drift(locked, current)
    if drift:
        lines = "\n".join(f"  - {d}" for d in drift)
        raise DataError(
            f"{lock_path}: the catalog {location} no longer gives what the lock recorded "
            f"({len(drift)} difference(s)):\n{lines}\nThe tile cache and everything after it "
            "were built from the locked state. To build from the catalog as it is now, run "
            "`geogfm stac_query` again (or `dvc repro` / `snakemake`), which rewrites the lock; "
            "to keep the locked state, restore the catalog (e.g. `dvc pull data/demo`)."
        )
    summary = {
        "items": len(current["items"]),
        "assets": sum(len(i["assets"]) for i in current["items"]),
        "catalog": location,
        "drift": 0,
    }
    log.info("stac_query --check: %s matches the catalog: %s", lock_path, summary)
    return summary
