"""Fixed 2-D sine-cosine positional encoding for an (h, w) grid of patch tokens.

Half of the ``D`` channels encode the token's column, half its row, each with the 1-D transformer
encoding ``[sin(pos * ω_i), cos(pos * ω_i)]``, ``ω_i = 1 / 10000^(2i / (D/2))``. As in MAE the
first half encodes the column (x) and the second the row (y), so a square grid gives MAE's table
exactly; unlike MAE's ``get_2d_sincos_pos_embed`` the grid may be non-square. Rows are ordered
row-major (token ``i * w + j`` is row ``i``, column ``j``), as :class:`PatchEmbed` emits them.
Computed in float64, returned as float32.

References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (1-D sine-cosine encoding).
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
    (facebookresearch/mae ``util/pos_embed.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["get_1d_sincos_pos_embed", "get_2d_sincos_pos_embed"]


def get_1d_sincos_pos_embed(embed_dim: int, pos: Tensor) -> Tensor:
    """Encode positions ``pos`` (M,) as (M, embed_dim) float64: sines then cosines."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim={embed_dim} must be even for a sine-cosine encoding")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    out = pos.to(torch.float64).reshape(-1)[:, None] * omega[None, :]  # (M, D/2)
    return torch.cat([out.sin(), out.cos()], dim=1)  # (M, D)


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> Tensor:
    """The (h * w, D) encoding of an (h, w) grid, with a leading zero row if ``cls_token``.

    Args:
        embed_dim: ``D``; a multiple of 4 (sin and cos for each of two axes).
        grid_size: ``h`` (square) or ``(h, w)`` tokens.
        cls_token: prepend a zero row for the class token, giving (1 + h * w, D).

    Returns:
        float32 tensor (h * w, D) or (1 + h * w, D).

    Raises:
        ValueError: if ``embed_dim`` is not a multiple of 4.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim} must be a multiple of 4 for a 2-D sincos encoding")
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (h, w) each
    emb_x = get_1d_sincos_pos_embed(embed_dim // 2, cols.flatten())  # (L, D/2)
    emb_y = get_1d_sincos_pos_embed(embed_dim // 2, rows.flatten())  # (L, D/2)
    emb = torch.cat([emb_x, emb_y], dim=1).float()  # (L, D)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim), emb], dim=0)  # (1 + L, D)
    return emb
