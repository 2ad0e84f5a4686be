"""AdamW with MAE's parameter groups and learning-rate rule, and a warmup + cosine schedule.

- Weight decay applies to weight matrices only: norms, biases, positional embeddings and the
  cls/mask tokens are left undecayed (MAE's ``param_groups_weight_decay``; decaying a LayerNorm gain
  towards zero only fights the norm).
- The absolute learning rate follows MAE's linear scaling rule, ``lr = base_lr * batch / 256``; it
  is computed once, in :attr:`TrainConfig.effective_lr`, and logged.
- The schedule is a per-step multiplier: linear warmup from 0, then a half-cosine down to 0.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from geogfm.core.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "param_groups"]

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
        if param.ndim <= 1 or name.endswith(_NO_DECAY_SUFFIXES):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` at the scaled learning rate.

    Args:
        model: the model to optimise.
        train_cfg: ``optimizer`` settings and ``batch_size`` for the LR scaling rule.
    """
    opt = train_cfg.optimizer
    lr = train_cfg.effective_lr
    log.info(
        "AdamW: lr = base %.3g x batch %d / 256 = %.3g, weight_decay %.3g, betas %s",
        opt.lr,
        train_cfg.batch_size,
        lr,
        opt.weight_decay,
        opt.betas,
    )
    return torch.optim.AdamW(
        param_groups(model, opt.weight_decay), lr=lr, betas=tuple(opt.betas), fused=False
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps`` then cosine decay to 0 at ``total_steps``.

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        warmup_steps: steps of linear warmup (0 for none).
        total_steps: steps of the whole run.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
