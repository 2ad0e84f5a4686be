"""Masked autoencoder pretraining of the GeoViT encoder, for multispectral imagery with nodata.

MAE, read top to bottom: patchify an image (B, C, H, W) into ``L = h * w`` patches of ``p * p * C``
values; keep a random ``1 - mask_ratio`` of them per sample; encode only the kept ones with the
:class:`GeoViTBackbone`; let a light decoder (:class:`ReconstructionHead`) predict the pixels of
every patch from the encoded kept tokens plus mask tokens; score the prediction on the removed
patches only.

What differs from facebookresearch/mae ``models_mae.py``:

- any band count and non-square images: ``patchify(imgs, p)`` / ``unpatchify(x, p, C, h, w)``
  read ``C, h, w`` from their arguments, never 3 or a square;
- several dates (MAE-ST): with ``num_frames = T > 1`` an input is (B, T, C, H, W) and its
  ``N = T / tt * L`` tubelet tokens are masked together at random ("spacetime-agnostic" masking),
  ``patchify`` / ``unpatchify`` take ``T`` and the tubelet size ``tt``; read ``N`` for ``L`` below;
- nodata and clouds: ``forward`` takes the (B, [T,] H, W) ``valid`` mask of the batch; it is
  patchified like the image and invalid pixels are left out of the loss, including the
  ``norm_pix`` statistics (see :func:`geogfm.modules.losses.mae_loss.mae_loss`);
- the masking noise comes from an optional ``torch.Generator``, so a mask can be reproduced
  (figures, evaluation) without touching the global RNG; or it is passed in as ``noise``, which is
  what a ``torch.compile``'d model needs (a Generator cannot be traced: draw the noise with
  ``masking_noise`` outside the compiled call);
- the kept count is ``round(L * (1 - mask_ratio))`` (nearest, halves up; MAE floors), see
  :func:`num_kept`;
- the encoder is built outside and passed in, so probes and figures use the same object;
- a training step needs only the loss: ``forward(..., return_pred=False)`` returns no prediction,
  and the fused path (``model.fused_attn``) then predicts only the removed patches, the only ones
  the loss reads (the decoder's final norm and projection act on each token alone); the readable
  path still predicts every patch, as MAE.

Mask convention (everywhere in geogfm): ``mask`` is (B, L) float, 0 = kept (visible to the encoder),
1 = removed (predicted and scored).

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
    Feichtenhofer et al., "Masked Autoencoders As Spatiotemporal Learners", NeurIPS 2022.
    facebookresearch/mae ``models_mae.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from geogfm.core.config import ModelConfig
from geogfm.models.gfm_vit import GeoViTBackbone
from geogfm.modules.embeddings.patch_embedding import patchify, unpatchify
from geogfm.modules.heads.reconstruction_head import ReconstructionHead
from geogfm.modules.losses.mae_loss import mae_loss

__all__ = ["MaskedAutoencoder", "num_kept", "patchify", "unpatchify"]

# patchify(imgs, p, tt) and unpatchify(x, p, C, h, w, T, tt) live beside the patch embedding
# (geogfm/modules/embeddings/patch_embedding.py), whose Linear form is Linear(patchify(x)):
#   (B, C, H, W)    -> (B, L, p*p*C)        token i*w + j = patch (i, j), values (row, col, band)
#   (B, T, C, H, W) -> (B, T/tt*L, tt*p*p*C) frame-major, values (frame, row, col, band)


def num_kept(L: int, mask_ratio: float) -> int:
    """Tokens the encoder sees: ``round(L * (1 - mask_ratio))``, the nearest integer, halves up.

    The product is rounded to 6 decimals first, so that float error cannot move it across a half:
    ``10 * (1 - 0.75)`` is 2.5 and keeps 3. (MAE's ``int(...)`` floors instead; the two agree
    whenever ``L * (1 - mask_ratio)`` is an integer, e.g. 49 of 196 at 0.75.)
    """
    return math.floor(round(L * (1.0 - mask_ratio), 6) + 0.5)


def _rows(x: Tensor, ids: Tensor) -> Tensor:
    """Tokens ``ids`` (B, M) of ``x`` (B, L, K): (B, M, K)."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


