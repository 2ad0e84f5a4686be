"""Multi-head self-attention, written out.

One ``qkv`` projection, split into ``nh`` heads of width ``hd = D // nh``, then either the fused
kernel (``F.scaled_dot_product_attention``: flash / memory-efficient attention where the device has
them) or the same computation written out, ``softmax(q kᵀ / √hd) v``, kept as the readable branch
and as the reference the tests hold the fused path to.

Masks follow ``torch.nn.MultiheadAttention``: ``key_padding_mask`` is (B, L), bool True = this key
is ignored; ``attn_mask`` is broadcastable to (B, nh, L, L) ((L, L) for all), bool True = this query
may NOT attend to this key (the opposite of the bool convention of
``F.scaled_dot_product_attention``). A float mask of either kind is added to the scores (0 = attend,
-inf = not). Both are merged into one additive bias. A query row that may attend to nothing
(every key masked) gets a zero attention output instead of the NaN of a softmax over -inf only.

References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    nanoGPT ``model.py`` (CausalSelfAttention); timm ``layers/attention.py`` (``fused_attn``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention"]


def _as_bias(m: Tensor, dtype: torch.dtype) -> Tensor:
    # bool True = masked -> -inf; a float mask is already additive
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
    return m.to(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over a token sequence (B, L, D).

    Args:
        dim: token width ``D``.
        num_heads: number of heads ``nh``; ``dim`` must be divisible by it.
        qkv_bias: add a bias to the q, k, v projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        fused: use ``F.scaled_dot_product_attention``; False runs the explicit softmax path.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(
            dim, dim * 3, bias=qkv_bias
        )  # rows: [q; k; v], as nn.MultiheadAttention
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend ``x`` (B, L, D) to itself; masks as in the module docstring. Returns (B, L, D)."""
        B, L, D = x.shape
        nh, hd = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, L, 3, nh, hd).permute(2, 0, 3, 1, 4)  # (3, B, nh, L, hd)
        q, k, v = qkv.unbind(0)  # each (B, nh, L, hd)

        # one additive bias, broadcastable to (B, nh, L, L); -inf = may not attend
        bias = None
        if attn_mask is not None:
            bias = _as_bias(attn_mask, q.dtype)  # (L, L) or (B | 1, nh | 1, L, L)
        if key_padding_mask is not None:
            kpm = _as_bias(key_padding_mask, q.dtype)[:, None, None, :]  # (B, 1, 1, L)
            bias = kpm if bias is None else bias + kpm
        empty = None
        if bias is not None:
            # a row with every key masked would be softmax(-inf, ..., -inf) = NaN: let it attend
            # everywhere (finite), then zero its output below
            empty = torch.isneginf(bias).all(dim=-1, keepdim=True)  # (..., L, 1)
            bias = bias.masked_fill(empty, 0.0)

        if self.fused:
            dropout_p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, L, L)
            if bias is not None:
                attn = attn + bias
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v  # (B, nh, L, hd)
        if empty is not None:
            x = x.masked_fill(empty, 0.0)

        x = x.transpose(1, 2).reshape(B, L, D)  # (B, L, D), heads side by side
        x = self.proj(x)
        x = self.proj_drop(x)
        return x
