"""GeoViT: the Vision Transformer encoder of geogfm, for multispectral images of any band count.

An image (B, C, H, W) is cut into ``L = h * w`` patches of ``p x p`` pixels, each embedded to ``D``
channels; a fixed 2-D sine-cosine positional encoding is added, a learned class token is prepended,
and ``depth`` pre-norm transformer blocks and a final norm follow. Band count ``C`` comes from the
config (``model.in_chans = len(data.bands)``), never a literal.

The interface is timm's: ``forward_features`` -> (B, 1 + L, D) tokens, ``pool`` -> (B, D) (the class
token), ``forward_head`` (identity: no classifier here; probes add their own). The MAE wraps this
same object and calls ``forward_features(x, ids_keep)`` with only the kept tokens; probes, kNN and
figures call ``forward_features`` / ``forward``.

Design choices, as MAE: fixed (not learned) sincos positional encoding, xavier_uniform init of
every Linear and of the patch projection viewed as a Linear, normal(0.02) class token, LayerNorm.
Positional encodings are buffers recomputed from the config, so they are not in the state dict.
Single-date (B, C, H, W) inputs only.

References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``models_mae.py``).
    timm ``models/vision_transformer.py`` (forward_features / pool / forward_head).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from geogfm.core.config import ModelConfig
from geogfm.modules.blocks.transformer_block import TransformerBlock, init_weights
from geogfm.modules.embeddings.patch_embedding import PatchEmbed
from geogfm.modules.embeddings.positional_encoding import get_2d_sincos_pos_embed

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
    ``in_chans`` and ``drop_path``.

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

        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        pos = get_2d_sincos_pos_embed(D, self.patch_embed.grid_size, cls_token=True)  # (1 + L, D)
        self.register_buffer("pos_embed", pos[None], persistent=False)  # (1, 1 + L, D), fixed

        # stochastic depth grows linearly with depth, from 0 at the first block
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    D, cfg.num_heads, cfg.mlp_ratio, drop_path=dpr[i], norm_layer=norm_layer
                )
                for i in range(cfg.depth)
            ]
        )
        self.norm = norm_layer(D)
        self.head = nn.Identity()  # no classifier: features are the product
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # patch_embed like a Linear (D, p*p*C), as MAE; tokens normal(0.02); Linear / LayerNorm
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def forward_features(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Tokens of ``x`` (B, C, H, W): (B, 1 + L, D), or (B, 1 + L', D) keeping only ``ids_keep``.

        ``ids_keep`` (B, L') holds, per sample, the indices (in image order) of the patch tokens
        to keep (the MAE's visible patches); the class token is always first.
        """
        x = self.patch_embed(x)  # (B, L, D)
        B, L, D = x.shape
        x = x + self.pos_embed[:, 1:]  # position added before tokens are dropped
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, L', D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + L', D)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x

    def pool(self, x: Tensor) -> Tensor:
        """(B, 1 + L, D) tokens -> (B, D): the class token."""
        return x[:, 0]

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, 1 + L, D) tokens -> (B, D) pooled features (the head is the identity)."""
        return self.head(self.pool(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) image embedding."""
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------- presets
# Each returns a ModelConfig: the ViT size fixed, every other field (in_chans, image_size, decoder,
# ...) from ModelConfig's defaults or the keyword overrides:
#   encoder = GeoViTBackbone(PRESETS["gfm_vit_base"](in_chans=13, image_size=128))


def gfm_vit_tiny(**overrides: Any) -> ModelConfig:
    """ViT-Ti: 192 wide, 12 blocks, 3 heads."""
    return ModelConfig(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **overrides})


def gfm_vit_small(**overrides: Any) -> ModelConfig:
    """ViT-S: 384 wide, 12 blocks, 6 heads."""
    return ModelConfig(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **overrides})


def gfm_vit_base(**overrides: Any) -> ModelConfig:
    """ViT-B: 768 wide, 12 blocks, 12 heads."""
    return ModelConfig(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **overrides})


def gfm_vit_large(**overrides: Any) -> ModelConfig:
    """ViT-L: 1024 wide, 24 blocks, 16 heads."""
    return ModelConfig(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **overrides})


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "gfm_vit_tiny": gfm_vit_tiny,
    "gfm_vit_small": gfm_vit_small,
    "gfm_vit_base": gfm_vit_base,
    "gfm_vit_large": gfm_vit_large,
}
