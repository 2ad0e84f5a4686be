"""The training loop: ``train_step``, ``eval_step`` and ``fit`` for the masked autoencoder.

Read it top to bottom: one optimisation step, one evaluation step, then ``fit``, which runs epochs
of steps under a warmup + cosine schedule and reports to callbacks. Masks are drawn from a CPU
``torch.Generator`` seeded from ``train.seed``, so a run is a function of its config; validation
uses its own generator, reseeded each epoch, so every epoch is scored on the same masks.

Batches are dicts from :func:`geogfm.data.loaders.build_dataloader`:
``{"image": (B, C, H, W) uint16 DN, "valid": (B, H, W) bool, "normalize": ..., ...}``; the batch's
``normalize`` turns the DN into float32 z-scores once they are on the device (:func:`_to_device`).
Batches of float32 images without ``normalize`` are used as they are.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from torch import nn
from tqdm.auto import tqdm

from geogfm.core.config import TrainConfig
from geogfm.training.optimizer import build_optimizer, build_scheduler

__all__ = ["Callback", "eval_step", "fit", "resolve_device", "train_step"]

log = logging.getLogger(__name__)

#: ``callback(event, metrics)`` with event ``"step"`` (every ``train.log_every`` steps) or
#: ``"epoch"``.
Callback = Callable[[str, dict], None]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f'train.device is "{name}" but CUDA is not available; use "auto" or "cpu"')
    return torch.device(name)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = batch["image"].to(device, non_blocking=True)  # (B, [T,] C, H, W), uint16 DN
    valid = batch["valid"].to(device, non_blocking=True)  # (B, [T,] H, W)
    normalize = batch.get("normalize")
    if normalize is not None:  # DN -> float32 z-scores, invalid pixels 0, on the device
        imgs = normalize(imgs, valid)
    if not imgs.is_floating_point():
        raise TypeError(
            f"the batch's image is {imgs.dtype} and the batch has no 'normalize'; build the "
            "loader with geogfm.data.loaders.build_dataloader or give float32 normalised images"
        )
    return imgs, valid


def train_step(
    model: nn.Module,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    precision: str = "fp32",
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """One optimisation step; returns the loss.

    Raises:
        FloatingPointError: when the loss is NaN or infinite (nothing is updated).
    """
    model.train()
    imgs, valid = _to_device(batch, device)
    with _autocast(device, precision):
        loss, _, _ = model(imgs, valid, generator=generator)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return value


@torch.no_grad()
def eval_step(
    model: nn.Module,
    batch: dict,
    *,
    device: torch.device,
    precision: str = "fp32",
    generator: torch.Generator | None = None,
) -> float:
    """The masked-reconstruction loss of one batch, without gradients."""
    model.eval()
    imgs, valid = _to_device(batch, device)
    with _autocast(device, precision):
        loss, _, _ = model(imgs, valid, generator=generator)
    return loss.item()


def _evaluate(model, loader, *, device, precision, seed) -> float:
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for batch in loader:
        n = len(batch["image"])
        total += n * eval_step(
            model, batch, device=device, precision=precision, generator=generator
        )
        count += n
    return total / count if count else math.nan


def fit(
    model: nn.Module,
    loaders: tuple[Iterable, Iterable | None],
    train_cfg: TrainConfig,
    *,
    callbacks: Iterable[Callback] = (),
) -> dict:
    """Train ``model`` on ``loaders = (train_dl, val_dl)``; ``val_dl`` may be None.

    Args:
        model: its ``forward(imgs, valid, generator=...)`` returns ``(loss, pred, mask)``.
        loaders: the train loader and the validation loader (or None).
        train_cfg: epochs, batch size, optimiser, schedule, precision, device, seed.
        callbacks: called with ``("step", metrics)`` and ``("epoch", metrics)``.

    Returns:
        ``{"train_loss": [...], "lr": [...], "val_loss": [...], "steps", "images_per_s",
        "seconds"}``.

    Raises:
        ValueError: when the loader's batch size differs from ``train.batch_size`` or it is empty.
        FloatingPointError: on a non-finite loss, naming the step.
    """
    train_dl, val_dl = loaders
    loader_bs = getattr(train_dl, "batch_size", train_cfg.batch_size)
    if loader_bs != train_cfg.batch_size:
        raise ValueError(
            f"train.batch_size is {train_cfg.batch_size} but the train loader yields batches of "
            f"{loader_bs}; build the loader with DataConfig(batch_size={train_cfg.batch_size})"
        )
    steps_per_epoch = len(train_dl)
    if steps_per_epoch == 0:
        raise ValueError(
            f"the train loader yields no batch of train.batch_size={train_cfg.batch_size}; "
            "lower the batch size or add data"
        )
    total_steps = train_cfg.epochs * steps_per_epoch
    if train_cfg.max_steps is not None:
        total_steps = min(total_steps, train_cfg.max_steps)
    warmup_steps = min(total_steps, round(train_cfg.warmup_epochs * steps_per_epoch))

    device = resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    model.to(device)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)
    # masks come from a CPU generator: the same masks on any device
    generator = torch.Generator().manual_seed(train_cfg.seed)
    log.info(
        "fit: %d steps (%d per epoch, %d warmup) on %s, %s",
        total_steps,
        steps_per_epoch,
        warmup_steps,
        device,
        train_cfg.precision,
    )

    history: dict = {"train_loss": [], "lr": [], "val_loss": []}
    step, images, start = 0, 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc="pretrain", unit="step", disable=None)
    for epoch in range(train_cfg.epochs):
        for batch in train_dl:
            lr = optimizer.param_groups[0]["lr"]
            try:
                loss = train_step(
                    model,
                    batch,
                    optimizer,
                    device=device,
                    precision=train_cfg.precision,
                    grad_clip=train_cfg.grad_clip,
                    generator=generator,
                )
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"{err} at step {step} (epoch {epoch}); lower train.optimizer.lr "
                    f"({train_cfg.optimizer.lr}) or check the inputs for NaNs"
                ) from None
            scheduler.step()
            step += 1
            images += len(batch["image"])
            history["train_loss"].append(loss)
            history["lr"].append(lr)
            rate = images / (time.perf_counter() - start)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            if step % train_cfg.log_every == 0 or step == total_steps:
                metrics = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": lr,
                    "images_per_s": rate,
                }
                for cb in callbacks:
                    cb("step", metrics)
            if step >= total_steps:
                break
        metrics = {"step": step, "epoch": epoch, "train_loss": history["train_loss"][-1]}
        if val_dl is not None:
            val = _evaluate(
                model, val_dl, device=device, precision=train_cfg.precision, seed=train_cfg.seed
            )
            history["val_loss"].append(val)
            metrics["val_loss"] = val
        log.info("epoch %d: %s", epoch, {k: round(v, 5) for k, v in metrics.items()})
        for cb in callbacks:
            cb("epoch", metrics)
        if step >= total_steps:
            break
    bar.close()
    seconds = time.perf_counter() - start
    history.update(steps=step, seconds=seconds, images_per_s=images / seconds)
    return history
