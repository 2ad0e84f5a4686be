"""The lock file of a STAC search: what was asked, and exactly what was found.

:func:`write_lock` records the query, the catalog, and per item its id, collection, datetime,
processing baseline and assets: every href with its size and checksum where they can be known
(sha256 of a local file; ``Content-Length`` and ``ETag`` of an http(s) asset from a ``HEAD``
request). A local asset that does not exist, or an http asset that answers 404/410 or does not
answer after the retries, stops the lock with an error naming the asset: the tile cache would fail
on it later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pystac
import requests
from pystac.utils import datetime_to_str
from requests.adapters import HTTPAdapter

from geogfm.core.errors import DataError
from geogfm.core.io import atomic_path, sha256_file
from geogfm.data.stac import item_datetime
from geogfm.data.stac_api import RETRY_STATUS, http_retry

__all__ = ["write_lock"]

log = logging.getLogger(__name__)


def _local_path(href: str) -> Path | None:
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(href)
    return None


def _head(session: requests.Session, href: str, where: str, timeout: float) -> dict[str, Any]:
    """``size`` and ``etag`` of an http(s) asset, from a HEAD request (retried by ``session``)."""
    try:
        r = session.head(href, allow_redirects=True, timeout=timeout)
    except requests.RequestException as err:
        raise DataError(
            f"{where}: {href!r} did not answer a HEAD request after the retries ({err}); check "
            "that its server is up, or raise stac_query.retries / stac_query.timeout"
        ) from None
    if r.status_code in (404, 410):
        raise DataError(
            f"{where}: {href!r} answered HTTP {r.status_code} (not found): the catalog points to "
            "a missing file; repair the catalog or search again"
        )
    if r.status_code in RETRY_STATUS:
        raise DataError(
            f"{where}: {href!r} kept answering HTTP {r.status_code} after the retries; try again "
            "later or raise stac_query.retries"
        )
    if not r.ok:  # 401/403 (signed URLs), 405 (no HEAD), ...: the asset may still be readable
        log.warning("HEAD %s returned %d: size and ETag not recorded", href, r.status_code)
        return {"size": None, "etag": None}
    length = r.headers.get("Content-Length")
    return {
        "size": int(length) if length and length.isdigit() else None,
        "etag": r.headers.get("ETag"),
    }


def _asset_record(
    href: str, where: str, session: requests.Session, timeout: float
) -> dict[str, Any]:
    path = _local_path(href)
    if path is not None:
        if not path.is_file():
            raise DataError(
                f"{where} points to {href!r}, which does not exist; regenerate or repair the "
                "catalog"
            )
        return {"href": href, "size": path.stat().st_size, "sha256": sha256_file(path)}
    if urlparse(href).scheme in ("http", "https"):
        return {"href": href, **_head(session, href, where, timeout), "sha256": None}
    return {"href": href, "size": None, "sha256": None}  # s3://, gs://, ...: not checked


def write_lock(
    items: Sequence[pystac.Item],
    query: dict[str, Any],
    path: str | Path,
    *,
    catalog: str | None = None,
    max_workers: int = 8,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Write the lock file of a search: what was asked and exactly what was found.

    Args:
        items: the search result (absolute asset hrefs), in the order to record.
        query: the search parameters, recorded as given.
        path: the JSON file to write (atomically: a temporary name, then renamed).
        catalog: where the items came from (API URL or catalog path); default ``query["catalog"]``.
        max_workers: parallel checksums / HEAD requests.
        retries: retries of a failed HEAD request (5xx, 429, timeout, refused connection).
        backoff: the backoff factor between retries, seconds.
        timeout: seconds to wait for a HEAD response.

    Returns:
        The lock as written: ``{"query", "catalog", "items": [{"id", "collection", "datetime",
        "processing_baseline", "assets": {key: {"href", "size", "sha256"[, "etag"]}}}]}``. Sizes,
        checksums and ETags the source cannot give are ``None``.

    Raises:
        DataError: if a local asset file does not exist, or an http asset is not found (404, 410)
            or does not answer after the retries. Nothing is written then.
    """
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=http_retry(retries, backoff))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    jobs = [
        (item.id, key, asset.href, f"asset {key!r} of item {item.id!r}")
        for item in items
        for key, asset in item.assets.items()
    ]
    with session, ThreadPoolExecutor(max_workers=max_workers) as pool:
        records = list(pool.map(lambda j: _asset_record(j[2], j[3], session, timeout), jobs))
    by_item: dict[str, dict[str, Any]] = {}
    for (item_id, key, _, _), rec in zip(jobs, records, strict=True):
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
