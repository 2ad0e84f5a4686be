"""Masked autoencoder pretraining of the GeoViT encoder, for multispectral imagery with nodata.

MAE, read top to bottom: patchify an image (B, C, H, W) into ``L = h * w`` patches of ``p * p * C``
values; keep a random ``1 - mask_ratio`` of them per sample; encode only the kept ones with the
:class:`GeoViTBackbone`; let a light decoder (:class:`ReconstructionHead`) predict the pixels of
every patch from the encoded kept tokens plus mask tokens; score the prediction on the removed
patches only.

What differs from facebookresearch/mae ``models_mae.py``:

- any band count and non-square images: ``patchify(imgs, p)`` / ``unpatchify(x, p, C, h, w)``
  read ``C, h, w`` from their arguments, never 3 or a square;
- nodata and clouds: ``forward`` takes the (B, H, W) ``valid`` mask of the batch; it is patchified
  like the image and invalid pixels are left out of the loss, including the ``norm_pix`` statistics
  (see :func:`geogfm.modules.losses.mae_loss.mae_loss`);
- the masking noise comes from an optional ``torch.Generator``, so a mask can be reproduced
  (figures, evaluation) without touching the global RNG;
- the encoder is built outside and passed in, so probes and figures use the same object.

Mask convention (everywhere in geogfm): ``mask`` is (B, L) float, 0 = kept (visible to the encoder),
1 = removed (predicted and scored).

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
    facebookresearch/mae ``models_mae.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geogfm.core.config import ModelConfig
from geogfm.models.gfm_vit import GeoViTBackbone
from geogfm.modules.heads.reconstruction_head import ReconstructionHead
from geogfm.modules.losses.mae_loss import mae_loss

__all__ = ["MaskedAutoencoder", "num_kept", "patchify", "unpatchify"]


def patchify(imgs: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches row-major, values ordered (row, col, band)."""
    B, C, H, W = imgs.shape
    if H % p or W % p:
        raise ValueError(f"image size {(H, W)} is not a multiple of the patch size {p}")
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    x = torch.einsum("bchpwq->bhwpqc", x)  # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)  # (B, L, p*p*C)


def unpatchify(x: Tensor, p: int, C: int, h: int, w: int) -> Tensor:
    """(B, L, p*p*C) -> (B, C, h*p, w*p); the inverse of :func:`patchify`."""
    B, L, K = x.shape
    if h * w != L or p * p * C != K:
        raise ValueError(
            f"cannot unpatchify {tuple(x.shape)} with p={p}, C={C}, h={h}, w={w}: "
            f"expected (B, {h * w}, {p * p * C})"
        )
    x = x.reshape(B, h, w, p, p, C)
    x = torch.einsum("bhwpqc->bchpwq", x)  # (B, C, h, p, w, p)
    return x.reshape(B, C, h * p, w * p)  # (B, C, H, W)


def num_kept(L: int, mask_ratio: float) -> int:
    """Tokens the encoder sees: MAE's ``int(L * (1 - mask_ratio))``, i.e. rounded down.

    The product is rounded to 6 decimals first, so that float error cannot drop a token:
    ``10 * (1 - 0.9)`` is 0.999..., which keeps 1 token, not 0.
    """
    return int(round(L * (1.0 - mask_ratio), 6))


