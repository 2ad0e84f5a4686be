"""One optimisation step and one evaluation step of the masked autoencoder, and validation.

Batches are dicts from :func:`geogfm.data.loaders.build_dataloader`:
``{"image": (B, C, H, W) uint16 DN, "valid": (B, H, W) bool, "normalize": ..., ...}``; the batch's
``normalize`` turns the DN into float32 z-scores once they are on the device (:func:`_to_device`).
Batches of float32 images without ``normalize`` are used as they are.

Masks come from masking noise drawn from a CPU ``torch.Generator`` outside the model (so a
``torch.compile``'d model sees a plain tensor, and the masks are the same on any device). Under
DDP every rank draws the noise of the whole global batch and keeps its own rows: rank ``r`` holds
rows ``r::world`` of the global batch (see :class:`geogfm.data.loaders.EpochSampler`), so the
masks are those of a single process training on the global batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from geogfm.modules.losses.mae_loss import patch_moments

__all__ = ["eval_step", "evaluate", "resolve_device", "train_step", "unwrap"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f'train.device is "{name}" but CUDA is not available; use "auto" or "cpu"')
    return torch.device(name)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` and DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _autocast(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return nullcontext()


def _to_device(batch: dict, device: torch.device) -> tuple[Tensor, Tensor]:
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


def _noise(model, B, generator, device, shard: tuple[int, int]) -> Tensor:
    rank, world = shard
    noise = unwrap(model).masking_noise(B * world, generator, "cpu")  # (B * world, L)
    return noise[rank::world].to(device, non_blocking=True)  # (B, L): this rank's rows


def _global_loss(model, loss: Tensor, valid: Tensor, mask: Tensor, world: int):
    """This rank's loss, scaled so that DDP's gradient mean is the global batch's; the global loss.

    The MAE loss is a mean over the removed, valid values of the batch: ``S_r / W_r`` on rank
    ``r``. DDP averages gradients over ranks, so a rank's loss is scaled by ``W_r * world / W``
    (``W = sum_r W_r``, one all-reduce): the mean of the gradients is then that of ``S / W``,
    the loss of a single process on the global batch, however the valid pixels fall.
    """
    raw = unwrap(model)
    per_patch = raw.patchify(valid.unsqueeze(-3).float()).sum(-1)  # (B, L) valid pixels
    weight = (per_patch * mask).sum()  # W_r, up to the band count (the same on every rank)
    sums = torch.stack([weight, loss.detach().float() * weight])
    torch.distributed.all_reduce(sums)  # (W, S)
    total = sums[0].clamp_min(1e-12)
    return loss * (weight * world / total), (sums[1] / total).item()


def train_step(
    model: nn.Module,
    batch: dict | list[dict],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    precision: str = "fp32",
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
    shard: tuple[int, int] = (0, 1),
) -> float:
    """One optimizer step over a batch, or over a list of micro-batches (gradient accumulation).

    The micro-batches' losses are averaged (each is scaled by ``1 / len(batch)`` before its
    backward), so ``k`` micro-batches of ``b`` act like one batch of ``k * b``.

    Args:
        model: the MAE, or a DDP / compiled wrapper of it.
        batch: a batch dict, or a list of them.
        optimizer: the optimizer.
        device: where to compute.
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast; pass ``scaler``).
        grad_clip: max gradient norm, or None.
        generator: the masking noise's CPU generator.
        scaler: a gradient scaler for fp16, or None.
        shard: ``(rank, world_size)`` under DDP.

    Returns:
        The mean loss of the micro-batches.

    Raises:
        FloatingPointError: when a loss is NaN or infinite; nothing is updated.
    """
    micro = [batch] if isinstance(batch, dict) else list(batch)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for k, b in enumerate(micro):
        imgs, valid = _to_device(b, device)
        noise = _noise(model, imgs.shape[0], generator, device, shard)
        last = k == len(micro) - 1
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with _autocast(device, precision):
                loss, _, mask = model(imgs, valid, noise=noise, return_pred=False)
            if shard[1] > 1:
                loss, value = _global_loss(model, loss, valid, mask, shard[1])
            else:
                value = loss.item()
            if not math.isfinite(value):
                optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(f"non-finite loss {value}")
            loss = loss / len(micro)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += value
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the fp16 gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    return total / len(micro)


@torch.no_grad()
def _eval_batch(model, batch, *, device, precision, generator) -> tuple[float, float, float]:
    """(loss, sum of squared errors, count) of one batch's removed, valid values."""
    model.eval()
    raw = unwrap(model)
    imgs, valid = _to_device(batch, device)
    noise = raw.masking_noise(imgs.shape[0], generator, device)  # (B, L)
    with _autocast(device, precision):
        loss, pred, mask = model(imgs, valid, noise=noise)
    target = raw.patchify(imgs).float()  # (B, L, K) z-scores
    weight = raw.patchify(valid.unsqueeze(-3).float())  # (B, L, tt*p*p)
    B, L, K = target.shape
    weight = weight[..., None].expand(B, L, weight.shape[-1], K // weight.shape[-1])
    weight = weight.reshape(B, L, K)  # (B, L, K): 1 = valid value
    pred = pred.float()
    if raw.norm_pix_loss:  # pred is in per-patch standardised units: back to z-scores
        mean, std = patch_moments(torch.where(weight > 0, target, 0.0), weight)
        pred = pred * std + mean
    weight = weight * mask[..., None]  # removed and valid
    sse = (weight * (pred - target) ** 2).sum().item()
    return loss.item(), sse, weight.sum().item()


def eval_step(
    model: nn.Module,
    batch: dict,
    *,
    device: torch.device,
    precision: str = "fp32",
    generator: torch.Generator | None = None,
) -> float:
    """The masked-reconstruction loss of one batch, without gradients."""
    loss, _, _ = _eval_batch(model, batch, device=device, precision=precision, generator=generator)
    return loss


def evaluate(model, loader, *, device, precision: str = "fp32", seed: int = 0) -> dict:
    """Validation loss and PSNR over ``loader``, on masks drawn from ``seed`` (the same each call).

    ``psnr`` is ``10 log10(1 / MSE)`` over the removed (masked), valid pixel values of every
    band, in normalised units (z-scores: each band's statistics), so the peak is one standard
    deviation of the band; with ``norm_pix_loss`` the prediction is first mapped back from the
    per-patch standardisation with the true patch's mean and std (as MAE's figures do).

    Returns:
        ``{"val_loss": mean loss per image, "val_psnr": dB}`` (NaN for an empty loader).
    """
    generator = torch.Generator().manual_seed(seed)
    loss_sum, sse, count, n = 0.0, 0.0, 0.0, 0
    for batch in loader:
        b = len(batch["image"])
        loss, s, c = _eval_batch(
            model, batch, device=device, precision=precision, generator=generator
        )
        loss_sum, sse, count, n = loss_sum + b * loss, sse + s, count + c, n + b
    psnr = 10.0 * math.log10(count / sse) if sse > 0 else math.inf
    return {
        "val_loss": loss_sum / n if n else math.nan,
        "val_psnr": psnr if count else math.nan,
    }
