"""Self-describing checkpoints: weights plus everything needed to rebuild and trust them.

A checkpoint holds the model weights, the full config it was trained with, the band list and the
channel statistics the inputs were normalised with (statistics travel with the model), the step and
the versions of the code. A human-readable ``meta.json`` is written beside it.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

import geogfm
from geogfm.core.config import ModelConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_path

__all__ = ["load_checkpoint", "save_checkpoint", "versions"]

_FORMAT = 1


def versions() -> dict[str, str]:
    """Versions of the code that produced an artifact."""
    import numpy

    return {
        "geogfm": geogfm.__version__,
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(path: str | Path, model: nn.Module, **extra: Any) -> None:
    """Write ``{"model": state_dict, **extra}`` to ``path`` atomically.

    Args:
        path: the ``.pt`` file.
        model: the model whose ``state_dict`` is saved.
        **extra: JSON-like entries: ``config``, ``bands``, ``stats``, ``step``, ...
    """
    payload = {"format": _FORMAT, "model": model.state_dict(), "versions": versions(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the masked autoencoder of a checkpoint written by the pretrain stage.

    Returns:
        The model (on CPU, eval mode) and the checkpoint dict.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        DataError: when the file is not a geogfm checkpoint.
    """
    from geogfm.models.gfm_mae import MaskedAutoencoder
    from geogfm.models.gfm_vit import GeoViTBackbone

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found; run `geogfm pretrain` first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT or "config" not in ckpt:
        raise DataError(f"{path} is not a geogfm checkpoint (format {_FORMAT})")
    model_cfg = ModelConfig.model_validate(ckpt["config"]["model"])
    model = MaskedAutoencoder(model_cfg, GeoViTBackbone(model_cfg))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
