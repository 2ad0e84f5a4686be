"""``pretrain`` stage: MAE pretraining on the manifest's training patches, resumable after a crash.

Writes into ``out`` (default ``results/pretrain/``):

- ``checkpoint.pt``: weights (the EMA's when ``train.ema_decay`` is set), full config, band list,
  channel statistics, step, code versions;
- ``meta.json``: the same minus the weights, for people and for provenance checks;
- ``metrics.json``: final train and validation loss, validation PSNR, steps, throughput
  (``dvc metrics show``);
- ``live/``: dvclive logs; ``live/plots/metrics`` holds the loss, PSNR, LR and throughput curves
  (``dvc plots show``);
- ``checkpoints/step_<step>/``: training checkpoints (``state.pt`` + ``meta.json``), every
  ``train.checkpoint_every`` steps and at each epoch end, the last ``train.keep_checkpoints``
  kept (:mod:`geogfm.training.checkpointing`).

Run again after a crash, the stage resumes from the newest training checkpoint by itself (with
``train.resume``, the default): it refuses a checkpoint of another model or band list, and warns
about any other params that changed since. Checkpoints of a *finished* run with other params are
removed and the run starts afresh (its result is already in ``checkpoint.pt``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from dvclive import Live

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import sha256_file, write_json
from geogfm.core.lineage import checkpoint_lineage
from geogfm.data.loaders import build_dataloader
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import GeoViTBackbone
from geogfm.training.callbacks import LoggingCallback
from geogfm.training.checkpoint import save_checkpoint, versions
from geogfm.training.checkpointing import Checkpointer, config_differences
from geogfm.training.distributed import init_distributed
from geogfm.training.loop import fit

__all__ = ["run"]

log = logging.getLogger(__name__)

#: Params that do not change a run's result: a resume may differ in them without a warning.
_VOLATILE = {
    "train": ("log_every", "checkpoint_every", "keep_checkpoints", "resume", "device"),
    "data": ("num_workers", "chunk_cache_mb"),
}


class _DvcLiveLogger:
    """A ``fit`` callback that sends step and epoch metrics to dvclive."""

    def __init__(self, live: Live):
        self.live = live

    def __call__(self, event: str, metrics: dict) -> None:
        self.live.step = metrics["step"]
        if event == "step":
            self.live.log_metric("train/loss", metrics["loss"])
            self.live.log_metric("train/lr", metrics["lr"])
            self.live.log_metric("train/images_per_s", metrics["images_per_s"])
        elif "val_loss" in metrics:
            self.live.log_metric("val/loss", metrics["val_loss"])
            self.live.log_metric("val/psnr", metrics["val_psnr"])


def _run_config(cfg: GeoGFMConfig, inputs: dict) -> dict:
    """What decides a run's result: model, data, train (less the volatile keys) and inputs."""
    run = {k: cfg.model_dump()[k] for k in ("model", "data", "train")}
    for section, keys in _VOLATILE.items():
        for key in keys:
            run[section].pop(key, None)
    for key in ("manifest", "cache_dir", "stats"):  # paths: the inputs' hashes stand for them
        run["data"].pop(key, None)
    return json.loads(json.dumps({**run, "inputs": inputs}))  # as meta.json holds it


def _resumable(
    ckpts: Checkpointer, cfg: GeoGFMConfig, inputs: dict
) -> tuple[dict | None, list[str]]:
    """The checkpoint to resume from, and the params changed since (``"key: old -> new"``).

    None and no changes when there is none to resume (those of a finished run are removed).
    """
    latest = ckpts.latest()
    if latest is None:
        return None, []
    meta = ckpts.meta(latest)
    diffs = config_differences(meta.get("run", {}), _run_config(cfg, inputs))
    if not cfg.train.resume or meta.get("finished") and diffs:
        why = "train.resume is false" if not cfg.train.resume else "they are of a finished run"
        log.warning(
            "starting afresh: removing the %d checkpoints in %s (%s; differences: %s)",
            len(ckpts.list()),
            ckpts.directory,
            why,
            "; ".join(diffs) or "none",
        )
        for path in ckpts.list():
            shutil.rmtree(path)
        return None, []
    model_diffs = [d for d in diffs if d.startswith("model.")]
    if meta["bands"] != list(cfg.data.bands) or model_diffs:
        raise DataError(
            f"cannot resume from {latest}: it was trained with another model or band list "
            f"(bands {meta['bands']} vs data.bands {list(cfg.data.bands)}; model differences: "
            f"{'; '.join(model_diffs) or 'none'}); set the params back to resume, or delete "
            f"{ckpts.directory} (or set train.resume: false) to start afresh"
        )
    if diffs:
        log.warning(
            "resuming from %s although params changed since (%s): the result will not equal "
            "that of one uninterrupted run",
            latest,
            "; ".join(diffs),
        )
    log.warning("=" * 30 + " RESUMING from %s " + "=" * 30, latest)
    return ckpts.load(latest), diffs


