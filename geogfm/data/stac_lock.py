"""The lock file of a STAC search: what was asked, and exactly what was found.

:func:`write_lock` records the query, the catalog, and per item its id, collection, datetime,
processing baseline and assets: every href with its size and checksum where they can be known
(sha256 of a local file; ``Content-Length`` and ``ETag`` of an http(s) asset from a ``HEAD``
request). A local asset that does not exist, or an http asset that answers 404/410 or does not
answer after the retries, stops the lock with an error naming the asset: the tile cache would fail
on it later.

:func:`resolve_lock` builds the same record without writing it, and :func:`lock_drift` compares a
lock with the record of the same query made again: items that disappeared or appeared, assets whose
size, checksum, ETag or href changed or that are gone, and changed processing baselines.
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

__all__ = ["lock_drift", "resolve_lock", "write_lock"]

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


def _checked_record(
    href: str, where: str, session: requests.Session, timeout: float, strict: bool
) -> dict[str, Any]:
    try:
        return _asset_record(href, where, session, timeout)
    except DataError as err:
        if strict:
            raise
        return {"href": href, "size": None, "sha256": None, "missing": str(err)}


def resolve_lock(
    items: Sequence[pystac.Item],
    query: dict[str, Any],
    *,
    catalog: str | None = None,
    strict: bool = True,
    max_workers: int = 8,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The lock of a search, without writing it: see :func:`write_lock`.

    Args:
        items: the search result (absolute asset hrefs), in the order to record.
        query: the search parameters, recorded as given.
        catalog: where the items came from; default ``query["catalog"]``.
        strict: raise on a missing asset (``True``), or record it with a ``"missing"`` entry
            that says why (``False``, for :func:`lock_drift`).
        max_workers: parallel checksums / HEAD requests.
        retries: retries of a failed HEAD request (5xx, 429, timeout, refused connection).
        backoff: the backoff factor between retries, seconds.
        timeout: seconds to wait for a HEAD response.

    Returns:
        The lock, as :func:`write_lock` describes it.

    Raises:
        DataError: with ``strict``, if an asset is missing or does not answer.
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
        records = list(
            pool.map(lambda j: _checked_record(j[2], j[3], session, timeout, strict), jobs)
        )
    by_item: dict[str, dict[str, Any]] = {}
    for (item_id, key, _, _), rec in zip(jobs, records, strict=True):
        by_item.setdefault(item_id, {})[key] = rec
    return {
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
    lock = resolve_lock(
        items,
        query,
        catalog=catalog,
        max_workers=max_workers,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
    )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(lock, indent=2) + "\n")
    return lock


# ------------------------------------------------------------------------------------ drift


def _short(value: Any) -> str:
    """A checksum shortened for a message; other values as ``repr``."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "..."
    return repr(value)


def _asset_drift(where: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    if "missing" in new:
        return [f"{where}: gone ({new['missing']})"]
    changes = []
    # a local file may move with its catalog: its content decides; a URL is compared as such
    if _local_path(old["href"]) is None and old["href"] != new["href"]:
        changes.append(f"href {old['href']!r} -> {new['href']!r}")
    for key in ("size", "sha256", "etag"):
        before, now = old.get(key), new.get(key)
        if before is not None and before != now:
            changes.append(f"{key} {_short(before)} -> {_short(now)}")
    return [f"{where}: {', '.join(changes)}"] if changes else []


def lock_drift(locked: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What changed between a lock and the lock of the same query resolved again.

    Args:
        locked: the lock as written by :func:`write_lock`.
        current: :func:`resolve_lock` of the same query now (``strict=False``).

    Returns:
        One line per difference, naming the item (and asset): items that disappeared or appeared,
        a changed datetime or processing baseline, assets gone, added or removed, or whose size,
        sha256, ETag (or, for a URL, href) changed. Empty when nothing changed. Values the lock
        could not record (``None``) are not compared.
    """
    old = {i["id"]: i for i in locked["items"]}
    new = {i["id"]: i for i in current["items"]}
    drift = [
        f"item {iid!r}: no longer found by the query (deleted, or its metadata changed so that "
        "it no longer matches)"
        for iid in old
        if iid not in new
    ]
    drift += [
        f"item {iid!r}: new, found by the query but not in the lock"
        for iid in new
        if iid not in old
    ]
    for iid in (i for i in old if i in new):
        a, b = old[iid], new[iid]
        if a.get("processing_baseline") != b.get("processing_baseline"):
            drift.append(
                f"item {iid!r}: processing baseline {a.get('processing_baseline')!r} -> "
                f"{b.get('processing_baseline')!r} (reprocessed)"
            )
        for key in ("collection", "datetime"):
            if a.get(key) != b.get(key):
                drift.append(f"item {iid!r}: {key} {a.get(key)!r} -> {b.get(key)!r}")
        for key in sorted(a["assets"].keys() - b["assets"].keys()):
            drift.append(f"item {iid!r} asset {key!r}: removed from the item")
        for key in sorted(b["assets"].keys() - a["assets"].keys()):
            drift.append(f"item {iid!r} asset {key!r}: added to the item")
        for key in sorted(a["assets"].keys() & b["assets"].keys()):
            where = f"item {iid!r} asset {key!r}"
            drift += _asset_drift(where, a["assets"][key], b["assets"][key])
    return drift
