"""An exponential moving average of a model's weights (``train.ema_decay``).

After every optimizer step, ``ema = decay * ema + (1 - decay) * weights`` for each floating-point
parameter, and buffers are copied. The average is a full copy of the model (``ema.module``), so it
can be evaluated as it is: validation and the final checkpoint use it when it is on.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """EMA of ``model``'s weights, kept in a frozen copy of the model on the same device.

    Args:
        model: the model being trained (not a DDP or compiled wrapper: its plain module).
        decay: in (0, 1); e.g. 0.999 averages over about 1000 steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay is {decay}; use a value in (0, 1), e.g. 0.999")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        ema_p = [p for p in self.module.parameters() if p.is_floating_point()]
        new_p = [p.detach() for p in model.parameters() if p.is_floating_point()]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        """The averaged weights (the model's ``state_dict`` layout) and the decay."""
        return {"decay": self.decay, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.decay = state["decay"]
        self.module.load_state_dict(state["model"])