def run(cfg: GeoGFMConfig, *, cache: Path, manifest: Path, stats: Path, out: Path) -> dict:
    """Pretrain the masked autoencoder and write its checkpoint, metadata and metrics.

    Args:
        cfg: the whole configuration (``model``, ``data``, ``train`` are used).
        cache: the tile cache directory.
        manifest: the patch manifest (parquet).
        stats: the channel statistics JSON.
        out: the output directory.

    Returns:
        The final metrics.

    Raises:
        DataError: when the checkpoint to resume is of another model or band list.
        ValueError: when the batch size exceeds the train split (and other loader/config
            mismatches, see :func:`geogfm.training.loop.fit`).
    """
    rank, world = init_distributed(cfg.train)
    data_cfg = cfg.data.model_copy(
        update={"manifest": str(manifest), "cache_dir": str(cache), "stats": str(stats)}
    )
    train_dl, val_dl = build_dataloader(
        data_cfg, seed=cfg.train.seed, num_replicas=world, rank=rank
    )
    log.info(
        "in_chans = len(data.bands) = %d, image %d px, patch %d px; %d train, %d val patches",
        cfg.model.in_chans,
        cfg.model.image_size,
        cfg.model.patch_size,
        len(train_dl.dataset),
        len(val_dl.dataset),
    )
    torch.manual_seed(cfg.train.seed)  # the initial weights are a function of the seed
    model = MaskedAutoencoder(cfg.model, GeoViTBackbone(cfg.model))

    stats_dict = json.loads(Path(stats).read_text())
    inputs = {"manifest_sha256": sha256_file(manifest), "stats_sha256": sha256_file(stats)}
    extra = {
        "config": cfg.model_dump(),
        "bands": list(cfg.data.bands),
        "stats": stats_dict,
        "inputs": inputs,
        "run": _run_config(cfg, inputs),
    }
    ckpts = Checkpointer(
        out / "checkpoints",
        every=cfg.train.checkpoint_every,
        keep=cfg.train.keep_checkpoints,
        extra=extra,
    )
    resume, changed = _resumable(ckpts, cfg, inputs) if rank == 0 else (None, [])
    if world > 1:  # every rank resumes from rank 0's choice
        box = [resume]
        torch.distributed.broadcast_object_list(box, src=0)
        resume = box[0]

    out.mkdir(parents=True, exist_ok=True)
    # dvclive writes as it goes: into a temporary directory, moved into place at the end
    for stale in out.glob(".live.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    live_dir = out / f".live.tmp-{os.getpid()}"
    try:
        with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None) as live:
            # fit logs each epoch itself; the step metrics go to the log too
            callbacks = [_DvcLiveLogger(live), LoggingCallback(events=("step",))]
            history = fit(
                model,
                (train_dl, val_dl),
                cfg.train,
                callbacks=callbacks,
                checkpointer=ckpts,
                resume=resume,
            )
    except BaseException:
        shutil.rmtree(live_dir, ignore_errors=True)
        raise
    if rank != 0:
        shutil.rmtree(live_dir, ignore_errors=True)
        return {}

    ema = history["ema"]
    weights = ema.module if ema is not None else model
    metrics = {
        "train_loss": history["train_loss"][-1],
        "val_loss": history["val_loss"][-1] if history["val_loss"] else None,
        "val_psnr": history["val_psnr"][-1] if history["val_psnr"] else None,
        "steps": history["steps"],
        "images_per_s": rate if math.isfinite(rate := history["images_per_s"]) else None,
    }
    meta = {
        "config": cfg.model_dump(),
        "bands": list(cfg.data.bands),
        "stats": stats_dict,
        "step": history["steps"],
        "weights": "ema" if ema is not None else "model",
        "resumed_from_step": resume["step"] if resume is not None else None,
        # the params that differed when it resumed: the steps before ran with the old values
        "resumed_with_changed_params": changed,
        "inputs": inputs,
        "metrics": metrics,
        "lineage": checkpoint_lineage(cfg, cache=cache, manifest=manifest, stats=stats),
        "versions": versions(),
    }
    save_checkpoint(out / "checkpoint.pt", weights.cpu(), **meta)
    write_json(out / "meta.json", meta)
    write_json(out / "metrics.json", metrics)
    shutil.rmtree(out / "live", ignore_errors=True)
    os.replace(live_dir, out / "live")
    return metrics
