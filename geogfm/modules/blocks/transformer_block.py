"""The transformer block: attention then MLP, each a residual branch, pre-norm or post-norm.

Pre-norm (ViT, MAE, the default): ``x + attn(norm(x))``, then ``x + mlp(norm(x))``; the residual
stream is never normalised, which keeps deep stacks trainable without warmup tricks. Post-norm (the
original Transformer, BERT): ``norm(x + attn(x))``, then ``norm(x + mlp(x))``. Both are checked
against ``torch.nn.TransformerEncoderLayer`` (``norm_first=True / False``) in the tests.

Owned here rather than imported from timm: MAE broke when timm changed ``Block``'s signature, and 40
lines are cheaper than that coupling. Each residual branch goes through LayerScale (a learned
per-channel gain initialised small, CaiT) and stochastic depth (``DropPath``); each is
``nn.Identity`` when switched off, so ``forward`` has no branches for them.

References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (post-norm).
    Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020 (pre-norm).
    Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
    Touvron et al., "Going deeper with Image Transformers" (CaiT), ICCV 2021 (LayerScale).
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    timm ``models/vision_transformer.py`` (Block, LayerScale) and ``layers/drop.py`` (DropPath).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geogfm.modules.attention.multihead_attention import MultiHeadAttention
from geogfm.modules.blocks.mlp import Mlp

__all__ = ["DropPath", "LayerScale", "TransformerBlock", "drop_path", "init_weights"]


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Zero the residual branch of each sample with prob ``drop_prob``; rescale the others."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, 1): one draw per sample
    keep = x.new_empty(shape).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Stochastic depth per sample, as a module (active in training mode only)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    """Scale each channel of a residual branch by a learned gain, initially ``init_values``."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma  # (B, L, D) * (D,)


class TransformerBlock(nn.Module):
    """Transformer block over (B, L, D) tokens, pre-norm (default) or post-norm.

    Args:
        dim: token width ``D``.
        num_heads: attention heads ``nh``.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: bias on the q, k, v projections.
        drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate of both residual branches.
        act_layer: MLP activation type.
        norm_layer: normalisation type, instantiated as ``norm_layer(dim)``.
        fused_attn: use ``F.scaled_dot_product_attention``.
        norm_first: True: pre-norm ``x + f(norm(x))``; False: post-norm ``norm(x + f(x))``.
        layer_scale: LayerScale init value of both branches; None: no LayerScale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        fused_attn: bool = True,
        norm_first: bool = True,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = norm_layer(dim)
        self.attn = MultiHeadAttention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, fused=fused_attn
        )
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """(B, L, D) -> (B, L, D); masks as in :class:`MultiHeadAttention`."""
        if self.norm_first:  # pre-norm: normalise the branch input, never the residual stream
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), key_padding_mask, attn_mask)))
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        else:  # post-norm: normalise after each residual sum
            x = self.norm1(x + self.drop_path1(self.ls1(self.attn(x, key_padding_mask, attn_mask))))
            x = self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))
        return x


def init_weights(m: nn.Module) -> None:
    """MAE / ViT init of one module, for ``model.apply(init_weights)``.

    xavier_uniform Linear weights, zero Linear biases, LayerNorm weight 1 and bias 0; other modules
    are left as they are.
    """
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
