"""The pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

Owned here rather than imported from timm: MAE broke when timm changed ``Block``'s signature, and 40
lines are cheaper than that coupling. Each residual branch goes through stochastic depth
(``DropPath``), which is ``nn.Identity`` when its rate is 0, so ``forward`` has no branches.

References:
    Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    timm ``models/vision_transformer.py`` (Block) and ``layers/drop.py`` (DropPath).
"""

from __future__ import annotations

from torch import Tensor, nn

from geogfm.modules.attention.multihead_attention import MultiHeadAttention
from geogfm.modules.blocks.mlp import Mlp

__all__ = ["DropPath", "TransformerBlock", "drop_path", "init_weights"]


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


class TransformerBlock(nn.Module):
    """Pre-norm transformer block over (B, L, D) tokens.

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
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = MultiHeadAttention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, fused=fused_attn
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """(B, L, D) -> (B, L, D); masks as in :class:`MultiHeadAttention`."""
        x = x + self.drop_path1(self.attn(self.norm1(x), key_padding_mask, attn_mask))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
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