class MaskedAutoencoder(nn.Module):
    """MAE around a :class:`GeoViTBackbone`.

    Args:
        model_cfg: the model section (``patch_size``, ``in_chans``, ``decoder_*``, ``mask_ratio``,
            ``norm_pix_loss``, ``mlp_ratio``).
        encoder: the encoder, built from the same ``model_cfg``.

    Raises:
        ValueError: if the encoder was built from a different width, patch size or band count.
    """

    def __init__(self, model_cfg: ModelConfig, encoder: GeoViTBackbone) -> None:
        super().__init__()
        cfg = model_cfg
        pe = encoder.patch_embed
        built = (encoder.embed_dim, pe.patch_size, pe.in_chans, pe.image_size)
        wanted = (cfg.embed_dim, cfg.patch_size, cfg.in_chans, (cfg.image_size, cfg.image_size))
        if built != wanted:
            raise ValueError(
                f"encoder (embed_dim, patch_size, in_chans, image_size) = {built} does not match "
                f"model_cfg {wanted}; build the encoder as GeoViTBackbone(model_cfg)"
            )
        self.patch_size = cfg.patch_size  # p
        self.in_chans = cfg.in_chans  # C
        self.grid_size = pe.grid_size  # (h, w)
        self.mask_ratio = cfg.mask_ratio
        self.norm_pix_loss = cfg.norm_pix_loss

        # encoder: the ViT, seeing only kept patches
        self.encoder = encoder

        # decoder: mask tokens, blocks, per-patch pixel prediction
        self.decoder = ReconstructionHead(
            self.grid_size,
            cfg.patch_size,
            cfg.in_chans,
            cfg.embed_dim,
            decoder_embed_dim=cfg.decoder_embed_dim,
            decoder_depth=cfg.decoder_depth,
            decoder_num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
        )
        # weight init: each part initialises itself as MAE does (GeoViTBackbone.initialize_weights,
        # ReconstructionHead.initialize_weights), so a given encoder is not re-initialised here.

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, p*p*C) with this model's ``p``."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, L, p*p*C) -> (B, C, H, W) with this model's ``p``, ``C`` and grid."""
        h, w = self.grid_size
        return unpatchify(x, self.patch_size, self.in_chans, h, w)

    def random_masking(
        self,
        B: int,
        L: int,
        mask_ratio: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample random masking by argsort of uniform noise.

        Keeps exactly ``num_kept(L, mask_ratio)`` tokens per sample. The noise is drawn on the
        generator's device (CPU by default), then moved to ``device``, so a CPU generator gives the
        same masks on any device.

        Returns:
            ids_keep (B, L') indices of kept tokens; mask (B, L) float, 0 = keep, 1 = remove;
            ids_restore (B, L) the permutation back to image order.
        """
        len_keep = num_kept(L, mask_ratio)
        if not 0.0 <= mask_ratio < 1.0 or len_keep < 1:
            raise ValueError(
                f"mask_ratio={mask_ratio} keeps {len_keep} of {L} patches; use a mask_ratio in "
                f"[0, 1) that keeps at least one (at most {1 - 1 / L:.4f} here)"
            )
        noise_device = generator.device if generator is not None else device
        noise = torch.rand(B, L, generator=generator, device=noise_device).to(device)  # (B, L)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
        ids_keep = ids_shuffle[:, :len_keep]  # (B, L')

        # mask: 0 is keep, 1 is remove, in image order
        mask = torch.ones(B, L, device=device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (B, L)
        return ids_keep, mask, ids_restore

    def forward_encoder(
        self, imgs: Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the kept patches of ``imgs``: latent (B, 1 + L', D), mask (B, L), ids_restore."""
        B = imgs.shape[0]
        L = self.grid_size[0] * self.grid_size[1]
        ids_keep, mask, ids_restore = self.random_masking(
            B, L, mask_ratio, generator, device=imgs.device
        )
        latent = self.encoder.forward_features(imgs, ids_keep)  # (B, 1 + L', D)
        return latent, mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict every patch's pixels from the encoded kept tokens: (B, L, p*p*C)."""
        return self.decoder(latent, ids_restore)

    def forward_loss(
        self, imgs: Tensor, pred: Tensor, mask: Tensor, valid: Tensor | None = None
    ) -> Tensor:
        """MSE on removed patches over valid pixels; ``valid`` (B, H, W) bool or None (all valid).

        With ``norm_pix_loss`` the target patches are standardised over their valid pixels (in
        :func:`mae_loss`), and ``pred`` lives in that normalised space.
        """
        target = self.patchify(imgs)  # (B, L, p*p*C)
        weight = None
        if valid is not None:
            B, C, H, W = imgs.shape
            if valid.shape != (B, H, W):
                raise ValueError(
                    f"valid mask has shape {tuple(valid.shape)}, expected (B, H, W) = {(B, H, W)} "
                    f"for images of shape {tuple(imgs.shape)}"
                )
            weight = self.patchify(valid[:, None].to(imgs.dtype))  # (B, L, p*p), 1 = valid pixel
        return mae_loss(pred, target, mask, weight, norm_pix=self.norm_pix_loss)

    def forward(
        self,
        imgs: Tensor,
        valid: Tensor | None = None,
        *,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mask, encode, decode, score ``imgs`` (B, C, H, W).

        Args:
            imgs: normalised images (B, C, H, W).
            valid: (B, H, W) bool, True = clear pixel; None: all valid.
            mask_ratio: fraction of patches removed; default ``model_cfg.mask_ratio``.
            generator: source of the masking noise; default the global RNG.

        Returns:
            loss (scalar), pred (B, L, p*p*C), mask (B, L) with 1 = removed.
        """
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)  # (B, L, p*p*C)
        loss = self.forward_loss(imgs, pred, mask, valid)
        return loss, pred, mask
