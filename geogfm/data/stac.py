"""STAC search, one set of semantics for a STAC API and a local static catalog.

:func:`search_items` sends a search to a STAC API (through :mod:`geogfm.data.stac_api`:
pystac-client, conformance checks, retries), or walks a local ``catalog.json`` with pystac, and
applies the same rules: collections (an unknown one is an error), ``bbox`` or ``intersects`` (a
GeoJSON geometry) intersecting the item geometry, a ``datetime`` interval (open ends; a date-only
bound covers its whole day), ``eo:cloud_cover <= max_cloud_cover`` (applied by the server for an
API) and ``max_items`` after sorting by ``(datetime, id)``. Either way the result is sorted by
``(datetime, id)`` with absolute asset hrefs, and an empty result is an error that repeats the
query. Every argument is checked before the first request. The lock file of a search is written by
:mod:`geogfm.data.stac_lock`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
import shapely
from pystac.utils import str_to_datetime

from geogfm.core.errors import DataError
from geogfm.data.stac_api import search_api

__all__ = [
    "StacQuery",
    "check_bbox",
    "collection_bbox",
    "is_url",
    "item_datetime",
    "parse_datetime_interval",
    "search_items",
]

log = logging.getLogger(__name__)

_PARTIAL_DATE = re.compile(r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2}))?)?$")


def is_url(catalog: str | Path) -> bool:
    """Whether ``catalog`` is an http(s) URL (a STAC API) rather than a local path."""
    return isinstance(catalog, str) and catalog.lower().startswith(("http://", "https://"))


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


# ------------------------------------------------------------------------------- query validation


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
        ValueError: naming the value if it cannot be parsed, if both ends are open or if it starts
            after it ends.
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
        raise ValueError(
            f"datetime {value!r} starts after it ends; write the interval as 'start/end' "
            f"(did you mean '{parts[1]}/{parts[0]}'?)"
        )
    return start, end


def check_bbox(bbox: Sequence[float]) -> list[float]:
    """Validate a search ``bbox`` ``[west, south, east, north]`` in degrees.

    Returns:
        The bbox as a list of floats.

    Raises:
        ValueError: naming the bbox if it does not have four finite numbers in range, if it is
            inverted (south above north) or crosses the antimeridian (west above east).
    """
    values = list(bbox)
    if len(values) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise ValueError(f"bbox {values} is not four finite numbers [west, south, east, north]")
    w, s, e, n = (float(v) for v in values)
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise ValueError(
            f"bbox {values} is out of range: [west, south, east, north] in degrees, longitudes "
            "within [-180, 180] and latitudes within [-90, 90]"
        )
    if s > n or w > e:
        raise ValueError(
            f"bbox {values} is inverted ({'south > north' if s > n else 'west > east'}); write it "
            "as [west, south, east, north] (an area across the antimeridian: search each side)"
        )
    return [w, s, e, n]


def _check_intersects(geometry: dict[str, Any]) -> shapely.Geometry:
    try:
        shape = shapely.geometry.shape(geometry)
    except Exception as err:  # shapely raises several types for bad GeoJSON
        raise ValueError(f"intersects {geometry!r} is not a GeoJSON geometry: {err}") from None
    if shape.is_empty or not shape.is_valid:
        raise ValueError(f"intersects {geometry!r} is an empty or invalid geometry")
    return shape


@dataclass(frozen=True)
class StacQuery:
    """One search: where, what, and how the API is asked (see :func:`search_items`)."""

    catalog: str
    collections: tuple[str, ...]
    bbox: tuple[float, ...] | None = None
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    max_cloud_cover: float | None = None
    max_items: int | None = None

    def __str__(self) -> str:
        area = f"bbox={list(self.bbox)}" if self.bbox is not None else "bbox=None"
        if self.intersects is not None:
            area = f"intersects={self.intersects.get('type')} geometry"
        return (
            f"catalog={self.catalog!r} collections={list(self.collections)} {area} "
            f"datetime={self.datetime!r} max_cloud_cover={self.max_cloud_cover} "
            f"max_items={self.max_items}"
        )


# ------------------------------------------------------------------------------------------- search


def search_items(
    *,
    catalog: str | Path,
    collections: Sequence[str],
    bbox: Sequence[float] | None = None,
    intersects: dict[str, Any] | None = None,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    max_items: int | None = None,
    page_size: int = 100,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 60.0,
) -> list[pystac.Item]:
    """Search a STAC API or a local static catalog.

    Every argument is checked before the first request.

    Args:
        catalog: an http(s) STAC API URL, or the path of a local ``catalog.json`` (or its folder).
        collections: collection ids to search; each must exist.
        bbox: ``[west, south, east, north]`` in degrees; items whose geometry intersects it.
        intersects: a GeoJSON geometry (lon/lat); items whose geometry intersects it. Not with
            ``bbox``.
        datetime: a single time, date or interval (``"2021-06-01/2021-09-30"``, ``"../2022"``).
        max_cloud_cover: keep items with ``eo:cloud_cover <= max_cloud_cover`` (percent); items
            without ``eo:cloud_cover`` are dropped when it is set.
        max_items: keep the first ``max_items`` items in ``(datetime, id)`` order.
        page_size: items per page requested from an API (its ``limit``).
        retries: retries of a failed API request (5xx, 429, timeout, refused connection).
        backoff: the urllib3 backoff factor between retries, seconds.
        timeout: seconds to wait for an API response (connect and read).

    Returns:
        The matching items sorted by ``(datetime, id)``, with absolute asset hrefs.

    Raises:
        DataError: if nothing matches (the message repeats the query), if a collection does not
            exist, if an API cannot apply the cloud-cover filter, or if it fails or does not
            answer after the retries.
        FileNotFoundError: if a local catalog does not exist.
        ValueError: if an argument is malformed (bbox, intersects, datetime, collections).
    """
    if not collections:
        raise ValueError("collections is empty; name at least one collection, e.g. sentinel-2-l2a")
    if bbox is not None and intersects is not None:
        raise ValueError("give bbox or intersects, not both (stac_query.bbox / .intersects)")
    if bbox is not None:
        bbox = check_bbox(bbox)
    area = _check_intersects(intersects) if intersects is not None else None
    if datetime is not None:
        parse_datetime_interval(datetime)  # fail early, identically for both back ends
    query = StacQuery(
        catalog=str(catalog),
        collections=tuple(collections),
        bbox=tuple(bbox) if bbox is not None else None,
        intersects=intersects,
        datetime=datetime,
        max_cloud_cover=max_cloud_cover,
        max_items=max_items,
    )
    if is_url(catalog):
        items = _search_api(
            query, page_size=page_size, retries=retries, backoff=backoff, timeout=timeout
        )
    else:
        items = _search_static(Path(catalog), query, area)
    items = sorted(items, key=_sort_key)
    if max_items is not None:
        items = items[:max_items]
    if not items:
        raise DataError(
            f"the STAC search found no items for {query}; widen bbox or datetime, raise "
            "max_cloud_cover, or check the collection ids (stac_query in params.yaml)"
        )
    log.info("found %d item(s) in %s", len(items), catalog)
    return items


def _search_api(query: StacQuery, *, page_size: int, **http: Any) -> list[pystac.Item]:
    by_time, found = search_api(
        query.catalog,
        collections=query.collections,
        bbox=query.bbox,
        intersects=query.intersects,
        datetime=query.datetime,
        max_cloud_cover=query.max_cloud_cover,
        max_items=query.max_items,
        page_size=page_size,
        **http,
    )
    cutoff = query.max_items if by_time else None
    if query.max_items is not None and cutoff is None:
        log.warning(
            "%s cannot sort: fetching all matches to keep the first %d",
            query.catalog,
            query.max_items,
        )
    items: list[pystac.Item] = []
    for item in found:
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


# -------------------------------------------------------------------------------- static catalog


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
    path: Path, query: StacQuery, area: shapely.Geometry | None
) -> list[pystac.Item]:
    path, root = _open_static(path)
    available = _collections_of(root)
    missing = [c for c in query.collections if c not in available]
    if missing:
        raise DataError(
            f"collection(s) {missing} not in {path}; it has {sorted(available)}: "
            "fix stac_query.collections"
        )
    if query.bbox is not None:
        area = shapely.box(*query.bbox)
    dt_range = parse_datetime_interval(query.datetime) if query.datetime else (None, None)
    items: list[pystac.Item] = []
    for cid in query.collections:
        for item in available[cid].get_items(recursive=True):
            if area is not None and not _intersects(item, area):
                continue
            if dt_range != (None, None) and not _in_interval(item, *dt_range):
                continue
            if query.max_cloud_cover is not None:
                cc = item.properties.get("eo:cloud_cover")
                if cc is None or not cc <= query.max_cloud_cover:
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
