"""A real STAC API on loopback: stac-fastapi-pgstac on PostgreSQL/PostGIS, assets served by nginx.

:func:`running_stac_server` starts, in a scratch folder,

- PostgreSQL (``initdb``, then ``postgres`` in the foreground; as the ``postgres`` user when the
  tests run as root, since PostgreSQL refuses root), with pgstac migrated into a ``stac`` database
  and a static catalog loaded into it (asset hrefs rewritten to the nginx URL);
- nginx serving the catalog folder over HTTP (with Range requests, which GDAL needs for windowed
  reads; Python's ``http.server`` has none);
- uvicorn running ``stac_fastapi.pgstac`` (item-search, filter, query, sort, paging),

and stops all three by their PIDs on exit. The server tools live outside the project venv: the
apt packages ``postgresql-15-postgis-3`` and ``nginx``, and a separate venv (``.venv-stac-server``,
or ``$GEOGFM_STAC_SERVER_VENV``) with ``stac-fastapi-pgstac``, ``pypgstac[psycopg]`` and
``uvicorn``; ``.ci/run`` installs them. See ../shared/notes/stac-api-server.md.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pystac
import pytest

ROOT = Path(__file__).resolve().parents[1]

INSTALL_HINT = (
    "the STAC API integration tests need PostgreSQL 15 with PostGIS, nginx and a server venv; "
    "install them with\n"
    "  apt-get update && apt-get install -y --no-install-recommends postgresql-15-postgis-3 nginx\n"
    "  python3 -m venv .venv-stac-server && .venv-stac-server/bin/pip install "
    "stac-fastapi-pgstac==7.2.0 'pypgstac[psycopg]==0.10.0' uvicorn==0.54.0\n"
    "(or point GEOGFM_STAC_SERVER_VENV at such a venv; .ci/run does all this). "
    "Set GEOGFM_SKIP_STAC_SERVER=1 to skip these tests deliberately."
)


@dataclass(frozen=True)
class ServerTools:
    pg_bin: Path  # initdb, postgres, pg_isready, createdb, psql
    nginx: Path
    venv: Path  # bin/uvicorn, bin/pypgstac


@dataclass(frozen=True)
class StacServer:
    """A running server: the API root, the asset root and the catalog it serves."""

    api: str  # http://127.0.0.1:<port>
    assets: str  # http://127.0.0.1:<port>, the catalog folder
    catalog_dir: Path
    logs: Path  # api.log, nginx-access.log, postgres.log, pgstac.log
    seconds_to_start: float

    def asset_url(self, local: str | Path) -> str:
        """The URL nginx serves a file of the catalog folder at."""
        rel = Path(local).resolve().relative_to(self.catalog_dir.resolve())
        return f"{self.assets}/{rel.as_posix()}"


def find_tools() -> tuple[ServerTools | None, list[str]]:
    """The server tools, or ``None`` and what is missing."""
    missing = []
    pg_bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    pg_bin = Path(os.environ.get("GEOGFM_PG_BIN", pg_bins[0] if pg_bins else "/nonexistent"))
    if not (pg_bin / "initdb").is_file():
        missing.append(f"PostgreSQL server binaries (initdb in {pg_bin})")
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: it runs as "postgres"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("the postgres system user (made by the postgresql package)")
    version = pg_bin.parent.name  # /usr/lib/postgresql/<version>/bin
    if not Path(f"/usr/share/postgresql/{version}/extension/postgis.control").is_file():
        missing.append(f"PostGIS for PostgreSQL {version} (postgresql-{version}-postgis-3)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).is_file():
        missing.append("nginx")
    venv = Path(os.environ.get("GEOGFM_STAC_SERVER_VENV", ROOT / ".venv-stac-server"))
    for exe in ("uvicorn", "pypgstac"):
        if not (venv / "bin" / exe).is_file():
            missing.append(f"{venv}/bin/{exe}")
    if missing:
        return None, missing
    return ServerTools(pg_bin=pg_bin, nginx=Path(nginx), venv=venv), []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    if not path.is_file():
        return f"({path} not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _run(cmd: list, log: Path, **kw) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        out.flush()
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=120, **kw)
    if res.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}):\n{_tail(log)}")


def _wait(ready, what: str, log: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout} s:\n{_tail(log)}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen, sig: int, what: str) -> None:
    """Stop one process we started, by its PID; kill it if it does not stop in 15 s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        raise RuntimeError(f"{what} (pid {proc.pid}) ignored signal {sig}; killed") from None


