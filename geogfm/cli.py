"""The ``geogfm`` command: one subcommand per DAG stage, plus ``check`` for a params file.

Every stage command loads and validates ``params.yaml`` before it does any work, then calls
``geogfm.stages.<stage>.run(cfg, **paths)``. Snakemake rules and ``dvc.yaml`` stages run exactly
these commands, with every input and output path spelled out, so the two orchestrators cannot
disagree about what a stage reads and writes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

from geogfm.core.config import load_params
from geogfm.core.errors import ConfigError, DataError

__all__ = ["STAGES", "main"]

log = logging.getLogger("geogfm")

#: stage -> (help, [(path argument, default path, help)]) ; defaults follow DESIGN.md's paths.
STAGES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "demo_catalog": (
        "write the offline demo STAC catalog (COGs + Items)",
        [("out", "data/demo", "catalog directory to write")],
    ),
    "stac_query": (
        "search the configured STAC catalog and lock what was found",
        [
            ("catalog_dir", "data/demo", "the demo catalog (used when stac_query.catalog is demo)"),
            ("out", "data/stac", "directory for items.json and lock.json"),
        ],
    ),
    "tile_cache": (
        "reproject, scale and mask every band onto one grid; one Zarr store per cell",
        [
            ("items", "data/stac/items.json", "the ItemCollection stac_query wrote"),
            ("out", "data/cache", "cache directory to write"),
        ],
    ),
    "patch_manifest": (
        "list patch windows with their QA and a spatial train/val split",
        [
            ("cache", "data/cache", "the tile cache"),
            ("out", "data/manifests", "directory for patches.parquet and split_audit.json"),
        ],
    ),
    "channel_stats": (
        "exact per-band statistics over valid pixels of the training windows",
        [
            ("cache", "data/cache", "the tile cache"),
            ("manifest", "data/manifests/patches.parquet", "the patch manifest"),
            ("out", "results/stats/channel_stats.json", "statistics file to write"),
        ],
    ),
    "pretrain": (
        "pretrain the masked autoencoder",
        [
            ("cache", "data/cache", "the tile cache"),
            ("manifest", "data/manifests/patches.parquet", "the patch manifest"),
            ("stats", "results/stats/channel_stats.json", "the channel statistics"),
            ("out", "results/pretrain", "directory for the checkpoint, meta.json and metrics"),
        ],
    ),
    "figures": (
        "draw inputs, masks, reconstructions and loss curves",
        [
            ("checkpoint", "results/pretrain/checkpoint.pt", "the pretrained checkpoint"),
            ("cache", "data/cache", "the tile cache"),
            ("manifest", "data/manifests/patches.parquet", "the patch manifest"),
            ("out", "results/figures", "directory for the PNG figures"),
        ],
    ),
    "evaluate": (
        "probes, kNN and reconstruction metrics, pretrained vs random encoder, on held-out patches",
        [
            ("checkpoint", "results/pretrain/checkpoint.pt", "the pretrained checkpoint"),
            ("cache", "data/cache", "the tile cache"),
            ("manifest", "data/manifests/patches.parquet", "the patch manifest"),
            ("stats", "results/stats/channel_stats.json", "the channel statistics"),
            ("labels", "data/demo", "STAC catalog with the label collection (evaluate.*)"),
            ("out", "results/evaluate", "directory for metrics.json, report.json and figures"),
        ],
    ),
    "model_card": (
        "write results/model_card.md: provenance, statistics, split, config, metrics, lineage",
        [
            ("lock", "data/stac/lock.json", "the STAC lock"),
            ("cache", "data/cache", "the tile cache (its index.json)"),
            ("audit", "data/manifests/split_audit.json", "the split audit"),
            ("stats", "results/stats/channel_stats.json", "the channel statistics"),
            ("meta", "results/pretrain/meta.json", "the checkpoint's meta.json"),
            ("metrics", "results/pretrain/metrics.json", "the pretraining metrics"),
            ("evaluation", "results/evaluate/metrics.json", "evaluation metrics (if they exist)"),
            ("figures", "results/figures", "folder of figures to link"),
            ("out", "results/model_card.md", "the model card to write"),
        ],
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geogfm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser("check", help="validate a params file and print it with derived values")
    check.add_argument("--params", default="params.yaml", type=Path, help="params file")
    _add_verify_checkpoint(sub)
    for stage, (help_text, paths) in STAGES.items():
        p = sub.add_parser(stage, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", type=Path, help="params file")
        p.add_argument("--log", type=Path, help="also write the log to this file")
        for name, default, arg_help in paths:
            flag = "--" + name.replace("_", "-")
            p.add_argument(flag, dest=name, default=Path(default), type=Path, help=arg_help)
        if stage == "stac_query":
            p.add_argument(
                "--check",
                action="store_true",
                help="write nothing: search the locked query again and fail, naming the items, if "
                "the catalog no longer gives what <out>/lock.json recorded",
            )
        if stage == "tile_cache":  # one job per cell: plan, cells, gather
            mode = p.add_mutually_exclusive_group()
            mode.add_argument(
                "--plan", action="store_true", help="only list the cells: write a JSON plan to OUT"
            )
            mode.add_argument("--cell", metavar="ID", help="build only this cell, into folder OUT")
            mode.add_argument(
                "--gather", metavar="DIR", type=Path, help="assemble OUT from the cells in DIR"
            )
    return parser


def _add_verify_checkpoint(sub: argparse._SubParsersAction) -> None:
    help_text = (
        "recompute a checkpoint's lineage (data, stats, params hashes) and report mismatches"
    )
    p = sub.add_parser("verify-checkpoint", help=help_text, description=help_text)
    p.add_argument("checkpoint", type=Path, help="the .pt file, its meta.json or their folder")
    for name, default in (
        ("cache", "data/cache"),
        ("manifest", "data/manifests/patches.parquet"),
        ("stats", "results/stats/channel_stats.json"),
        ("lock", "data/stac/lock.json"),
        ("params", "params.yaml"),
    ):
        p.add_argument(f"--{name}", default=Path(default), type=Path, help=f"default {default}")
    p.add_argument(
        "--strict", action="store_true", help="also fail on code differences (commit, versions)"
    )


def _verify_checkpoint(args: argparse.Namespace) -> int:
    verify = importlib.import_module("geogfm.core.verify")  # (not in every stage's code deps)
    report = verify.verify_checkpoint(
        args.checkpoint,
        cache=args.cache,
        manifest=args.manifest,
        stats=args.stats,
        lock=args.lock,
        params=args.params,
    )
    for line in report.matched:
        print(f"ok        {line}")
    for line in report.notes:
        print(f"note      {line}")
    for line in report.mismatches:
        print(f"MISMATCH  {line}")
    failed = report.mismatches + (report.notes if args.strict else [])
    if failed:
        log.error("%s: %d mismatch(es) with its lineage", args.checkpoint, len(failed))
        return 1
    log.info("%s: every input matches its lineage", args.checkpoint)
    return 0


def _setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the ``geogfm`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "log", None))
    try:
        if args.command == "verify-checkpoint":
            return _verify_checkpoint(args)
        cfg = load_params(args.params)
        if args.command == "check":
            print(json.dumps(cfg.model_dump(), indent=2))
            return 0
        paths = {name: getattr(args, name) for name, _, _ in STAGES[args.command][1]}
        stage = importlib.import_module(f"geogfm.stages.{args.command}")
        log.info("%s: %s", args.command, {k: str(v) for k, v in paths.items()})
        start = time.perf_counter()
        run = stage.check if getattr(args, "check", False) else stage.run
        modes = {k: getattr(args, k) for k in ("plan", "cell", "gather") if getattr(args, k, None)}
        summary = run(cfg, **paths, **modes)
        log.info("%s done in %.1f s: %s", args.command, time.perf_counter() - start, summary)
        return 0
    except (ConfigError, DataError, FileNotFoundError) as err:
        # bad input: the message says what and how to fix it; a traceback would only bury it
        log.error("%s", err)
        return 2
