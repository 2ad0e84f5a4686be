"""STAC search, one set of semantics for a STAC API and a local static catalog; its lock file.

:func:`search_items` sends a search to a STAC API with pystac-client (the cloud-cover filter as CQL2
JSON where the API offers the filter extension, else through the query extension, with retries on
server errors), or walks a local ``catalog.json`` with pystac and applies the same rules:
collections, ``bbox`` intersects the item geometry, ``datetime`` interval (open ends, date-only
bounds cover the whole day), ``eo:cloud_cover <= max_cloud_cover`` and ``max_items`` after sorting
by ``(datetime, id)``. Either way the result is sorted by ``(datetime, id)`` with absolute asset
hrefs.

:func:`write_lock` records exactly what was found: item ids, asset hrefs with sizes and checksums
where they can be known (sha256 of local files; ``Content-Length`` and ``ETag`` of http assets),
processing baselines and the query.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pystac
import requests
import shapely
from pystac.utils import datetime_to_str, str_to_datetime
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.stac_api_io import StacApiIO
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from geogfm.core.errors import DataError
from geogfm.core.io import atomic_path, sha256_file

__all__ = [
    "collection_bbox",
    "is_url",
    "item_datetime",
    "parse_datetime_interval",
    "search_items",
    "write_lock",
]

log = logging.getLogger(__name__)

_RETRY_STATUS = (429, 500, 502, 503, 504)
_PARTIAL_DATE = re.compile(r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2}))?)?$")


def is_url(catalog: str | Path) -> bool:
    """Whether ``catalog`` is an http(s) URL (a STAC API) rather than a local path."""
    return isinstance(catalog, str) and catalog.lower().startswith(("http://", "https://"))


def _retry(retries: int = 5) -> Retry:
    # POST searches are retried too (allowed_methods=None): a search is read-only.
    return Retry(
        total=retries,
        backoff_factor=0.5,
        status_forcelist=_RETRY_STATUS,
        allowed_methods=None,
        raise_on_status=False,
    )


def item_datetime(item: pystac.Item) -> dt.datetime:
    """The item's nominal time: ``datetime``, else ``start_datetime`` (timezone-aware, UTC).

    Raises:
        DataError: if the item has neither.
    """
    t = item.datetime or item.common_metadata.start_datetime
    if t is None:
        raise DataError(f"item {item.id!r} has neither datetime nor start_datetime")
    return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _sort_key(item: pystac.Item) -> tuple[dt.datetime, str]:
    return item_datetime(item), item.id


# ----------------------------------------------------------------------------------------- datetime


def _bound(text: str, *, end: bool) -> dt.datetime | None:
    """One side of an interval; a date-only or partial date stands for its whole day/month/year."""
    if text in ("", ".."):
        return None
    try:
        t = _partial_bound(text, end=end) if _PARTIAL_DATE.match(text) else str_to_datetime(text)
    except (ValueError, OverflowError):
        raise ValueError(
            f"datetime {text!r} is not RFC 3339 (e.g. 2021-08-14T10:10:00Z), a date (2021-08-14), "
            "a month (2021-08), a year (2021) or '..'"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _partial_bound(text: str, *, end: bool) -> dt.datetime:
    m = _PARTIAL_DATE.match(text)
    assert m, text
    year, month, day = int(m["year"]), int(m["month"] or 1), int(m["day"] or 1)
    start = dt.datetime(year, month, day, tzinfo=dt.UTC)
    if not end:
        return start
    if m["day"]:
        nxt = start + dt.timedelta(days=1)
    elif m["month"]:
        nxt = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
    else:
        nxt = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    return nxt - dt.timedelta(microseconds=1)


def parse_datetime_interval(value: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Parse a STAC ``datetime`` search value into a closed UTC interval.

    Accepts what pystac-client accepts: ``"2021-08-14T10:10:00Z"``, ``"2021-08-14"``,
    ``"2021-08"``, ``"2021"``, and intervals ``"start/end"`` whose ends may be open (``".."`` or
    empty). A date-only or partial bound covers its whole day, month or year.

    Args:
        value: the ``datetime`` parameter.

    Returns:
        ``(start, end)``, both inclusive; ``None`` for an open end.

    Raises:
        ValueError: naming the value if it cannot be parsed, or if both ends are open.
    """
    parts = value.split("/")
    if len(parts) == 1:
        start, end = _bound(parts[0], end=False), _bound(parts[0], end=True)
    elif len(parts) == 2:
        start, end = _bound(parts[0], end=False), _bound(parts[1], end=True)
    else:
        raise ValueError(f"datetime {value!r} has {len(parts)} parts; expected 'start/end'")
    if start is None and end is None:
        raise ValueError(f"datetime {value!r} is open at both ends; give a start or an end")
    if start is not None and end is not None and start > end:
        raise ValueError(f"datetime {value!r} starts after it ends")
    return start, end


