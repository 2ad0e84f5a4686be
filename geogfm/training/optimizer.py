"""AdamW with MAE's parameter groups and learning-rate rule, warmup + cosine/constant schedules.

- Weight decay applies to weight matrices only: norms, biases, positional embeddings and the
  cls/mask tokens are left undecayed (MAE's ``param_groups_weight_decay``; decaying a LayerNorm gain
  towards zero only fights the norm).
- The absolute learning rate follows MAE's linear scaling rule, ``lr = base_lr * eff_batch / 256``,
  with ``eff_batch = batch_size * accum_steps * world_size`` images per optimizer step; it is
  computed once, in :attr:`TrainConfig.effective_lr`, and logged.
- The schedule is a per-step multiplier: linear warmup from 0, then a half-cosine down to 0
  (``"cosine"``) or a constant 1 (``"constant"``).
- Fine-tuning uses layer-wise LR decay (:func:`param_groups_lrd`, BEiT/MAE's): block ``i`` of
  ``n`` gets ``lr * layer_decay ** (n + 1 - (i + 1))``, the embeddings the smallest factor.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from geogfm.core.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "layer_id", "param_groups", "param_groups_lrd"]

log = logging.getLogger(__name__)

# Parameters whose name ends like this are never decayed, whatever their shape.
_NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "mask_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and an undecayed group.

    Args:
        model: the model to optimise.
        weight_decay: decay for weight matrices.

    Returns:
        Two AdamW parameter groups (empty groups are dropped).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _no_decay(name, param):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(_NO_DECAY_SUFFIXES)


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a ViT parameter for LR decay: embeddings 0, ``blocks.i`` i + 1, the rest ``n + 1``.

    Names may carry a prefix (``encoder.blocks.3.attn...``): the first ``blocks.<i>`` counts.
    """
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part == "blocks" and parts[k + 1].isdigit():
            return int(parts[k + 1]) + 1
    if any(p in ("cls_token", "pos_embed", "patch_embed", "mask_token") for p in parts):
        return 0
    return num_layers + 1


def param_groups_lrd(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float,
    *,
    num_layers: int | None = None,
    lr: float | None = None,
) -> list[dict]:
    """Parameter groups with layer-wise LR decay, for fine-tuning a pretrained ViT.

    Each group has an ``lr_scale``: ``layer_decay ** (num_layers + 1 - layer_id(name))``, so the
    head and final norm train at the full LR and earlier layers ever more slowly. With ``lr``,
    each group's ``lr`` is ``lr * lr_scale`` (a :func:`build_scheduler` schedule then scales
    those). Norms, biases, positional embeddings and tokens get no weight decay, as in
    :func:`param_groups`.

    Args:
        model: the model; its blocks are named ``...blocks.<i>...``.
        weight_decay: decay for weight matrices.
        layer_decay: in (0, 1]; 1 disables the decay.
        num_layers: transformer blocks; default the highest ``blocks.<i>`` plus one.
        lr: the full learning rate, to set each group's ``lr``; None leaves it to the optimizer.

    Returns:
        AdamW parameter groups with ``params``, ``weight_decay``, ``lr_scale`` (and ``lr``).

    Raises:
        ValueError: if ``layer_decay`` is not in (0, 1].
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay is {layer_decay}; use a value in (0, 1], e.g. 0.75")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if num_layers is None:
        depths = [layer_id(n, 0) for n, _ in named if ".blocks." in f".{n}"]
        num_layers = max(depths, default=0)  # block i has id i + 1: the last is the count
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named:
        lid = min(layer_id(name, num_layers), num_layers + 1)
        no_decay = _no_decay(name, param)
        group = groups.setdefault(
            (lid, no_decay),
            {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers + 1 - lid),
            },
        )
        group["params"].append(param)
    if lr is not None:
        for group in groups.values():
            group["lr"] = lr * group["lr_scale"]
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` at the scaled learning rate.

    Args:
        model: the model to optimise.
        train_cfg: ``optimizer`` settings and the batch sizes for the LR scaling rule.
    """
    opt = train_cfg.optimizer
    lr = train_cfg.effective_lr
    log.info(
        "AdamW: lr = base %.3g x effective batch %d (batch %d x accum %d x %d processes) / 256 "
        "= %.3g, weight_decay %.3g, betas %s",
        opt.lr,
        train_cfg.effective_batch,
        train_cfg.batch_size,
        train_cfg.accum_steps,
        train_cfg.devices * train_cfg.nodes,
        lr,
        opt.weight_decay,
        opt.betas,
    )
    # the fused kernel (one launch for all parameters, CPU and CUDA) is the same maths as the
    # per-parameter loop, to rounding, and cheaper (benchmarks/model_step.py)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(
        param_groups(model, opt.weight_decay), lr=lr, betas=tuple(opt.betas), fused=fused
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "cosine",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps`` or constant.

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        warmup_steps: steps of linear warmup (0 for none).
        total_steps: steps of the whole run.
        schedule: ``"cosine"`` or ``"constant"`` after the warmup.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f'schedule is {schedule!r}; use "cosine" or "constant"')

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
