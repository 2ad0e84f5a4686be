"""Lineage: which code a stage runs, and what a checkpoint was trained on.

:func:`stage_code` is the static import closure of ``geogfm <stage>``: the Snakefile makes these
files rule inputs and ``dvc.yaml`` lists them as stage deps, so that editing code a stage runs
reruns that stage, and only that stage and what follows it.

:func:`checkpoint_lineage` records, for a checkpoint's ``meta.json``, content hashes of everything
it was trained on (the STAC lock, each tile-cache cell, the manifest, the statistics, the params),
the git commit and the package versions; :mod:`geogfm.core.verify` recomputes and compares them.
This module imports nothing heavy: the Snakefile imports it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geogfm.core.io import sha256_file

if TYPE_CHECKING:
    from geogfm.core.config import GeoGFMConfig

__all__ = [
    "LINEAGE_SECTIONS",
    "checkpoint_lineage",
    "git_state",
    "package_versions",
    "params_record",
    "stage_code",
    "tree_sha256",
]


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def stage_code(stage: str, root: str | Path = ".") -> list[str]:
    """The geogfm source files ``geogfm <stage>`` imports, directly or not, CLI included.

    Args:
        stage: a stage name, e.g. ``"tile_cache"``.
        root: the project root (the folder holding ``geogfm/``).

    Returns:
        Sorted paths relative to ``root``, parent packages' ``__init__.py`` included.
    """
    root = Path(root)
    todo, seen = ["geogfm.cli", f"geogfm.stages.{stage}"], set()
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geogfm"):
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("geogfm")]
    return sorted(str(p.relative_to(root)) for p in seen)


# ------------------------------------------------------------------------ checkpoint lineage

#: The params.yaml sections a checkpoint depends on: pretraining's and every stage before it.
LINEAGE_SECTIONS = (
    "demo_catalog",
    "stac_query",
    "tile_cache",
    "patch_manifest",
    "channel_stats",
    "model",
    "data",
    "train",
)

#: Packages whose versions a checkpoint records (those that shape its data and its weights).
PACKAGES = (
    "geogfm",
    "torch",
    "numpy",
    "zarr",
    "xarray",
    "rasterio",
    "odc-stac",
    "pystac",
    "pystac-client",
    "pyarrow",
    "pandas",
    "pydantic",
)


def tree_sha256(path: str | Path) -> str:
    """SHA-256 of a directory (a Zarr store): its files' sorted relative paths and their bytes.

    Independent of where the directory is, of file times and of the order the file system lists
    files in; a renamed, added, removed or changed file changes it.

    Raises:
        FileNotFoundError: if ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory")
    h = hashlib.sha256()
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    for rel, p in files:
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _file_record(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {"path": None, "sha256": None}
    path = Path(path)
    return {"path": str(path), "sha256": sha256_file(path) if path.is_file() else None}


def _cache_record(cache: str | Path) -> dict[str, Any]:
    cache = Path(cache)
    if not cache.is_dir():
        raise FileNotFoundError(f"tile cache {str(cache)!r} not found; run `geogfm tile_cache`")
    index = cache / "index.json"
    stores = sorted(cache.glob("*.zarr"))
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
        hashes = list(pool.map(tree_sha256, stores))
    return {
        "path": str(cache),
        "index_sha256": sha256_file(index) if index.is_file() else None,
        "cells": dict(zip((p.stem for p in stores), hashes, strict=True)),
    }


def _section_sha256(section: Any) -> str:
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()


def params_record(cfg: GeoGFMConfig, path: str | Path | None = "params.yaml") -> dict[str, Any]:
    """The params a checkpoint depends on: the file's sha256 and a hash per lineage section.

    The section hashes are of the validated values (``cfg``), so a comment or a reordering in
    ``params.yaml`` changes the file hash but not them.
    """
    dumped = cfg.model_dump(mode="json")
    return {
        **_file_record(path),
        "sections": {s: _section_sha256(dumped[s]) for s in LINEAGE_SECTIONS if s in dumped},
    }


def git_state(root: str | Path = ".") -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git work tree at ``root``; ``None`` outside one.

    ``dirty`` is true when tracked files differ from the commit or untracked files that git does
    not ignore exist: then the commit alone does not describe the code.
    """
    git = shutil.which("git")
    if git is None:
        return None
    try:
        commit = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [git, "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (subprocess.CalledProcessError, OSError):
        return None  # not a git repository, or one without a commit yet
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    """Versions of Python and of :data:`PACKAGES` (``None`` for one not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def checkpoint_lineage(
    cfg: GeoGFMConfig,
    *,
    cache: str | Path,
    manifest: str | Path,
    stats: str | Path,
    lock: str | Path | None = None,
    params: str | Path | None = "params.yaml",
    root: str | Path = ".",
) -> dict[str, Any]:
    """What a checkpoint was trained on: content hashes of its inputs, the code and the params.

    Args:
        cfg: the configuration the checkpoint was trained with.
        cache: the tile cache folder: ``index.json`` and each ``<cell>.zarr`` are hashed
            (:func:`tree_sha256`).
        manifest: the patch manifest.
        stats: the channel statistics.
        lock: the STAC lock; default ``lock.json`` in the ``stac`` folder beside the cache (the
            DAG's layout: ``data/cache`` and ``data/stac``).
        params: the params file (its hash is recorded with a hash per section of ``cfg``).
        root: the project root, for the git commit.

    Returns:
        ``{"stac_lock": {"path", "sha256"}, "cache": {"path", "index_sha256", "cells": {id:
        sha256}}, "stats", "manifest", "params": {"path", "sha256", "sections"}, "git": {"commit",
        "dirty"} | None, "versions"}``; a file that does not exist has ``"sha256": None``.

    Raises:
        FileNotFoundError: if the cache folder does not exist.
    """
    if lock is None:
        lock = Path(cache).parent / "stac" / "lock.json"
    return {
        "stac_lock": _file_record(lock),
        "cache": _cache_record(cache),
        "stats": _file_record(stats),
        "manifest": _file_record(manifest),
        "params": params_record(cfg, params),
        "git": git_state(root),
        "versions": package_versions(),
    }