# ------------------------------------------------------------------------------------------- search


def _query_text(
    catalog: str | Path,
    collections: Sequence[str],
    bbox: Sequence[float] | None,
    datetime: str | None,
    max_cloud_cover: float | None,
    max_items: int | None,
) -> str:
    return (
        f"catalog={str(catalog)!r} collections={list(collections)} "
        f"bbox={list(bbox) if bbox is not None else None} datetime={datetime!r} "
        f"max_cloud_cover={max_cloud_cover} max_items={max_items}"
    )


def search_items(
    *,
    catalog: str | Path,
    collections: Sequence[str],
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    max_items: int | None = None,
    page_size: int = 100,
) -> list[pystac.Item]:
    """Search a STAC API or a local static catalog.

    Args:
        catalog: an http(s) STAC API URL, or the path of a local ``catalog.json`` (or its folder).
        collections: collection ids to search.
        bbox: ``[west, south, east, north]`` in degrees; items whose geometry intersects it.
        datetime: a single time, date or interval (``"2021-06-01/2021-09-30"``, ``"../2022"``).
        max_cloud_cover: keep items with ``eo:cloud_cover <= max_cloud_cover`` (percent); items
            without ``eo:cloud_cover`` are dropped when it is set.
        max_items: keep the first ``max_items`` items in ``(datetime, id)`` order.
        page_size: items per page requested from an API (its ``limit``).

    Returns:
        The matching items sorted by ``(datetime, id)``, with absolute asset hrefs.

    Raises:
        DataError: if nothing matches (the message repeats the query), if a collection does not
            exist in a local catalog, or if an API cannot apply the cloud-cover filter.
        FileNotFoundError: if a local catalog does not exist.
        ValueError: if ``datetime`` cannot be parsed.
    """
    if not collections:
        raise ValueError("collections is empty; name at least one collection, e.g. sentinel-2-l2a")
    if datetime is not None:
        parse_datetime_interval(datetime)  # fail early, identically for both back ends
    if is_url(catalog):
        items = _search_api(
            str(catalog),
            collections=collections,
            bbox=bbox,
            datetime=datetime,
            max_cloud_cover=max_cloud_cover,
            max_items=max_items,
            page_size=page_size,
        )
    else:
        items = _search_static(
            Path(catalog),
            collections=collections,
            bbox=bbox,
            datetime=datetime,
            max_cloud_cover=max_cloud_cover,
        )
    items = sorted(items, key=_sort_key)
    if max_items is not None:
        items = items[:max_items]
    if not items:
        query = _query_text(catalog, collections, bbox, datetime, max_cloud_cover, max_items)
        raise DataError(
            f"the STAC search found no items for {query}; widen bbox or datetime, raise "
            "max_cloud_cover, or check the collection ids (stac_query in params.yaml)"
        )
    log.info("found %d item(s) in %s", len(items), catalog)
    return items


