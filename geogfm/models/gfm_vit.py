"""GeoViT: the Vision Transformer encoder of geogfm, for multispectral, multi-date images.

An image (B, C, H, W) is cut into ``L = h * w`` patches of ``p x p`` pixels, each embedded to ``D``
channels; a positional encoding of the patch's grid position is added, a learned class token is
prepended, and ``depth`` transformer blocks and a final norm follow. Band count ``C`` comes from the
config (``model.in_chans = len(data.bands)``), never a literal.

What a token can know, each switched by the config (``ModelConfig``):

- where in the image: ``pos_embed`` = ``sincos`` (fixed, MAE), ``learned`` or ``fourier``;
- when: ``num_frames = T > 1`` takes (B, T, C, H, W); every date (or tubelet of ``tubelet_size``
  dates) gets its own ``L`` tokens, ``N = T / tt * L`` in all, plus a fixed frame-index encoding;
  ``temporal_encoding`` adds the encoding of the actual dates, ``dates`` (B, T, 2) = (year,
  day-of-year) from :func:`date_features`;
- where on Earth: ``location_encoding`` adds the encoding of ``latlon`` (B, 2), degrees;
- which bands: ``patch_embed = spectral`` generates each band's kernel from its wavelength, so the
  encoder takes any band set (``wavelengths`` (C,) µm; default ``model.wavelengths``).

The interface is timm's: ``forward_features`` -> (B, 1 + N, D) tokens, ``pool`` -> (B, D) (the
class token), ``forward_head`` (identity: no classifier here; ``modules/heads`` hold the task
heads). The MAE wraps this same object and calls ``forward_features(x, ids_keep)`` with only the
kept tokens; probes, kNN and figures call ``forward_features`` / ``forward``. With
``model.fused_attn`` (the fused paths) only the kept patches are embedded and their encodings
gathered to them; the readable path embeds every patch and then drops the removed ones, as MAE.

Design choices, as MAE unless configured otherwise: fixed sincos positional encoding, pre-norm
blocks, xavier_uniform init of every Linear and of the patch projection viewed as a Linear,
normal(0.02) class token (which gets no positional term), LayerNorm. Fixed encodings are buffers
recomputed from the config, so they are not in the state dict. ``grad_checkpointing`` recomputes
each block in backward instead of storing its activations (for the large preset at large batch).

References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``models_mae.py``).
    Feichtenhofer et al., "Masked Autoencoders As Spatiotemporal Learners", NeurIPS 2022.
    timm ``models/vision_transformer.py`` (forward_features / pool / forward_head).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from geogfm.core.config import ModelConfig
from geogfm.modules.blocks.transformer_block import TransformerBlock, init_weights
from geogfm.modules.embeddings.geo_encoding import LocationEncoding, TemporalEncoding
from geogfm.modules.embeddings.patch_embedding import PatchEmbed, SpectralPatchEmbed
from geogfm.modules.embeddings.positional_encoding import build_pos_embed, get_frame_pos_embed

__all__ = [
    "PRESETS",
    "GeoViTBackbone",
    "gfm_vit_base",
    "gfm_vit_large",
    "gfm_vit_small",
    "gfm_vit_tiny",
]


class GeoViTBackbone(nn.Module):
    """ViT encoder built from a :class:`ModelConfig`.

    Reads ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``image_size``, ``patch_size``,
    ``in_chans``, ``drop_path``, ``patch_embed``, ``wavelengths``, ``pos_embed``, ``num_frames``,
    ``tubelet_size``, ``temporal_encoding``, ``location_encoding``, ``norm_position``,
    ``layer_scale``, ``fused_attn`` and ``grad_checkpointing``.

    Args:
        model_cfg: the model section of the config.
        norm_layer: normalisation type used in the blocks and at the end.
    """

    def __init__(self, model_cfg: ModelConfig, norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        cfg = model_cfg
        D = cfg.embed_dim
        self.embed_dim = self.num_features = D
        self.patch_size = cfg.patch_size
        self.in_chans = cfg.in_chans
        self.grad_checkpointing = cfg.grad_checkpointing
        # the fused path embeds only the tokens it keeps (the patch embedding commutes with
        # dropping tokens); the readable one embeds all, as MAE, then drops
        self.embed_kept_only = cfg.fused_attn

        # what: patches (tubelets) of every date -> (B, N, D)
        frames = dict(num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size)
        if cfg.patch_embed == "spectral":
            self.patch_embed = SpectralPatchEmbed(
                cfg.image_size, cfg.patch_size, D, cfg.wavelengths, **frames
            )
        else:
            linear = cfg.patch_embed == "linear"
            self.patch_embed = PatchEmbed(
                cfg.image_size, cfg.patch_size, cfg.in_chans, D, linear=linear, **frames
            )
        # where in the image, which frame (fixed; zeros for one frame), when, where on Earth
        self.pos_embed = build_pos_embed(cfg.pos_embed, D, self.patch_embed.grid_size)
        frame = get_frame_pos_embed(D, self.patch_embed.frames)  # (T/tt, D)
        self.register_buffer("frame_embed", frame[None, :, None], persistent=False)
        self.temporal_embed = TemporalEncoding(D) if cfg.temporal_encoding else None
        self.location_embed = LocationEncoding(D) if cfg.location_encoding else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))

        # stochastic depth grows linearly with depth, from 0 at the first block
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        pre_norm = cfg.norm_position == "pre"
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    D,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    fused_attn=cfg.fused_attn,
                    norm_first=pre_norm,
                    layer_scale=cfg.layer_scale,
                )
                for i in range(cfg.depth)
            ]
        )
        # pre-norm leaves the residual stream unnormalised: one norm at the end; post-norm ends
        # every block with a norm already
        self.norm = norm_layer(D) if pre_norm else nn.Identity()
        self.head = nn.Identity()  # no classifier: features are the product
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # a conv patch_embed like a Linear (D, p*p*C), as MAE; tokens normal(0.02); Linear and
        # LayerNorm by init_weights (the learned pos_embed initialises itself)
        proj = getattr(self.patch_embed, "proj", None)
        if isinstance(proj, nn.Conv2d | nn.Conv3d):
            w = proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def embed_tokens(
        self,
        x: Tensor,
        *,
        dates: Tensor | None = None,
        latlon: Tensor | None = None,
        wavelengths: Tensor | None = None,
        ids_keep: Tensor | None = None,
    ) -> Tensor:
        """Patch tokens of ``x`` (B, C, H, W) or (B, T, C, H, W) with every encoding: (B, N, D).

        ``ids_keep`` (B, N'): only these tokens, (B, N', D); the patch embedding then embeds only
        them, and the encodings of their positions are gathered to them.
        """
        B = x.shape[0]
        kept = {} if ids_keep is None else {"ids_keep": ids_keep}
        if wavelengths is None:
            x = self.patch_embed(x, **kept)  # (B, N, D), or (B, N', D)
        elif isinstance(self.patch_embed, SpectralPatchEmbed):
            x = self.patch_embed(x, wavelengths, **kept)  # (B, N, D), or (B, N', D)
        else:
            raise ValueError(
                "wavelengths were given but this encoder has a fixed band set; build it with "
                "model.patch_embed: spectral to take any bands"
            )
        D = x.shape[-1]
        t, L = self.patch_embed.frames, self.patch_embed.num_patches
        # where in the image + which frame, + when, + where on Earth: (B | 1, T/tt, L, D)
        enc = self.pos_embed()[:, None] + self.frame_embed  # (1, 1, L, D) + (1, T/tt, 1, D)
        if self.temporal_embed is not None or dates is not None:
            enc = enc + self._date_term(dates, B)  # + (B, T/tt, 1, D)
        if self.location_embed is not None or latlon is not None:
            enc = enc + self._place_term(latlon, B)  # + (B, 1, 1, D)
        enc = enc.reshape(-1, t * L, D).expand(B, -1, -1)  # (B, N, D)
        if ids_keep is not None:
            enc = torch.gather(enc, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, N', D)
        return x + enc

    def _date_term(self, dates: Tensor | None, B: int) -> Tensor:
        T, tt = self.patch_embed.num_frames, self.patch_embed.tubelet_size
        if self.temporal_embed is None or dates is None:
            raise ValueError(
                "model.temporal_encoding and dates go together: pass dates=(B, T, 2) (year, "
                "day-of-year; see date_features) with temporal_encoding: true, or neither"
            )
        dates = dates[:, None] if dates.ndim == 2 else dates  # (B, 2) for one date
        if dates.shape != (B, T, 2):
            raise ValueError(f"dates has shape {tuple(dates.shape)}, expected {B, T, 2}")
        e = self.temporal_embed(dates.to(self.cls_token.device))  # (B, T, D)
        return e.unflatten(1, (T // tt, tt)).mean(2)[:, :, None]  # (B, T/tt, 1, D): tubelet mean

    def _place_term(self, latlon: Tensor | None, B: int) -> Tensor:
        if self.location_embed is None or latlon is None:
            raise ValueError(
                "model.location_encoding and latlon go together: pass latlon=(B, 2) (degrees) "
                "with location_encoding: true, or neither"
            )
        if latlon.shape != (B, 2):
            raise ValueError(f"latlon has shape {tuple(latlon.shape)}, expected {B, 2}")
        return self.location_embed(latlon.to(self.cls_token.device))[:, None, None]  # (B,1,1,D)

    def forward_features(
        self,
        x: Tensor,
        ids_keep: Tensor | None = None,
        *,
        dates: Tensor | None = None,
        latlon: Tensor | None = None,
        wavelengths: Tensor | None = None,
    ) -> Tensor:
        """Tokens of ``x``: (B, 1 + N, D), or (B, 1 + N', D) keeping only ``ids_keep``.

        ``ids_keep`` (B, N') holds, per sample, the indices (in token order) of the patch tokens
        to keep (the MAE's visible patches); the class token is always first. ``dates``,
        ``latlon`` and ``wavelengths`` as in :meth:`embed_tokens`.
        """
        meta = dict(dates=dates, latlon=latlon, wavelengths=wavelengths)
        if ids_keep is not None and self.embed_kept_only:
            x = self.embed_tokens(x, ids_keep=ids_keep, **meta)  # (B, N', D): kept ones only
        else:  # MAE's order: embed every patch, add its position, then drop the removed ones
            x = self.embed_tokens(x, **meta)  # (B, N, D)
            if ids_keep is not None:
                D = x.shape[-1]
                x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, N', D)
        B = x.shape[0]
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N', D)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)  # keep only x, recompute in backward
            else:
                x = blk(x)
        x = self.norm(x)
        return x

    def pool(self, x: Tensor) -> Tensor:
        """(B, 1 + N, D) tokens -> (B, D): the class token."""
        return x[:, 0]

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, 1 + N, D) tokens -> (B, D) pooled features (the head is the identity)."""
        return self.head(self.pool(x))

    def forward(self, x: Tensor, **meta: Tensor | None) -> Tensor:
        """(B, [T,] C, H, W) -> (B, D) image embedding; ``meta``: dates, latlon, wavelengths."""
        return self.forward_head(self.forward_features(x, **meta))


# ----------------------------------------------------------------------------------------- presets
# Each returns a ModelConfig of one row of the size table ModelConfig.SIZES (encoder width, depth,
# heads and its decoder); every other field (in_chans, image_size, ...) from ModelConfig's defaults
# or the keyword overrides, which also win over the table (depth=1 for a toy model):
#   encoder = GeoViTBackbone(PRESETS["gfm_vit_base"](in_chans=13, image_size=128))
# In params.yaml the same table is `model.size: base`.


def gfm_vit_tiny(**overrides: Any) -> ModelConfig:
    """ViT-Ti: 192 wide, 12 blocks, 3 heads; decoder 128 wide, 2 blocks, 4 heads."""
    return ModelConfig(**{"size": "tiny", **overrides})


def gfm_vit_small(**overrides: Any) -> ModelConfig:
    """ViT-S: 384 wide, 12 blocks, 6 heads; decoder 256 wide, 4 blocks, 8 heads."""
    return ModelConfig(**{"size": "small", **overrides})


def gfm_vit_base(**overrides: Any) -> ModelConfig:
    """ViT-B: 768 wide, 12 blocks, 12 heads; MAE's decoder, 512 wide, 8 blocks, 16 heads."""
    return ModelConfig(**{"size": "base", **overrides})


def gfm_vit_large(**overrides: Any) -> ModelConfig:
    """ViT-L: 1024 wide, 24 blocks, 16 heads; MAE's decoder, 512 wide, 8 blocks, 16 heads."""
    return ModelConfig(**{"size": "large", **overrides})


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "gfm_vit_tiny": gfm_vit_tiny,
    "gfm_vit_small": gfm_vit_small,
    "gfm_vit_base": gfm_vit_base,
    "gfm_vit_large": gfm_vit_large,
}
