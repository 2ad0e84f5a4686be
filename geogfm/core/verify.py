"""``geogfm verify-checkpoint``: was this checkpoint trained on these files?

:func:`verify_checkpoint` recomputes the lineage a checkpoint recorded when it was trained
(:func:`geogfm.core.lineage.checkpoint_lineage`: hashes of the STAC lock, every tile-cache cell,
the manifest, the statistics and the params) from the files as they are now and lists every
mismatch; code differences (another git commit, a dirty tree, other package versions) are listed
apart, as notes. (The ``evaluate`` stage itself refuses data whose band list or statistics differ
from its checkpoint's.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geogfm.core.config import load_params
from geogfm.core.errors import DataError
from geogfm.core.lineage import checkpoint_lineage

__all__ = ["LineageReport", "read_meta", "verify_checkpoint"]


@dataclass
class LineageReport:
    """What :func:`verify_checkpoint` found."""

    checkpoint: str
    #: Inputs that differ from the checkpoint's lineage: the checkpoint was not trained on them.
    mismatches: list[str] = field(default_factory=list)
    #: Code differences (git commit, dirty tree, package versions): they do not change the data.
    notes: list[str] = field(default_factory=list)
    #: Inputs that match.
    matched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every input matches."""
        return not self.mismatches


def read_meta(checkpoint: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint: ``meta.json`` beside it, else the ``.pt`` file's entries.

    Args:
        checkpoint: a ``.pt`` file, its ``meta.json``, or the folder holding them.

    Raises:
        FileNotFoundError: if there is no such checkpoint.
        DataError: if it records no lineage.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} not found; give a checkpoint .pt file, its meta.json or "
            "its folder (results/pretrain/checkpoint.pt)"
        )
    meta_path = path / "meta.json" if path.is_dir() else path.with_name("meta.json")
    if path.suffix == ".json":
        meta_path = path
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    if "lineage" not in meta and path.is_file() and path.suffix != ".json":
        import torch  # only for a checkpoint without a meta.json that holds the lineage

        meta = torch.load(path, map_location="cpu", weights_only=True)
        meta = {k: v for k, v in meta.items() if k not in ("model", "optimizer")}
    if "lineage" not in meta:
        raise DataError(
            f"checkpoint {path} records no lineage (it was written before geogfm recorded one); "
            "train it again with `geogfm pretrain` (or `dvc repro`)"
        )
    return meta


def _short(sha: str | None) -> str:
    return "absent" if sha is None else sha[:12]


def _compare_file(name: str, old: dict, new: dict, report: LineageReport) -> None:
    what = f"{name} {new['path']}"
    if old.get("sha256") == new["sha256"]:
        report.matched.append(what)
    elif new["sha256"] is None:
        report.mismatches.append(
            f"{what}: not found (the checkpoint's was {_short(old['sha256'])})"
        )
    else:
        report.mismatches.append(
            f"{what}: sha256 {_short(new['sha256'])} differs from the checkpoint's "
            f"{_short(old.get('sha256'))}"
        )


def _compare_cache(old: dict, new: dict, report: LineageReport) -> None:
    cache = new["path"]
    if old.get("index_sha256") != new["index_sha256"]:
        report.mismatches.append(f"cache {cache}: index.json differs from the checkpoint's")
    before, now = old.get("cells", {}), new["cells"]
    for cid in sorted(before.keys() - now.keys()):
        report.mismatches.append(f"cache cell {cid}: missing from {cache}")
    for cid in sorted(now.keys() - before.keys()):
        report.mismatches.append(f"cache cell {cid}: in {cache} but not in the checkpoint's data")
    changed = [c for c in sorted(before.keys() & now.keys()) if before[c] != now[c]]
    for cid in changed:
        report.mismatches.append(
            f"cache cell {cid}: content {_short(now[cid])} differs from the checkpoint's "
            f"{_short(before[cid])}"
        )
    same = len(before.keys() & now.keys()) - len(changed)
    if same:
        report.matched.append(f"cache {cache}: {same} cell(s)")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _compare_params(meta: dict, new: dict, cfg_now: dict, report: LineageReport) -> None:
    old = meta["lineage"]["params"]
    differ = [s for s, h in new["sections"].items() if old.get("sections", {}).get(s) != h]
    if not differ:
        report.matched.append(f"params {new['path']}: sections {', '.join(new['sections'])}")
        if old.get("sha256") != new["sha256"]:
            report.notes.append(
                f"params {new['path']}: the file differs but not its values the checkpoint "
                "depends on (comments, order, or other sections)"
            )
        return
    trained = meta.get("config", {})
    for section in differ:
        a, b = _flatten(trained.get(section, {})), _flatten(cfg_now.get(section, {}))
        keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        shown = "; ".join(f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:8])
        report.mismatches.append(
            f"params {new['path']}: section {section!r} differs from the checkpoint's"
            + (f" ({shown})" if shown else "")
        )


def _compare_code(old: dict, new: dict, report: LineageReport) -> None:
    g0, g1 = old.get("git"), new["git"]
    if g0 is None or g1 is None:
        if g0 != g1:
            then = "no repository" if g0 is None else g0["commit"]
            now = "no repository" if g1 is None else g1["commit"]
            report.notes.append(f"git: {then} then, {now} now")
    else:
        if g0["commit"] != g1["commit"]:
            report.notes.append(
                f"git: trained at commit {g0['commit'][:12]}, now {g1['commit'][:12]}"
            )
        if g0["dirty"]:
            report.notes.append("git: the work tree had uncommitted changes when it was trained")
    v0, v1 = old.get("versions", {}), new["versions"]
    for name in sorted(v0.keys() | v1.keys()):
        if v0.get(name) != v1.get(name):
            report.notes.append(f"version of {name}: {v0.get(name)} then, {v1.get(name)} now")


def verify_checkpoint(
    checkpoint: str | Path,
    *,
    cache: str | Path = "data/cache",
    manifest: str | Path = "data/manifests/patches.parquet",
    stats: str | Path = "results/stats/channel_stats.json",
    lock: str | Path = "data/stac/lock.json",
    params: str | Path = "params.yaml",
    root: str | Path = ".",
) -> LineageReport:
    """Recompute a checkpoint's lineage from the given files and compare.

    Args:
        checkpoint: the ``.pt`` file, its ``meta.json`` or their folder.
        cache: the tile cache folder.
        manifest: the patch manifest.
        stats: the channel statistics.
        lock: the STAC lock.
        params: the params file (the sections the checkpoint depends on are compared, key by key).
        root: the project root, for the git commit.

    Returns:
        The report: mismatches (each naming the input and, for the cache, the cell; for params,
        the keys), notes about code differences, and what matched.

    Raises:
        FileNotFoundError: if the checkpoint, the cache folder or the params file do not exist.
        DataError: if the checkpoint records no lineage.
        ConfigError: if the params file is invalid.
    """
    meta = read_meta(checkpoint)
    cfg = load_params(params)
    now = checkpoint_lineage(
        cfg, cache=cache, manifest=manifest, stats=stats, lock=lock, params=params, root=root
    )
    old = meta["lineage"]
    report = LineageReport(checkpoint=str(checkpoint))
    _compare_file("STAC lock", old["stac_lock"], now["stac_lock"], report)
    _compare_cache(old["cache"], now["cache"], report)
    _compare_file("manifest", old["manifest"], now["manifest"], report)
    _compare_file("stats", old["stats"], now["stats"], report)
    _compare_params(meta, now["params"], cfg.model_dump(mode="json"), report)
    _compare_code(old, now, report)
    return report