def _api_search_args(
    client: Client,
    *,
    collections: Sequence[str],
    bbox: Sequence[float] | None,
    datetime: str | None,
    max_cloud_cover: float | None,
    max_items: int | None,
    page_size: int,
) -> dict[str, Any]:
    """Keyword arguments of ``Client.search`` for this query, chosen by the API's conformance."""
    url = client.get_self_href()
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise DataError(f"{url} does not conform to STAC API item-search; is it a STAC API root?")
    kw: dict[str, Any] = {
        "collections": list(collections),
        "bbox": list(bbox) if bbox is not None else None,
        "datetime": datetime,
        "limit": page_size,
    }
    if max_cloud_cover is not None:
        # A server without the extension silently ignores it: check conformance, prefer CQL2.
        if client.conforms_to(ConformanceClasses.FILTER):
            kw["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud_cover]}
            kw["filter_lang"] = "cql2-json"
        elif client.conforms_to(ConformanceClasses.QUERY):
            kw["query"] = {"eo:cloud_cover": {"lte": max_cloud_cover}}
        else:
            raise DataError(
                f"{url} conforms to neither the filter nor the query extension, so "
                f"max_cloud_cover={max_cloud_cover} cannot be applied; set "
                "stac_query.max_cloud_cover: null or use another STAC API"
            )
    if max_items is not None and client.conforms_to(ConformanceClasses.SORT):
        kw["sortby"] = [{"field": "properties.datetime", "direction": "asc"}]
    return kw


def _search_api(
    url: str,
    *,
    collections: Sequence[str],
    bbox: Sequence[float] | None,
    datetime: str | None,
    max_cloud_cover: float | None,
    max_items: int | None,
    page_size: int,
) -> list[pystac.Item]:
    client = Client.open(url, stac_io=StacApiIO(max_retries=_retry(), timeout=60))
    kw = _api_search_args(
        client,
        collections=collections,
        bbox=bbox,
        datetime=datetime,
        max_cloud_cover=max_cloud_cover,
        max_items=max_items,
        page_size=page_size,
    )
    if max_items is not None and "sortby" not in kw:
        log.warning("%s cannot sort: fetching all matches to keep the first %d", url, max_items)
    items: list[pystac.Item] = []
    cutoff = max_items if "sortby" in kw else None
    for item in client.search(**kw).items():
        # Sorted by time: stop after max_items, once past the last one's time (ties are kept so
        # that the (datetime, id) order decides, as for a static catalog).
        if (
            cutoff
            and len(items) >= cutoff
            and item_datetime(item) > item_datetime(items[cutoff - 1])
        ):
            break
        items.append(item)
    return items


def _collections_of(root: pystac.STACObject) -> dict[str, pystac.Collection]:
    found: dict[str, pystac.Collection] = {}
    if isinstance(root, pystac.Collection):
        found[root.id] = root
    if isinstance(root, pystac.Catalog):
        for coll in root.get_all_collections():
            found.setdefault(coll.id, coll)
    return found


def _open_static(path: Path) -> tuple[Path, pystac.STACObject]:
    if path.is_dir():
        path = path / "catalog.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"STAC catalog {str(path)!r} not found; set stac_query.catalog to a catalog.json path, "
            "an http(s) STAC API URL or 'demo' (and run the demo_catalog stage)"
        )
    return path, pystac.read_file(str(path.resolve()))


def collection_bbox(catalog: str | Path, collection: str) -> list[float]:
    """The spatial extent (first bbox) of a collection of a local static catalog.

    Args:
        catalog: the path of a local ``catalog.json`` (or its folder).
        collection: the collection id.

    Raises:
        FileNotFoundError: if the catalog does not exist.
        DataError: if it has no such collection.
    """
    path, root = _open_static(Path(catalog))
    available = _collections_of(root)
    if collection not in available:
        raise DataError(f"collection {collection!r} not in {path}; it has {sorted(available)}")
    return [float(v) for v in available[collection].extent.spatial.bboxes[0]]


def _search_static(
    path: Path,
    *,
    collections: Sequence[str],
    bbox: Sequence[float] | None,
    datetime: str | None,
    max_cloud_cover: float | None,
) -> list[pystac.Item]:
    path, root = _open_static(path)
    available = _collections_of(root)
    missing = [c for c in collections if c not in available]
    if missing:
        raise DataError(
            f"collection(s) {missing} not in {path}; it has {sorted(available)}: "
            "fix stac_query.collections"
        )
    area = shapely.box(*bbox) if bbox is not None else None
    start, end = parse_datetime_interval(datetime) if datetime is not None else (None, None)
    items: list[pystac.Item] = []
    for cid in collections:
        for item in available[cid].get_items(recursive=True):
            if area is not None and not _intersects(item, area):
                continue
            if (start or end) and not _in_interval(item, start, end):
                continue
            if max_cloud_cover is not None:
                cc = item.properties.get("eo:cloud_cover")
                if cc is None or not cc <= max_cloud_cover:
                    continue
            items.append(_detach(item))
    return items


