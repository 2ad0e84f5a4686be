"""The MAE reconstruction loss, with nodata and cloud pixels left out.

MAE: mean squared error between predicted and true pixels, on the removed (masked) patches only.
Here each pixel value also carries a validity weight, from the data's ``valid`` mask patchified
like the image: 1 for a clear pixel, 0 for nodata, cloud or shadow. The loss is the weighted mean
over every (removed patch, pixel, band) value::

    loss = Σ mask · valid · (pred - target)² / Σ mask · valid

so invalid pixels never count, a removed patch with no valid pixel contributes nothing, and with
every pixel valid this is exactly MAE's loss (every patch then holds the same p·p·C values, so the
mean over values equals MAE's mean over patches of the per-patch mean). No valid removed pixel at
all gives a loss of 0 (with zero gradients), not NaN.

``norm_pix`` (MAE's ``norm_pix_loss``) is done here, not in the model, because it needs the
weights: each patch's target is standardised by the mean and (unbiased) variance of its *valid*
values only, over all of its p·p·C values as in MAE. Invalid target values are replaced by 0 before
anything else, so a NaN or fill value in a nodata pixel cannot leak into the loss or the gradients.

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``forward_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mae_loss", "patch_moments"]


def patch_moments(
    target: Tensor, weight: Tensor, *, eps: float = 1e-6, dims: tuple[int, ...] = (-1,)
) -> tuple[Tensor, Tensor]:
    """Mean and std of each patch's valid values, the ``norm_pix`` standardisation.

    Args:
        target: patches (B, L, K), invalid values already zeroed; or (B, L, p*p, C) with
            ``dims=(-2, -1)``.
        weight: 1 = valid value, broadcastable to ``target``: (B, L, K), or (B, L, p*p, 1) for
            one weight per pixel.
        eps: added to the (unbiased) variance.
        dims: the dimensions that hold one patch's values.

    Returns:
        mean and ``sqrt(var + eps)``, each (B, L, 1) (or (B, L, 1, 1)); ``pred * std + mean``
        undoes ``norm_pix``.
    """
    n = weight.expand_as(target).sum(dim=dims, keepdim=True)  # (B, L, 1) valid values per patch
    mean = (weight * target).sum(dim=dims, keepdim=True) / n.clamp_min(1.0)
    var = (weight * (target - mean) ** 2).sum(dim=dims, keepdim=True) / (n - 1).clamp_min(1.0)
    return mean, (var + eps) ** 0.5


def mae_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    valid: Tensor | None = None,
    *,
    norm_pix: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Masked-patch MSE over valid pixels.

    Args:
        pred: predicted patches (B, L, p*p*C).
        target: true patches (B, L, p*p*C), laid out as ``patchify`` does (band fastest).
        mask: (B, L), 1 = removed (these patches count), 0 = kept (ignored).
        valid: per-value weights, 1 = valid, 0 = invalid: (B, L, p*p) per pixel (applied to every
            band) or (B, L, p*p*C); bool or float. None: every pixel is valid.
        norm_pix: standardise each target patch by its valid values' mean and variance (MAE's
            ``norm_pix_loss``).
        eps: added to the variance in ``norm_pix``.

    Returns:
        The scalar loss, float32.
    """
    assert pred.shape == target.shape, f"pred {tuple(pred.shape)} != target {tuple(target.shape)}"
    B, L, K = target.shape
    assert mask.shape == (B, L), f"mask {tuple(mask.shape)} != {(B, L)}"
    pred, target = pred.float(), target.float()  # the loss in fp32 under AMP

    # one weight per pixel, broadcast over the bands: values as (B, L, pixels, bands) and weights
    # (B, L, pixels, 1), never copied C times (band is the fastest axis of a patch); no valid
    # mask: one weight of 1 per patch, (B, L, 1, 1)
    ones = target.new_ones(B, L, 1, 1)
    weight = ones if valid is None else valid.to(torch.float32)[..., None]  # (B, L, pp, 1)
    pp = weight.shape[2]
    assert weight.shape[:2] == (B, L) and K % pp == 0, f"valid {tuple(weight.shape)} vs {B, L, K}"
    pred = pred.reshape(B, L, pp, K // pp)  # (B, L, pp, C)
    target = target.reshape(B, L, pp, K // pp)
    if valid is not None:
        target = torch.where(weight > 0, target, 0.0)  # nodata may hold anything, even NaN

    if norm_pix:
        mean, std = patch_moments(target, weight, eps=eps, dims=(-2, -1))  # (B, L, 1, 1) each
        target = (target - mean) / std  # (B, L, pp, C)

    weight = weight * mask[..., None, None].to(torch.float32)  # (B, L, pp, 1): removed and valid
    sq_err = (pred - target) ** 2  # (B, L, pp, C)
    total = weight.sum() * (K // pp)  # removed and valid values
    return (weight * sq_err).sum() / total.clamp_min(torch.finfo(torch.float32).tiny)
