"""``figures`` stage: reconstructions of held-out patches and the training curves.

Writes ``out/reconstructions.png`` (input, masked input, reconstruction, reconstruction with the
visible patches pasted back, for ``figures.n_samples`` validation patches) and
``out/loss_curve.png``. The images are normalised with the statistics stored *in the checkpoint*,
the ones the model was trained with, and shown in reflectance with a 2-98 % stretch of the training
pixels.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from geogfm.core.config import GeoGFMConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_path
from geogfm.data.datasets.stac_dataset import StacPatchDataset
from geogfm.data.transforms.normalization import Normalize
from geogfm.evaluation.visualization import plot_loss_curves, plot_reconstructions
from geogfm.modules.losses.mae_loss import patch_moments
from geogfm.training.checkpoint import load_checkpoint

__all__ = ["run"]

log = logging.getLogger(__name__)


def _read_tsv(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    key = path.stem
    return np.array([int(r["step"]) for r in rows]), np.array([float(r[key]) for r in rows])


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@torch.no_grad()
def _reconstruct(model, images: torch.Tensor, valid: torch.Tensor, seed: int):
    """Run the MAE; return reconstructions (normalised units) and the removed-pixel mask."""
    p, (h, w) = model.patch_size, model.grid_size
    B = images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    _, pred, mask = model(images, valid, generator=generator)  # (B, L, p*p*C), (B, L)
    if model.norm_pix_loss:
        # the model predicts each patch standardised over its valid values: undo it
        target = model.patchify(images)  # (B, L, p*p*C)
        weight = model.patchify(valid[:, None].float())  # (B, L, p*p)
        weight = weight.repeat_interleave(images.shape[1], dim=-1)  # (B, L, p*p*C), band fastest
        mean, std = patch_moments(torch.where(weight > 0, target, 0.0), weight)
        pred = pred * std + mean
    recon = model.unpatchify(pred)  # (B, C, H, W)
    removed = mask.reshape(B, h, w).repeat_interleave(p, 1).repeat_interleave(p, 2).bool()
    return recon, removed


def run(cfg: GeoGFMConfig, *, checkpoint: Path, cache: Path, manifest: Path, out: Path) -> dict:
    """Draw the reconstruction and loss-curve figures.

    Args:
        cfg: the configuration (``figures`` is used; the model comes from the checkpoint).
        checkpoint: the pretrain stage's ``checkpoint.pt``; its ``live/`` logs are read beside it.
        cache: the tile cache directory.
        manifest: the patch manifest.
        out: directory for the PNG files.

    Returns:
        The paths written.
    """
    model, ckpt = load_checkpoint(checkpoint)
    bands, stats = ckpt["bands"], ckpt["stats"]
    missing = [b for b in cfg.figures.rgb_bands if b not in bands]
    if missing:
        raise DataError(f"figures.rgb_bands {missing} are not among the checkpoint's bands {bands}")
    normalize = Normalize(stats, bands)
    dataset = StacPatchDataset(manifest, cache, split="val", bands=bands)
    if len(dataset) == 0:
        raise DataError(f"{manifest} has no validation patches to draw")
    n = min(cfg.figures.n_samples, len(dataset))
    picks = np.linspace(0, len(dataset) - 1, n).round().astype(int)
    samples = [dataset[int(i)] for i in picks]
    raw = torch.stack([torch.as_tensor(s["image"]) for s in samples])  # (N, C, H, W) reflectance
    valid = torch.stack([torch.as_tensor(s["valid"]) for s in samples])  # (N, H, W)
    images = torch.stack([normalize(dict(s))["image"] for s in samples])

    recon, removed = _reconstruct(model, images, valid, cfg.figures.seed)
    stat_index = [stats["bands"].index(b) for b in bands]
    mean = torch.tensor([stats["mean"][i] for i in stat_index])[:, None, None]
    std = torch.tensor([stats["std"][i] for i in stat_index])[:, None, None]
    recon_reflectance = (recon * std + mean).numpy()

    rgb_index = [bands.index(b) for b in cfg.figures.rgb_bands]
    rgb_stat = [stat_index[i] for i in rgb_index]
    pct = stats["percentiles"]
    lo_key, hi_key = ("2.0", "98.0") if "2.0" in pct and "98.0" in pct else (None, None)
    lo = [pct[lo_key][i] for i in rgb_stat] if lo_key else [stats["min"][i] for i in rgb_stat]
    hi = [pct[hi_key][i] for i in rgb_stat] if hi_key else [stats["max"][i] for i in rgb_stat]

    fig = plot_reconstructions(
        raw.numpy(),
        recon_reflectance,
        removed.numpy(),
        valid.numpy(),
        rgb_index=rgb_index,
        lo=lo,
        hi=hi,
        titles=[str(s["patch_id"]) for s in samples],
        mask_ratio=model.mask_ratio,
    )
    written = {"reconstructions": out / "reconstructions.png", "loss_curve": out / "loss_curve.png"}
    _save(fig, written["reconstructions"])

    plots = Path(checkpoint).parent / "live" / "plots" / "metrics"
    curves = {
        name: c
        for name, c in (
            ("train", _read_tsv(plots / "train" / "loss.tsv")),
            ("val", _read_tsv(plots / "val" / "loss.tsv")),
        )
        if c is not None
    }
    if not curves:
        raise DataError(f"no loss logs under {plots}; rerun `geogfm pretrain`")
    _save(plot_loss_curves(curves, lr=_read_tsv(plots / "train" / "lr.tsv")), written["loss_curve"])
    return {k: str(v) for k, v in written.items()}
