"""The training loop: ``fit`` runs epochs of optimizer steps and can stop and resume anywhere.

Read it top to bottom: checks on the inputs, then the run's parts (device, optimizer, schedule,
gradient scaler, EMA, mask generator), then either a fresh start or a resume from a training
checkpoint, then epochs of steps (each over ``train.accum_steps`` micro-batches), a validation
pass at each epoch end, checkpoints every ``train.checkpoint_every`` steps and at epoch ends.

A run is a function of its config: the model is initialised by the caller, the data order and the
workers' draws are functions of ``(seed, epoch, position)``
(:class:`geogfm.data.loaders.EpochSampler`), the masks come from a CPU generator seeded from
``train.seed`` whose state is checkpointed with every other RNG. So on the CPU an interrupted and
resumed run ends with the same weights, bit for bit, as one that ran straight through.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from geogfm.core.config import TrainConfig
from geogfm.models.fast import CompiledMAE
from geogfm.training.checkpointing import Checkpointer, get_rng_state, set_rng_state
from geogfm.training.ema import ModelEMA
from geogfm.training.optimizer import build_optimizer, build_scheduler
from geogfm.training.steps import _to_device, eval_step, evaluate, resolve_device, train_step

__all__ = ["Callback", "eval_step", "fit", "resolve_device", "train_step"]
__all__ += ["_to_device"]  # used by the loader tests

log = logging.getLogger(__name__)

#: ``callback(event, metrics)`` with event ``"step"`` (every ``train.log_every`` steps) or
#: ``"epoch"``. On a resume the restored run's events are replayed first, with
#: ``metrics["replayed"] = True``, so that curves built from them are whole.
Callback = Callable[[str, dict], None]


def _check_inputs(train_dl, train_cfg: TrainConfig) -> int:
    """Micro-batches per epoch, after checking the loader against the config."""
    bs = train_cfg.batch_size
    loader_bs = getattr(train_dl, "batch_size", bs)
    if loader_bs != bs:
        raise ValueError(
            f"train.batch_size is {bs} but the train loader yields batches of "
            f"{loader_bs}; build the loader with DataConfig(batch_size={bs})"
        )
    dataset = getattr(train_dl, "dataset", None)
    sampler = getattr(train_dl, "sampler", None)
    n = len(sampler) if sampler is not None else len(dataset) if dataset is not None else None
    if n is not None and n < bs:
        raise ValueError(
            f"train.batch_size is {bs} but the train split has only {n} samples per process; "
            f"lower train.batch_size to at most {n}, or add data"
        )
    batches = len(train_dl)
    if batches < train_cfg.accum_steps:
        raise ValueError(
            f"the train loader yields {batches} batches of {bs} per epoch, fewer than "
            f"train.accum_steps={train_cfg.accum_steps}; lower train.accum_steps or batch_size"
        )
    return batches


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def fit(
    model: nn.Module,
    loaders: tuple[Iterable, Iterable | None],
    train_cfg: TrainConfig,
    *,
    callbacks: Iterable[Callback] = (),
    checkpointer: Checkpointer | None = None,
    resume: dict | None = None,
) -> dict:
    """Train ``model`` on ``loaders = (train_dl, val_dl)``; ``val_dl`` may be None.

    Under ``torchrun`` (a process group already initialised) the model is wrapped in DDP, the
    loaders must be sharded (``build_dataloader(..., num_replicas, rank)``), and only rank 0
    shows progress, calls ``callbacks`` and writes checkpoints.

    Args:
        model: its ``forward(imgs, valid, noise=...)`` returns ``(loss, pred, mask)``; initialise
            it under the run's seed before calling.
        loaders: the train loader and the validation loader (or None).
        train_cfg: epochs, batch size, accumulation, optimiser, schedule, precision, EMA, seed.
        callbacks: called with ``("step", metrics)`` and ``("epoch", metrics)``.
        checkpointer: writes training checkpoints (every ``train.checkpoint_every`` steps and at
            each epoch end); None writes none.
        resume: a training checkpoint (:meth:`Checkpointer.load`) to continue from.

    Returns:
        ``{"train_loss": [...], "lr": [...], "val_loss": [...], "val_psnr": [...], "steps",
        "images_per_s", "seconds", "ema": ModelEMA | None}``.

    Raises:
        ValueError: when the loader disagrees with the config (batch size, too few samples or
            batches).
        FloatingPointError: on a non-finite loss, naming the step, the loss and the last good
            checkpoint (which is left intact).
    """
    train_dl, val_dl = loaders
    batches = _check_inputs(train_dl, train_cfg)
    accum = train_cfg.accum_steps
    steps_per_epoch = batches // accum
    total_steps = train_cfg.epochs * steps_per_epoch
    if train_cfg.max_steps is not None:
        total_steps = min(total_steps, train_cfg.max_steps)
    warmup_steps = min(total_steps, round(train_cfg.warmup_epochs * steps_per_epoch))
    rank, world = _distributed()
    if world != train_cfg.devices * train_cfg.nodes:
        raise ValueError(
            f"train.devices x train.nodes is {train_cfg.devices * train_cfg.nodes} but "
            f"{world} processes run; launch with torchrun --nproc-per-node={train_cfg.devices}"
        )

    # the run's parts
    device = resolve_device(train_cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(train_cfg.seed)
    model.to(device)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(
        optimizer,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        schedule=train_cfg.schedule,
    )
    scaler = torch.amp.GradScaler(device.type) if train_cfg.precision == "fp16" else None
    ema = ModelEMA(model, train_cfg.ema_decay) if train_cfg.ema_decay is not None else None
    generator = torch.Generator().manual_seed(train_cfg.seed)  # masks: the same on any device
    history: dict = {"train_loss": [], "lr": [], "val_loss": [], "val_psnr": []}
    events: list[dict] = []
    step, epoch0, batch0 = 0, 0, 0
    callbacks = list(callbacks) if rank == 0 else []
    checkpointer = checkpointer if rank == 0 else None

    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if ema is not None:  # from the restored weights, or the saved average
            ema = ModelEMA(model, train_cfg.ema_decay)
            if resume.get("ema"):
                ema.load_state_dict(resume["ema"])
        step, epoch0, batch0 = resume["step"], resume["epoch"], resume["epoch_batch"]
        history = {k: list(v) for k, v in resume["history"].items()}
        events = list(resume["events"])
        set_rng_state(resume["rng"], generator)
        log.warning(
            "RESUMING from the checkpoint of step %d of %d (epoch %d, batch %d)",
            step,
            total_steps,
            epoch0,
            batch0,
        )
        for e in events:
            for cb in callbacks:
                cb(e["event"], {**e["metrics"], "replayed": True})

    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if train_cfg.compile:  # whole graph, images band-fastest in memory (geogfm.models.fast)
        net = CompiledMAE(net)
    log.info(
        "fit: %d steps (%d per epoch of %d micro-batches x %d, %d warmup, %s) on %s x %d, %s%s",
        total_steps,
        steps_per_epoch,
        accum,
        train_cfg.batch_size,
        warmup_steps,
        train_cfg.schedule,
        device,
        world,
        train_cfg.precision,
        f", EMA {train_cfg.ema_decay}" if ema is not None else "",
    )

    def save(epoch: int, epoch_batch: int, *, finished: bool = False) -> None:
        if checkpointer is None:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "ema": ema.state_dict() if ema is not None else {},
            "step": step,
            "epoch": epoch,
            "epoch_batch": epoch_batch,
            "finished": finished,
            "total_steps": total_steps,
            "rng": get_rng_state(generator),
            "history": history,
            "events": events,
        }
        checkpointer.save(state, step=step)

    def emit(event: str, metrics: dict) -> None:
        events.append({"event": event, "metrics": metrics})
        for cb in callbacks:
            cb(event, metrics)

    images, start = 0, time.perf_counter()
    bar = tqdm(initial=step, total=total_steps, desc="pretrain", unit="step", disable=rank or None)
    sampler = getattr(train_dl, "sampler", None)
    for epoch in range(epoch0, train_cfg.epochs):
        if step >= total_steps:
            break
        first = batch0 if epoch == epoch0 else 0  # micro-batches of this epoch already done
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch, start=first * train_cfg.batch_size)
            batches_iter = iter(train_dl)
        else:  # a plain loader: skip the done batches by reading them
            batches_iter = itertools.islice(iter(train_dl), first, None)
        epoch_batch = first
        for _ in range(steps_per_epoch - first // accum):
            micro = [next(batches_iter) for _ in range(accum)]
            lr = optimizer.param_groups[0]["lr"]
            try:
                loss = train_step(
                    net,
                    micro,
                    optimizer,
                    device=device,
                    precision=train_cfg.precision,
                    grad_clip=train_cfg.grad_clip,
                    generator=generator,
                    scaler=scaler,
                    shard=(rank, world),
                )
            except FloatingPointError as err:
                good = checkpointer.latest() if checkpointer is not None else None
                raise FloatingPointError(
                    f"{err} at step {step} (epoch {epoch}); training stopped, the last good "
                    f"checkpoint is {good or '(none written)'}; lower train.optimizer.lr "
                    f"({train_cfg.optimizer.lr}) or check the inputs for NaNs"
                ) from None
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            epoch_batch += accum
            images += sum(len(b["image"]) for b in micro) * world
            history["train_loss"].append(loss)
            history["lr"].append(lr)
            rate = images / (time.perf_counter() - start)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            if step % train_cfg.log_every == 0 or step == total_steps:
                metrics = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
                emit("step", {**metrics, "images_per_s": rate})
            if step >= total_steps:
                break
            end_of_epoch = epoch_batch + accum > steps_per_epoch * accum
            if checkpointer is not None and checkpointer.due(step) and not end_of_epoch:
                save(epoch, epoch_batch)
        metrics = {"step": step, "epoch": epoch, "train_loss": history["train_loss"][-1]}
        if val_dl is not None and rank == 0:  # the other ranks go on to the next all-reduce
            eval_model = ema.module if ema is not None else model
            val = evaluate(
                eval_model,
                val_dl,
                device=device,
                precision=train_cfg.precision,
                seed=train_cfg.seed,
            )
            history["val_loss"].append(val["val_loss"])
            history["val_psnr"].append(val["val_psnr"])
            metrics.update(val)
        log.info("epoch %d: %s", epoch, {k: round(v, 5) for k, v in metrics.items()})
        emit("epoch", metrics)
        save(epoch + 1, 0, finished=step >= total_steps)
    bar.close()
    seconds = time.perf_counter() - start
    history.update(
        steps=step,
        seconds=seconds,
        images_per_s=images / seconds if images else math.nan,
        ema=ema,
    )
    return history
