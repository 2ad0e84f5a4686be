"""``pretrain`` stage: MAE pretraining on the manifest's training patches.

Writes into ``out`` (default ``results/pretrain/``):

- ``checkpoint.pt``: weights, full config, band list, channel statistics, step, code versions;
- ``meta.json``: the same minus the weights, for people and for provenance checks;
- ``metrics.json``: final train and validation loss, steps, throughput (``dvc metrics show``);
- ``live/``: dvclive logs; ``live/plots/metrics`` holds the loss and LR curves (``dvc plots show``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from dvclive import Live

from geogfm.core.config import GeoGFMConfig
from geogfm.core.io import sha256_file, write_json
from geogfm.data.loaders import build_dataloader
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import GeoViTBackbone
from geogfm.training.checkpoint import save_checkpoint, versions
from geogfm.training.loop import fit

__all__ = ["run"]

log = logging.getLogger(__name__)


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
    """
    data_cfg = cfg.data.model_copy(
        update={"manifest": str(manifest), "cache_dir": str(cache), "stats": str(stats)}
    )
    train_dl, val_dl = build_dataloader(data_cfg, seed=cfg.train.seed)
    log.info(
        "in_chans = len(data.bands) = %d, image %d px, patch %d px; %d train, %d val patches",
        cfg.model.in_chans,
        cfg.model.image_size,
        cfg.model.patch_size,
        len(train_dl.dataset),
        len(val_dl.dataset),
    )
    model = MaskedAutoencoder(cfg.model, GeoViTBackbone(cfg.model))

    out.mkdir(parents=True, exist_ok=True)
    # dvclive writes as it goes: into a temporary directory, moved into place at the end
    live_dir = out / f".live.tmp-{os.getpid()}"
    shutil.rmtree(live_dir, ignore_errors=True)
    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None) as live:
        history = fit(model, (train_dl, val_dl), cfg.train, callbacks=[_DvcLiveLogger(live)])

    stats_dict = json.loads(Path(stats).read_text())
    metrics = {
        "train_loss": history["train_loss"][-1],
        "val_loss": history["val_loss"][-1] if history["val_loss"] else None,
        "steps": history["steps"],
        "images_per_s": history["images_per_s"],
    }
    meta = {
        "config": cfg.model_dump(),
        "bands": list(cfg.data.bands),
        "stats": stats_dict,
        "step": history["steps"],
        "inputs": {
            "manifest_sha256": sha256_file(manifest),
            "stats_sha256": sha256_file(stats),
        },
        "metrics": metrics,
        "versions": versions(),
    }
    save_checkpoint(out / "checkpoint.pt", model.cpu(), **meta)
    write_json(out / "meta.json", meta)
    write_json(out / "metrics.json", metrics)
    shutil.rmtree(out / "live", ignore_errors=True)
    os.replace(live_dir, out / "live")
    return metrics
