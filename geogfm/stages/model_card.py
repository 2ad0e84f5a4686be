"""``geogfm model_card``: ``results/model_card.md``, what a checkpoint is and what it was made from.

The card is written from the DAG's artifacts only, so that it is regenerated whenever one of them
changes (they are the stage's inputs in ``dvc.yaml`` and the Snakefile) and says nothing they do
not: the model and its training configuration (``meta.json``), the data's provenance (the STAC
lock: catalog, query, items, date range, cloud filter, processing baselines; the tile cache's
cells), the normalisation statistics, the split audit, the pretraining metrics, the evaluation
metrics with their confidence intervals (``results/evaluate/metrics.json``, when it exists), links
to the figures, and the lineage hashes ``geogfm verify-checkpoint`` checks. The same inputs give
the same bytes: no timestamps, no machine-specific paths, sorted keys.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_path, sha256_file

__all__ = ["run"]

log = logging.getLogger(__name__)

_MAX_ITEMS_LISTED = 200  # item ids listed in the card; more are counted


def _read_json(path: Path, what: str, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} not found; run `geogfm {stage}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{what} {path} is not valid JSON ({err}); run `geogfm {stage}`") from None


def _num(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(v) for v in row) + " |" for row in rows]
    return lines + [""]


# ---------------------------------------------------------------------------------- sections


def _model(meta: dict, metrics: dict) -> list[str]:
    m = meta["config"]["model"]
    rows = [
        ["architecture", f"{m['architecture']} masked autoencoder"],
        ["encoder", f"{m['embed_dim']}-d, {m['depth']} blocks, {m['num_heads']} heads"],
        ["decoder", f"{m['decoder_embed_dim']}-d, {m['decoder_depth']} blocks"],
        ["image / patch size", f"{m['image_size']} px / {m['patch_size']} px"],
        ["bands (in order)", ", ".join(meta["bands"])],
        ["mask ratio", m["mask_ratio"]],
        ["training steps", meta.get("step", metrics.get("steps"))],
        ["final train loss", metrics.get("train_loss")],
        ["final validation loss", metrics.get("val_loss")],
    ]
    return ["## Model", "", *_table(["", ""], rows)]


def _provenance(lock: dict, index: dict) -> list[str]:
    q = lock["query"]
    items = lock["items"]
    times = sorted(i["datetime"] for i in items)
    baselines = Counter(str(i.get("processing_baseline")) for i in items)
    area = "the collection extent"
    if q.get("bbox") is not None:
        area = f"bbox {q['bbox']}"
    elif q.get("intersects") is not None:
        area = f"intersects a GeoJSON {q['intersects'].get('type')}"
    cloud = "none"
    if q.get("max_cloud_cover") is not None:
        cloud = f"eo:cloud_cover <= {q['max_cloud_cover']} %"
    rows = [
        ["catalog", q["catalog"]],
        ["collections", ", ".join(q["collections"])],
        ["area", area],
        ["datetime", q.get("datetime")],
        ["cloud filter", cloud],
        ["max items", q.get("max_items")],
        ["items found", len(items)],
        ["date range", f"{times[0]} to {times[-1]}" if times else "-"],
        ["processing baselines", ", ".join(f"{b}: {n}" for b, n in sorted(baselines.items()))],
    ]
    lines = ["## Training data", "", "### Provenance (the STAC lock)", "", *_table(["", ""], rows)]
    shown = items[:_MAX_ITEMS_LISTED]
    lines += ["<details><summary>Items</summary>", ""]
    lines += _table(
        ["id", "collection", "datetime", "baseline"],
        [[i["id"], i["collection"], i["datetime"], i.get("processing_baseline")] for i in shown],
    )
    if len(items) > len(shown):
        lines += [f"... and {len(items) - len(shown)} more (see `data/stac/lock.json`).", ""]
    lines += ["</details>", ""]
    cells = index.get("cells", [])
    lines += [
        "### Tile cache",
        "",
        f"{len(cells)} cell(s) of {index.get('cell_size')} px at {index.get('resolution')} m in "
        f"{index.get('crs')}; bands {', '.join(index.get('bands', []))}; pixels with scene "
        f"classes {index.get('mask_scl_classes')} masked; "
        f"{len(index.get('skipped_cells', []))} cell(s) without a valid pixel skipped, "
        f"{len(index.get('failed_items', []))} unreadable asset(s).",
        "",
        *_table(["cell", "dates", "bounds"], [[c["id"], c["n_times"], c["bounds"]] for c in cells]),
    ]
    return lines


def _stats(stats: dict) -> list[str]:
    pct = stats.get("percentiles", {})
    keys = sorted(pct, key=float)
    header = ["band", "count", "mean", "std", "min", "max", *[f"p{k}" for k in keys]]
    rows = [
        [b, stats["count"][i], stats["mean"][i], stats["std"][i], stats["min"][i], stats["max"][i]]
        + [pct[k][i] for k in keys]
        for i, b in enumerate(stats["bands"])
    ]
    src = stats.get("source", {})
    return [
        "## Normalisation statistics",
        "",
        f"Exact, over the valid pixels of the {src.get('split', 'train')} split "
        f"({src.get('windows', '?')} windows, {len(src.get('cells', []))} cells), in "
        f"{stats.get('unit', 'reflectance')}. The checkpoint carries them.",
        "",
        *_table(header, rows),
    ]


def _audit(audit: dict) -> list[str]:
    rows = audit.get("rows", {})
    blocks = audit.get("n_blocks", {})
    splits = [s for s in ("train", "val", "test") if s in rows]
    lines = ["## Spatial split", ""]
    lines += _table(["split", "patches", "blocks"], [[s, rows[s], blocks.get(s)] for s in splits])
    dist = audit.get("min_distance_m", audit.get("min_distance_train_val_m"))
    passed = audit.get("independent_audit", {}).get("passed")
    lines += [
        f"Blocks of {audit.get('block_size')} px go whole to one split; buffer "
        f"{audit.get('buffer')} px ({audit.get('buffer_m')} m); "
        f"{rows.get('dropped_for_buffer', '?')} patch(es) dropped for the buffer. Minimum "
        f"distance between splits (m): {json.dumps(dist, sort_keys=True)}. Independent leakage "
        f"audit: {'passed' if passed else 'not passed' if passed is False else 'not run'}.",
        "",
    ]
    return lines


def _config(meta: dict) -> list[str]:
    cfg = meta["config"]
    lines = ["## Training configuration", "", "```json"]
    sections = {k: cfg[k] for k in ("model", "data", "train") if k in cfg}
    lines += json.dumps(sections, indent=2, sort_keys=True).splitlines()
    return lines + ["```", ""]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key in sorted(obj):
        out |= _flatten(obj[key], f"{prefix}.{key}" if prefix else str(key))
    return out


def _evaluation(path: Path | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if path is None or not path.is_file():
        return lines + ["Not evaluated (no `results/evaluate/metrics.json`).", ""]
    flat = _flatten(json.loads(path.read_text()))
    rows = []
    for key, value in flat.items():
        if key.endswith(("_low", "_high")) or not isinstance(value, int | float):
            continue
        lo, hi = flat.get(f"{key}_low"), flat.get(f"{key}_high")
        ci = f"[{_num(lo)}, {_num(hi)}]" if lo is not None and hi is not None else ""
        rows.append([key, value, ci])
    lines += [
        f"From `{path.name}`; intervals are the stage's (bootstrap) confidence intervals.",
        "",
    ]
    return lines + _table(["metric", "value", "interval"], rows)


def _figures(figures: list[Path], out: Path) -> list[str]:
    lines = ["## Figures", ""]
    for fig in figures:
        rel = Path(os.path.relpath(fig, out.parent)).as_posix()
        lines += [f"![{fig.stem}]({rel})", ""]
    return lines if figures else lines + ["None.", ""]


def _lineage(meta: dict, lock_sha: str) -> list[str]:
    lin = meta.get("lineage")
    if lin is None:
        return [
            "## Lineage",
            "",
            f"STAC lock sha256 `{lock_sha}`; the checkpoint records none.",
            "",
        ]
    git = lin.get("git")
    rows = [
        ["STAC lock", lin["stac_lock"]["sha256"]],
        ["tile cache index", lin["cache"]["index_sha256"]],
        *[[f"cell {c}", h] for c, h in sorted(lin["cache"]["cells"].items())],
        ["manifest", lin["manifest"]["sha256"]],
        ["statistics", lin["stats"]["sha256"]],
        ["params.yaml", lin["params"]["sha256"]],
        [
            "git commit",
            "none"
            if git is None
            else git["commit"] + (" (uncommitted changes)" if git["dirty"] else ""),
        ],
        *[[name, v] for name, v in sorted(lin["versions"].items())],
    ]
    note = ""
    if lin["stac_lock"]["sha256"] != lock_sha:
        note = f"**The STAC lock given ({lock_sha[:12]}) is not the one the checkpoint saw.**"
    return [
        "## Lineage",
        "",
        "Content hashes (sha256) of what the checkpoint was trained on; "
        "`geogfm verify-checkpoint results/pretrain/checkpoint.pt` recomputes and compares them.",
        "",
        *([note, ""] if note else []),
        *_table(["input", "sha256 / version"], rows),
    ]


# ------------------------------------------------------------------------------------------ run


def run(
    cfg: GeoGFMConfig,
    *,
    lock: Path,
    cache: Path,
    audit: Path,
    stats: Path,
    meta: Path,
    metrics: Path,
    evaluation: Path,
    figures: Path,
    out: Path,
) -> dict[str, Any]:
    """Write the model card.

    Args:
        cfg: the configuration (unused: everything comes from the artifacts).
        lock: the STAC lock (``data/stac/lock.json``).
        cache: the tile cache (its ``index.json``).
        audit: the split audit (``data/manifests/split_audit.json``).
        stats: the channel statistics.
        meta: the checkpoint's ``meta.json``.
        metrics: the pretraining metrics (``results/pretrain/metrics.json``).
        evaluation: the evaluation metrics (``results/evaluate/metrics.json``); left out of the
            card if it does not exist.
        figures: the figures folder; every ``.png`` in it is linked.
        out: the Markdown file to write (``results/model_card.md``).

    Returns:
        A summary: items, cells, bands, whether evaluation metrics were included.

    Raises:
        FileNotFoundError: if a required input does not exist (naming the stage that writes it).
        DataError: if an input is not valid JSON.
    """
    del cfg
    lock_d = _read_json(Path(lock), "STAC lock", "stac_query")
    index = _read_json(Path(cache) / "index.json", "tile cache index", "tile_cache")
    audit_d = _read_json(Path(audit), "split audit", "patch_manifest")
    stats_d = _read_json(Path(stats), "channel statistics", "channel_stats")
    meta_d = _read_json(Path(meta), "checkpoint metadata", "pretrain")
    metrics_d = _read_json(Path(metrics), "pretraining metrics", "pretrain")
    pngs = sorted(Path(figures).glob("*.png")) if Path(figures).is_dir() else []
    evaluation = Path(evaluation)
    pngs += sorted(evaluation.parent.glob("*.png")) if evaluation.is_file() else []

    m = meta_d["config"]["model"]
    lines = [
        f"# Model card: geogfm {m['architecture']} MAE, {m['embed_dim']}-d x {m['depth']}, "
        f"{len(meta_d['bands'])} bands",
        "",
        "Written by `geogfm model_card` from the DAG's artifacts (regenerate with "
        "`dvc repro model_card` or `snakemake results/model_card.md`). The checkpoint is "
        "`results/pretrain/checkpoint.pt`; its `meta.json` holds everything below.",
        "",
        *_model(meta_d, metrics_d),
        *_provenance(lock_d, index),
        *_stats(stats_d),
        *_audit(audit_d),
        *_config(meta_d),
        "## Pretraining metrics",
        "",
        *_table(["metric", "value"], [[k, v] for k, v in sorted(metrics_d.items())]),
        *_evaluation(evaluation),
        *_figures(pngs, Path(out)),
        *_lineage(meta_d, sha256_file(lock)),
    ]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n")
    summary = {
        "items": len(lock_d["items"]),
        "cells": len(index.get("cells", [])),
        "bands": len(meta_d["bands"]),
        "evaluation": evaluation.is_file(),
        "figures": len(pngs),
    }
    log.info("model_card: %s", summary)
    return summary
