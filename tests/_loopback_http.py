"""Tiny real HTTP servers on loopback (``http.server`` in a thread) for failure-path tests.

- :class:`LoopbackApi`: a minimal STAC API (landing page and ``/search``, one page) whose
  conformance is chosen by the test and which can answer 503 or stall a set number of times per
  path before it serves, to exercise retries, backoff, timeouts and "server down".
- :func:`serve_directory`: a plain file server (``GET`` and ``HEAD``, no Range) for asset HEADs.

For the real STAC API server (pgstac, nginx) see ``_stac_server.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STAC = "https://api.stacspec.org/v1.0.0"
GEOJSON = "application/geo+json"
#: Conformance of an API that can search and filter.
FULL = (f"{STAC}/core", f"{STAC}/item-search", f"{STAC}/item-search#filter")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and left: expected in these tests


class LoopbackApi:
    """A STAC API on ``127.0.0.1`` serving ``features`` from ``/search``.

    Args:
        features: the Item dicts every search returns (no filtering: a test of the client).
        conforms: the landing page's ``conformsTo``.
        failures: per path, how many requests answer ``status`` before it serves.
        stalls: per path, how many requests wait ``stall_s`` seconds before answering.
    """

    def __init__(
        self,
        features: Sequence[dict[str, Any]] = (),
        *,
        conforms: Sequence[str] = FULL,
        failures: dict[str, int] | None = None,
        status: int = 503,
        stalls: dict[str, int] | None = None,
        stall_s: float = 1.0,
    ) -> None:
        self.features = list(features)
        self.conforms = list(conforms)
        self.failures = dict(failures or {})
        self.status = status
        self.stalls = dict(stalls or {})
        self.stall_s = stall_s
        # [method, path, status answered (None while stalled), JSON body, monotonic time of
        # arrival], in order of arrival
        self.requests: list[list[Any]] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LoopbackApi:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "id": "loopback",
            "description": "a loopback test API",
            "stac_version": "1.0.0",
            "conformsTo": self.conforms,
            "links": [
                {"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "search", "href": f"{self.url}/search", "type": GEOJSON, "method": "POST"},
                {"rel": "search", "href": f"{self.url}/search", "type": GEOJSON, "method": "GET"},
            ],
        }

    def _answer(self, method: str, path: str, sent: Any) -> tuple[int, dict[str, Any]]:
        record: list[Any] = [method, path, None, sent, time.monotonic()]
        with self._lock:
            self.requests.append(record)
            stall = self.stalls.get(path, 0) > 0
            if stall:
                self.stalls[path] -= 1
            fail = not stall and self.failures.get(path, 0) > 0
            if fail:
                self.failures[path] -= 1
        if stall:
            time.sleep(self.stall_s)
        if fail:
            code, body = self.status, {"code": "Unavailable", "description": "scripted failure"}
        elif path == "/":
            code, body = 200, self._landing()
        elif path == "/search":
            code, body = 200, {"type": "FeatureCollection", "features": self.features, "links": []}
        else:
            code, body = 404, {"code": "NotFound", "description": path}
        record[2] = code
        return code, body

    def count(self, method: str, path: str) -> int:
        """Requests received for ``method path``, answered or not."""
        return sum(1 for r in self.requests if (r[0], r[1]) == (method, path))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sent = json.loads(self.rfile.read(length)) if length else None
                code, body = api._answer(method, self.path.split("?")[0], sent)
                data = json.dumps(body).encode()
                with contextlib.suppress(OSError):  # the client may have timed out and gone
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve the files under ``root`` on loopback; yields the base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