# ------------------------------------------------------------------------------------- the catalog


def _ndjson_for_pgstac(catalog_dir: Path, assets_url: str, out: Path) -> tuple[Path, Path]:
    """The catalog's collections and items as pgstac input, asset hrefs mapped to ``assets_url``."""
    root = pystac.read_file(str((catalog_dir / "catalog.json").resolve()))
    base = catalog_dir.resolve()
    collections, items = [], []
    for coll in root.get_all_collections():
        d = coll.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []
        collections.append(d)
        for item in coll.get_items(recursive=True):
            item = item.clone()
            for asset in item.assets.values():
                rel = Path(asset.get_absolute_href()).resolve().relative_to(base)
                asset.href = f"{assets_url}/{rel.as_posix()}"
            d = item.to_dict(include_self_link=False, transform_hrefs=False)
            d["links"], d["collection"] = [], coll.id
            items.append(d)
    paths = out / "collections.ndjson", out / "items.ndjson"
    for path, records in zip(paths, (collections, items), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths


# ------------------------------------------------------------------------------------------ servers


def _postgres(tools: ServerTools, stack: contextlib.ExitStack, log: Path) -> tuple[int, Path]:
    """initdb + postgres in the foreground on a free port; returns the port and the data dir."""
    as_root = os.geteuid() == 0
    # a folder of its own under /tmp: the postgres user cannot enter pytest's 0700 tmp folders
    pgdir = Path(tempfile.mkdtemp(prefix="geogfm-pg-"))
    stack.callback(shutil.rmtree, pgdir, ignore_errors=True)
    user = {}
    if as_root:
        pw = pwd.getpwnam("postgres")
        os.chown(pgdir, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, sock = pgdir / "data", pgdir / "sock"
    _run(
        [tools.pg_bin / "initdb", "-D", data, "-A", "trust", "-U", "postgres"],
        log,
        cwd=pgdir,
        **user,
    )
    sock.mkdir()
    if as_root:
        os.chown(sock, user["user"], user["group"])
    port = _free_port()
    opts = ["listen_addresses=127.0.0.1", f"port={port}", f"unix_socket_directories={sock}"]
    opts += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    cmd = [tools.pg_bin / "postgres", "-D", data, *[a for o in opts for a in ("-c", o)]]
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=pgdir, **user)
    stack.callback(_stop, proc, signal.SIGINT, "postgres")  # SIGINT: fast shutdown
    ready = [tools.pg_bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]
    _wait(lambda: subprocess.run(ready).returncode == 0, "postgres", log, proc)
    return port, pgdir


def _load_pgstac(tools: ServerTools, port: int, catalog_dir: Path, assets: str, work: Path) -> None:
    log = work / "pgstac.log"
    dsn = f"postgresql://postgres@127.0.0.1:{port}/stac"
    _run(
        [tools.pg_bin / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "stac"],
        log,
    )
    pypgstac = tools.venv / "bin" / "pypgstac"
    _run([pypgstac, "migrate", "--dsn", dsn], log)
    # numberMatched in search responses
    sql = "INSERT INTO pgstac.pgstac_settings (name, value) VALUES ('context', 'on') "
    sql += "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;"
    _run([tools.pg_bin / "psql", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql], log)
    collections, items = _ndjson_for_pgstac(catalog_dir, assets, work)
    _run([pypgstac, "load", "collections", collections, "--dsn", dsn, "--method", "upsert"], log)
    _run([pypgstac, "load", "items", items, "--dsn", dsn, "--method", "upsert"], log)


_NGINX_CONF = """\
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    types {{ image/tiff tif; application/json json; }}
    default_type application/octet-stream;
    access_log {work}/nginx-access.log;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _nginx(tools: ServerTools, catalog_dir: Path, work: Path, stack: contextlib.ExitStack) -> str:
    port = _free_port()
    (work / "nginx-tmp").mkdir()
    conf = work / "nginx.conf"
    # as root the workers would run as nobody, who cannot read pytest's 0700 tmp folders
    user = "user root;\n" if os.geteuid() == 0 else ""
    root = catalog_dir.resolve()
    conf.write_text(_NGINX_CONF.format(user=user, work=work, port=port, root=root))
    log = work / "nginx.log"
    cmd = [tools.nginx, "-c", conf, "-e", work / "nginx-error.log", "-g", "daemon off;"]
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work)
    stack.callback(_stop, proc, signal.SIGQUIT, "nginx")  # SIGQUIT: graceful shutdown
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _http_ok(f"{url}/catalog.json"), "nginx", work / "nginx-error.log", proc)
    return url


def _api(tools: ServerTools, pg_port: int, work: Path, stack: contextlib.ExitStack) -> str:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES"))}
    env |= {"PGUSER": "postgres", "PGPASSWORD": "unused", "PGHOST": "127.0.0.1"}
    env |= {"PGPORT": str(pg_port), "PGDATABASE": "stac", "PYTHONUNBUFFERED": "1"}
    cmd = [tools.venv / "bin" / "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log = work / "api.log"
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
    stack.callback(_stop, proc, signal.SIGTERM, "uvicorn")
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _http_ok(f"{url}/"), "stac-fastapi-pgstac", log, proc)
    return url


@contextlib.contextmanager
def running_stac_server(tools: ServerTools, catalog_dir: Path, work: Path) -> Iterator[StacServer]:
    """Serve the static catalog in ``catalog_dir`` through a real STAC API; stop it on exit.

    Args:
        tools: where the server programs are (:func:`find_tools`).
        catalog_dir: a folder holding ``catalog.json`` and the asset files it points to.
        work: a scratch folder for configuration and logs.
    """
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        pg_port, pgdir = _postgres(tools, stack, work / "postgres.log")
        assets = _nginx(tools, catalog_dir, work, stack)
        _load_pgstac(tools, pg_port, catalog_dir, assets, work)
        api = _api(tools, pg_port, work, stack)
        yield StacServer(
            api=api,
            assets=assets,
            catalog_dir=catalog_dir,
            logs=work,
            seconds_to_start=time.monotonic() - t0,
        )


# ------------------------------------------------------------------------------------- the fixture

#: The served demo catalog: tiny tiles, five dates (more items than the tests' page size of 2).
DEMO_CATALOG = {
    "seed": 3,
    "size": 64,
    "dates": ["2021-08-14", "2021-11-02", "2022-02-20", "2022-05-11", "2022-07-30"],
}


@pytest.fixture(scope="session", name="stac_server")
def stac_server_fixture(tmp_path_factory) -> Iterator[StacServer]:
    """The demo catalog behind a real STAC API on loopback, for the whole session.

    Fails (does not skip) when the server tools are missing, unless GEOGFM_SKIP_STAC_SERVER=1.
    """
    if os.environ.get("GEOGFM_SKIP_STAC_SERVER") == "1":
        pytest.skip("GEOGFM_SKIP_STAC_SERVER=1: STAC API server tests skipped on request")
    tools, missing = find_tools()
    if tools is None:
        pytest.fail(f"missing {'; '.join(missing)}.\n{INSTALL_HINT}", pytrace=False)
    from geogfm.core.config import config_from_dict
    from geogfm.stages import demo_catalog

    catalog_dir = tmp_path_factory.mktemp("served") / "demo"
    demo_catalog.run(config_from_dict({"demo_catalog": DEMO_CATALOG}), out=catalog_dir)
    with running_stac_server(tools, catalog_dir, tmp_path_factory.mktemp("stac-server")) as srv:
        yield srv