class MaskedAutoencoder(nn.Module):
    """MAE around a :class:`GeoViTBackbone`.

    Args:
        model_cfg: the model section (``patch_size``, ``in_chans``, ``num_frames``,
            ``tubelet_size``, ``decoder_*``, ``mask_ratio``, ``norm_pix_loss``, ``mlp_ratio``,
            ``fused_attn``, ``grad_checkpointing``).
        encoder: the encoder, built from the same ``model_cfg``.

    Raises:
        ValueError: if the encoder was built from a different width, patch size, band count,
            image size or number of dates.
    """

    def __init__(self, model_cfg: ModelConfig, encoder: GeoViTBackbone) -> None:
        super().__init__()
        cfg = model_cfg
        pe = encoder.patch_embed
        built = (encoder.embed_dim, pe.patch_size, pe.in_chans, pe.image_size)
        built += (pe.num_frames, pe.tubelet_size)
        wanted = (cfg.embed_dim, cfg.patch_size, cfg.in_chans, (cfg.image_size, cfg.image_size))
        wanted += (cfg.num_frames, cfg.tubelet_size)
        if built != wanted:
            raise ValueError(
                f"encoder (embed_dim, patch_size, in_chans, image_size, num_frames, tubelet_size)"
                f" = {built} does not match model_cfg {wanted}; build the encoder as "
                f"GeoViTBackbone(model_cfg)"
            )
        self.patch_size = cfg.patch_size  # p
        self.in_chans = cfg.in_chans  # C
        self.grid_size = pe.grid_size  # (h, w)
        self.num_frames = cfg.num_frames  # T
        self.tubelet_size = cfg.tubelet_size  # tt
        self.num_patches = pe.num_tokens  # N = T/tt * h * w (L for one date)
        self.mask_ratio = cfg.mask_ratio
        self.norm_pix_loss = cfg.norm_pix_loss
        # the fused path predicts only the removed patches when no prediction is returned
        self.predict_removed_only = cfg.fused_attn

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
            num_frames=cfg.num_frames,
            tubelet_size=cfg.tubelet_size,
            fused_attn=cfg.fused_attn,
            grad_checkpointing=cfg.grad_checkpointing,
        )
        # weight init: each part initialises itself as MAE does (GeoViTBackbone.initialize_weights,
        # ReconstructionHead.initialize_weights), so a given encoder is not re-initialised here.

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, [T,] C, H, W) -> (B, N, tt*p*p*C) with this model's ``p`` and tubelet size."""
        return patchify(imgs, self.patch_size, self.tubelet_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, tt*p*p*C) -> (B, C, H, W) for one date, else (B, T, C, H, W)."""
        h, w = self.grid_size
        T = None if self.num_frames == 1 else self.num_frames
        return unpatchify(x, self.patch_size, self.in_chans, h, w, T, self.tubelet_size)

    def masking_noise(
        self,
        B: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Uniform noise (B, N) that decides the masks.

        Drawn on the generator's device (CPU by default) and moved to ``device``: a CPU generator
        gives the same masks on any device. Call it outside a ``torch.compile``'d model.
        """
        noise_device = generator.device if generator is not None else device
        return torch.rand(B, self.num_patches, generator=generator, device=noise_device).to(device)

    def random_masking(self, noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample random masking by argsort of ``noise`` (B, L): the smallest are kept.

        Keeps exactly ``num_kept(L, mask_ratio)`` tokens per sample.

        Returns:
            ids_keep (B, L') indices of kept tokens; mask (B, L) float, 0 = keep, 1 = remove;
            ids_restore (B, L) the permutation back to image order.
        """
        B, L = noise.shape
        len_keep = num_kept(L, mask_ratio)
        if not 0.0 <= mask_ratio < 1.0 or len_keep < 1:
            raise ValueError(
                f"mask_ratio={mask_ratio} keeps {len_keep} of {L} patches; use a mask_ratio in "
                f"[0, 1) that keeps at least one (at most {1 - 0.5 / L:.4f} here)"
            )
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
        ids_keep = ids_shuffle[:, :len_keep]  # (B, L')

        # mask: 0 is keep, 1 is remove, in image order
        mask = torch.ones(B, L, device=noise.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (B, L)
        return ids_keep, mask, ids_restore

    def forward_encoder(
        self, imgs: Tensor, mask_ratio: float, noise: Tensor, **meta: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the kept patches of ``imgs``: latent (B, 1 + L', D), mask (B, L), ids_restore.

        ``meta``: ``dates`` / ``latlon`` for the encoder (see :class:`GeoViTBackbone`).
        """
        ids_keep, mask, ids_restore = self.random_masking(noise, mask_ratio)
        latent = self.encoder.forward_features(imgs, ids_keep, **meta)  # (B, 1 + L', D)
        return latent, mask, ids_restore

    def forward_decoder(
        self, latent: Tensor, ids_restore: Tensor, ids_pred: Tensor | None = None
    ) -> Tensor:
        """Predict every patch's pixels from the encoded kept tokens: (B, L, p*p*C).

        ``ids_pred`` (B, M): only these patches' pixels, (B, M, p*p*C).
        """
        return self.decoder(latent, ids_restore, ids_pred)

    def forward_loss(
        self,
        imgs: Tensor,
        pred: Tensor,
        mask: Tensor,
        valid: Tensor | None = None,
        ids_pred: Tensor | None = None,
    ) -> Tensor:
        """MSE on removed patches over valid pixels; ``valid`` (B, [T,] H, W) bool or None.

        With ``norm_pix_loss`` the target patches are standardised over their valid pixels (in
        :func:`mae_loss`), and ``pred`` lives in that normalised space. ``ids_pred`` (B, M):
        ``pred`` (B, M, p*p*C) holds only these patches; the targets, weights and mask are
        gathered to them.
        """
        target = self.patchify(imgs)  # (B, L, p*p*C)
        weight = None
        if valid is not None:
            expected = imgs.shape[:-3] + imgs.shape[-2:]  # (B, H, W) or (B, T, H, W)
            if valid.shape != expected:
                raise ValueError(
                    f"valid mask has shape {tuple(valid.shape)}, expected {tuple(expected)} "
                    f"for images of shape {tuple(imgs.shape)}"
                )
            weight = self.patchify(valid.unsqueeze(-3).to(imgs.dtype))  # (B, L, tt*p*p)
        if ids_pred is not None:  # only the predicted patches: (B, M, ...)
            target = _rows(target, ids_pred)
            weight = None if weight is None else _rows(weight, ids_pred)
            mask = torch.gather(mask, 1, ids_pred)
        return mae_loss(pred, target, mask, weight, norm_pix=self.norm_pix_loss)

    def forward(
        self,
        imgs: Tensor,
        valid: Tensor | None = None,
        *,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        dates: Tensor | None = None,
        latlon: Tensor | None = None,
        return_pred: bool = True,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Mask, encode, decode, score ``imgs`` (B, C, H, W) or (B, T, C, H, W).

        Args:
            imgs: normalised images (B, C, H, W), or (B, T, C, H, W) with ``T = num_frames``.
            valid: (B, [T,] H, W) bool, True = clear pixel; None: all valid.
            mask_ratio: fraction of patches removed; default ``model_cfg.mask_ratio``.
            generator: source of the masking noise; default the global RNG.
            noise: the masking noise (B, L) itself (see :meth:`masking_noise`); overrides
                ``generator``. Pass it to a ``torch.compile``'d model.
            dates: (B, T, 2) (year, day-of-year), with ``model.temporal_encoding``.
            latlon: (B, 2) degrees, with ``model.location_encoding``.
            return_pred: False: return None for ``pred``; the fused path then predicts only the
                removed patches (a training step needs only the loss). Same loss either way.

        Returns:
            loss (scalar), pred (B, L, p*p*C) or None, mask (B, L) with 1 = removed.
        """
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        B, L = imgs.shape[0], self.num_patches
        if noise is None:
            noise = self.masking_noise(B, generator, imgs.device)  # (B, L)
        elif noise.shape != (B, L):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected (B, L) = {B, L}")
        meta = {"dates": dates, "latlon": latlon}
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise, **meta)
        ids_pred = None
        if not return_pred and self.predict_removed_only:
            # the removed patches, the only ones the loss reads: the tail of the shuffle
            ids_shuffle = torch.argsort(ids_restore, dim=1)  # exact: ids_restore is a permutation
            ids_pred = ids_shuffle[:, num_kept(L, mask_ratio) :]  # (B, L - L')
        pred = self.forward_decoder(latent, ids_restore, ids_pred)  # (B, L | L - L', p*p*C)
        loss = self.forward_loss(imgs, pred, mask, valid, ids_pred)
        return loss, (pred if return_pred else None), mask
