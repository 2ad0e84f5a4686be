"""Searching a STAC API with pystac-client: conformance checks, retries and clear errors.

Used by :func:`geogfm.data.stac.search_items`, which gives a STAC API and a local static catalog one
set of semantics. Here: the cloud-cover filter goes out as a CQL2 JSON ``filter`` where the API
conforms to the filter extension, else through the query extension, and is refused if the API
offers neither (servers silently ignore parameters they do not know, and would return cloudy
scenes); collection ids are checked against the API's collections; every request is retried with
exponential backoff on 5xx, 429, timeouts and refused connections, then fails with a
:class:`~geogfm.core.errors.DataError` that says what failed and what to change.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pystac
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from geogfm.core.errors import DataError

__all__ = ["RETRY_STATUS", "http_retry", "search_api"]

log = logging.getLogger(__name__)

#: HTTP statuses retried with backoff (then an error).
RETRY_STATUS = (429, 500, 502, 503, 504)


def http_retry(retries: int, backoff: float) -> Retry:
    """The retry policy of geogfm's HTTP requests: 5xx, 429, timeouts and refused connections.

    Before the n-th retry (n >= 2) it waits ``backoff * 2 ** (n - 1)`` seconds (urllib3's schedule,
    capped at 120 s), or what a ``Retry-After`` header says. POST searches are retried too: a
    search is read-only. After the last retry the last response is returned (not raised), so that
    the caller can name its status.

    Args:
        retries: how many times a failed request is retried.
        backoff: urllib3's ``backoff_factor``, seconds.
    """
    return Retry(
        total=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,
        raise_on_status=False,
    )


@dataclass(frozen=True)
class _Api:
    url: str
    io: StacApiIO
    timeout: float
    retries: str  # how requests are retried, for error messages


def _failure(api: _Api, err: Exception, doing: str) -> DataError:
    """A clear error for a request that failed after the retries."""
    status = getattr(err, "status_code", None)
    detail = " ".join(str(err).split())[:300]
    if status is None:
        return DataError(
            f"STAC API {api.url} did not answer {doing} ({api.retries}): {detail}; check that "
            "the server is up and that stac_query.catalog is its root URL, or raise "
            "stac_query.retries / stac_query.timeout"
        )
    if status in RETRY_STATUS:
        return DataError(
            f"STAC API {api.url} kept failing {doing}: HTTP {status} ({api.retries}): {detail}; "
            "try again later or raise stac_query.retries"
        )
    return DataError(
        f"STAC API {api.url} answered HTTP {status} {doing}: {detail}; check stac_query "
        f"(collections, bbox, datetime) and that {api.url} is a STAC API root"
    )


#: The conformance classes geogfm relies on.
_USED = (
    ConformanceClasses.ITEM_SEARCH,
    ConformanceClasses.FILTER,
    ConformanceClasses.QUERY,
    ConformanceClasses.SORT,
    ConformanceClasses.COLLECTIONS,
    ConformanceClasses.FEATURES,
)


def _accept_newer_conformance(client: Client) -> None:
    """Count ``v1.x`` conformance URIs too: pystac-client 0.9 only recognises ``v1.0.x``.

    stac-fastapi 6+ declares e.g. ``https://api.stacspec.org/v1.1.0/item-search#sort``; without
    this, sorting would be skipped (and pystac-client would warn that the API does not sort).
    """
    declared = client.get_conforms_to()
    for cls in _USED:
        newer = re.compile(rf"https://api\.stacspec\.org/v1\.\d+\.\d+[^/]*{re.escape(cls.value)}")
        if not client.conforms_to(cls) and any(newer.fullmatch(uri) for uri in declared):
            log.debug("%s declares %s in a newer STAC API version: accepted", client.self_href, cls)
            client.add_conforms_to(cls.name)


def _open_client(api: _Api) -> Client:
    try:
        # the timeout again: Client.open resets that of the StacApiIO it is given
        client = Client.open(api.url, stac_io=api.io, timeout=api.timeout)
        _accept_newer_conformance(client)
        return client
    except APIError as err:
        raise _failure(api, err, "for its landing page") from None
    except (ValueError, KeyError, TypeError, pystac.STACError) as err:
        raise DataError(
            f"{api.url} did not return a STAC API landing page ({type(err).__name__}: {err}); set "
            "stac_query.catalog to the root URL of a STAC API"
        ) from None


def _check_collections(api: _Api, client: Client, collections: Sequence[str]) -> None:
    """Refuse collection ids the API does not have (a search would just find nothing)."""
    if not (
        client.conforms_to(ConformanceClasses.COLLECTIONS)
        or client.conforms_to(ConformanceClasses.FEATURES)
    ):
        log.info("%s does not list its collections: collection ids not checked", api.url)
        return
    try:
        missing = [c for c in collections if client.get_collection(c) is None]
        if not missing:
            return
        available = sorted(c.id for c in client.get_collections())
    except APIError as err:
        raise _failure(api, err, "about its collections") from None
    shown = f"{available[:30]}{' ...' if len(available) > 30 else ''}"
    raise DataError(
        f"collection(s) {missing} not in the STAC API {api.url}; it has {shown}: fix "
        "stac_query.collections"
    )


def _search_args(
    client: Client,
    *,
    collections: Sequence[str],
    bbox: Sequence[float] | None,
    intersects: dict[str, Any] | None,
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
        "intersects": intersects,
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


def search_api(
    url: str,
    *,
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
) -> tuple[bool, Iterator[pystac.Item]]:
    """Open a STAC API, check the query against what it offers, and start the search.

    The landing page, the conformance and the collections are checked here; the items are then
    fetched page by page (``page_size`` per request) as the iterator is consumed.

    Args:
        url: the API root.
        collections: collection ids; each must exist where the API lists its collections.
        bbox: ``[west, south, east, north]`` in degrees (already checked).
        intersects: a GeoJSON geometry (already checked).
        datetime: the ``datetime`` parameter, as pystac-client takes it.
        max_cloud_cover: ``eo:cloud_cover <=`` this, applied by the server.
        max_items: asks the API to sort by ascending datetime, if it can.
        page_size: items per page (the ``limit`` parameter).
        retries: retries of a failed request.
        backoff: the backoff factor between retries, seconds.
        timeout: seconds to wait for a response (connect and read).

    Returns:
        ``(sorted, items)``: whether the API returns items by ascending datetime, and the items.

    Raises:
        DataError: if the API fails or does not answer after the retries (also while iterating),
            is not a STAC API with item search, lacks a collection, or cannot filter cloud cover.
    """
    io = StacApiIO(max_retries=http_retry(retries, backoff), timeout=timeout)
    api = _Api(url, io, timeout, f"{retries} retries with backoff, {timeout:g} s timeout")
    client = _open_client(api)
    kw = _search_args(
        client,
        collections=collections,
        bbox=bbox,
        intersects=intersects,
        datetime=datetime,
        max_cloud_cover=max_cloud_cover,
        max_items=max_items,
        page_size=page_size,
    )
    _check_collections(api, client, collections)
    log.info("searching %s: %s", url, {k: v for k, v in kw.items() if v is not None})

    def pages() -> Iterator[pystac.Item]:
        try:
            yield from client.search(**kw).items()
        except APIError as err:
            raise _failure(api, err, "to the search") from None

    return "sortby" in kw, pages()
