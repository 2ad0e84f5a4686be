"""Frozen embeddings and MAE reconstructions of a batch of images, and the reconstruction baselines.

Everything here works on normalised images (what the model sees) as tensors: ``(N, C, H, W)``
single-date or ``(N, T, C, H, W)`` multi-date, ``valid`` ``(N, [T,] H, W)`` bool.

- :func:`encode`: pooled embeddings (mean of the patch tokens, or the class token) and the patch
  tokens on their ``(h, w)`` grid (averaged over dates for multi-date input);
- :func:`reconstruct`: the MAE's reconstruction with a seeded mask, and the removed pixels; with
  ``norm_pix_loss`` the model predicts each removed patch standardised by the mean and std of its
  own valid values, so those two numbers per patch are taken from the truth, as MAE's target
  defines (He et al. 2022, Sec. 4);
- the baselines it is compared with: ``token_mean`` from :func:`reconstruct` (each removed patch
  filled with the mean the norm-pix reconstruction uses: the same knowledge of the truth, no
  model) and :func:`patch_mean_baseline` (each image's per-band mean over its visible valid
  pixels: what a predictor that sees only what the encoder sees outputs, with no model).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from geogfm.modules.losses.mae_loss import patch_moments

__all__ = ["encode", "patch_mean_baseline", "reconstruct"]


@torch.no_grad()
def encode(
    encoder: torch.nn.Module,
    images: Tensor,
    *,
    pool: Literal["mean", "cls"] = "mean",
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed images with a frozen :class:`~geogfm.models.gfm_vit.GeoViTBackbone`.

    Args:
        encoder: the encoder (put in eval mode here).
        images: (N, [T,] C, H, W) normalised.
        pool: ``"mean"`` of the patch tokens (MAE's choice for its fine-tuned models; robust
            for an MAE, whose class token gets no direct loss) or the ``"cls"`` token.
        batch_size: images per forward pass.

    Returns:
        ``pooled`` (N, D) float32 and ``tokens`` (N, h, w, D) float32.
    """
    encoder.eval()
    h, w = encoder.patch_embed.grid_size
    pooled, tokens = [], []
    for start in range(0, len(images), batch_size):
        x = encoder.forward_features(images[start : start + batch_size])  # (B, 1 + N, D)
        B, _, D = x.shape
        patches = x[:, 1:].reshape(B, -1, h, w, D).mean(1)  # (B, h, w, D): dates averaged
        pooled.append(x[:, 0] if pool == "cls" else x[:, 1:].mean(1))  # (B, D)
        tokens.append(patches)
    return torch.cat(pooled).float().numpy(), torch.cat(tokens).float().numpy()


def _removed_pixels(model, mask: Tensor) -> Tensor:
    """(B, N) token mask, 1 = removed -> (B, [T,] H, W) bool pixels."""
    p, (h, w), tt = model.patch_size, model.grid_size, model.tubelet_size
    B = mask.shape[0]
    m = mask.reshape(B, -1, h, w).repeat_interleave(p, -2).repeat_interleave(p, -1)  # (B,T/tt,H,W)
    if model.num_frames == 1:
        return m[:, 0].bool()
    return m.repeat_interleave(tt, 1).bool()  # (B, T, H, W)


def _moments(model, images: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Each patch's mean and std over its valid values (norm_pix's), (B, N, 1) each."""
    target = model.patchify(torch.where(valid.unsqueeze(-3), images, 0.0))  # (B, N, K)
    weight = model.patchify(valid.unsqueeze(-3).expand_as(images).float())  # (B, N, K)
    return patch_moments(target, weight)


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module, images: Tensor, valid: Tensor, *, seed: int, batch_size: int = 128
) -> dict[str, Tensor]:
    """MAE reconstructions with a reproducible mask, and the token-mean baseline.

    Args:
        model: a :class:`~geogfm.models.gfm_mae.MaskedAutoencoder`.
        images: (N, [T,] C, H, W) normalised.
        valid: (N, [T,] H, W) bool.
        seed: seed of the masks (one generator for the whole set).
        batch_size: images per forward pass.

    Returns:
        ``recon`` (like ``images``, normalised units), ``removed`` (N, [T,] H, W) bool,
        ``token_mean`` (like ``images``): every patch filled with the mean of its valid values
        over all its bands (norm-pix's zero).
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    recon, removed, token_mean = [], [], []
    for start in range(0, len(images), batch_size):
        x, v = images[start : start + batch_size], valid[start : start + batch_size]
        _, pred, mask = model(x, v, generator=generator)  # (B, N, K), (B, N)
        mean, std = _moments(model, x, v)
        if model.norm_pix_loss:
            pred = pred * std + mean  # undo the per-patch standardisation of the target
        recon.append(model.unpatchify(pred))
        removed.append(_removed_pixels(model, mask))
        token_mean.append(model.unpatchify(mean.expand_as(pred)))
    return {
        "recon": torch.cat(recon),
        "removed": torch.cat(removed),
        "token_mean": torch.cat(token_mean),
    }


def patch_mean_baseline(images: Tensor, valid: Tensor, removed: Tensor) -> Tensor:
    """Each image (and date) filled, per band, with the mean of its visible valid pixels.

    Args:
        images: (N, [T,] C, H, W).
        valid: (N, [T,] H, W) bool.
        removed: (N, [T,] H, W) bool, the pixels the encoder did not see.

    Returns:
        Like ``images``; a band with no visible valid pixel gets 0 (the training mean, in
        normalised units).
    """
    seen = (valid & ~removed).unsqueeze(-3).float()  # (N, [T,] 1, H, W)
    total = (images * seen).sum(dim=(-2, -1), keepdim=True)
    count = seen.sum(dim=(-2, -1), keepdim=True)
    return (total / count.clamp_min(1.0)).expand_as(images)