def _intersects(item: pystac.Item, area: shapely.Geometry) -> bool:
    if item.geometry is not None:
        return shapely.geometry.shape(item.geometry).intersects(area)
    if item.bbox is None:
        return False
    b = item.bbox
    corners = (b[0], b[1], b[3], b[4]) if len(b) == 6 else tuple(b)  # 3D bbox: drop z
    return shapely.box(*corners).intersects(area)


def _in_interval(item: pystac.Item, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    cm = item.common_metadata
    t0 = item.datetime or cm.start_datetime
    t1 = item.datetime or cm.end_datetime or t0
    if t0 is None or t1 is None:
        return False
    t0, t1 = (t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (t0, t1))
    return (end is None or t0 <= end) and (start is None or t1 >= start)


def _detach(item: pystac.Item) -> pystac.Item:
    """A copy with absolute asset hrefs and without links into the catalog it came from."""
    out = item.clone()
    for asset in out.assets.values():
        asset.href = asset.get_absolute_href() or asset.href
    out.links = [ln for ln in out.links if ln.rel not in ("root", "parent", "collection", "self")]
    out.collection_id = item.collection_id
    return out


# --------------------------------------------------------------------------------------------- lock


def _local_path(href: str) -> Path | None:
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(href)
    return None


def _head(session: requests.Session, href: str) -> dict[str, Any]:
    try:
        r = session.head(href, allow_redirects=True, timeout=30)
    except requests.RequestException as err:
        log.warning("HEAD %s failed (%s): size and ETag not recorded", href, err)
        return {"size": None, "etag": None}
    if not r.ok:
        log.warning("HEAD %s returned %d: size and ETag not recorded", href, r.status_code)
        return {"size": None, "etag": None}
    length = r.headers.get("Content-Length")
    return {
        "size": int(length) if length and length.isdigit() else None,
        "etag": r.headers.get("ETag"),
    }


def _asset_record(href: str, item_id: str, key: str, session: requests.Session) -> dict[str, Any]:
    path = _local_path(href)
    if path is not None:
        if not path.is_file():
            raise DataError(
                f"asset {key!r} of item {item_id!r} points to {href!r}, which does not exist; "
                "regenerate or repair the catalog"
            )
        return {"href": href, "size": path.stat().st_size, "sha256": sha256_file(path)}
    if urlparse(href).scheme in ("http", "https"):
        return {"href": href, **_head(session, href), "sha256": None}
    return {"href": href, "size": None, "sha256": None}  # s3://, gs://, ...: not checked


def write_lock(
    items: Sequence[pystac.Item],
    query: dict[str, Any],
    path: str | Path,
    *,
    catalog: str | None = None,
    max_workers: int = 8,
) -> dict[str, Any]:
    """Write the lock file of a search: what was asked and exactly what was found.

    Args:
        items: the search result (absolute asset hrefs), in the order to record.
        query: the search parameters, recorded as given.
        path: the JSON file to write (atomically: a temporary name, then renamed).
        catalog: where the items came from (API URL or catalog path); default ``query["catalog"]``.
        max_workers: parallel checksum / HEAD requests.

    Returns:
        The lock as written: ``{"query", "catalog", "items": [{"id", "collection", "datetime",
        "processing_baseline", "assets": {key: {"href", "size", "sha256"[, "etag"]}}}]}``. Sizes and
        checksums the source cannot give are ``None``.

    Raises:
        DataError: if a local asset file does not exist.
    """
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=_retry(3))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    jobs = [(item.id, key, asset.href) for item in items for key, asset in item.assets.items()]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        records = list(pool.map(lambda j: _asset_record(j[2], j[0], j[1], session), jobs))
    by_item: dict[str, dict[str, Any]] = {}
    for (item_id, key, _), rec in zip(jobs, records, strict=True):
        by_item.setdefault(item_id, {})[key] = rec
    lock = {
        "query": query,
        "catalog": catalog if catalog is not None else query.get("catalog"),
        "items": [
            {
                "id": item.id,
                "collection": item.collection_id,
                "datetime": datetime_to_str(item_datetime(item)),
                "processing_baseline": item.properties.get("s2:processing_baseline"),
                "assets": by_item.get(item.id, {}),
            }
            for item in items
        ],
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(lock, indent=2) + "\n")
    return lock
