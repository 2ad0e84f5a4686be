"""Where a patch token sits in its (h, w) grid: fixed sine-cosine, learned, or Fourier features.

Three encodings of the grid position, all modules whose ``forward()`` returns the (1, L, D) table
that the encoder adds to its ``L = h * w`` patch tokens (row-major: token ``i * w + j`` is row
``i``, column ``j``, as :class:`PatchEmbed` emits them):

- ``SinCosPosEmbed``: MAE's fixed 2-D sine-cosine table. Half of the ``D`` channels encode the
  column, half the row, each with the 1-D transformer encoding ``[sin(pos * ω_i), cos(pos * ω_i)]``,
  ``ω_i = 1 / 10000^(2i / (D/2))``. A square grid gives MAE's table exactly; the grid may be
  non-square. A buffer recomputed from the config, so not in the state dict.
- ``LearnedPosEmbed``: a free (1, L, D) parameter, truncated-normal(0.02) init (ViT, BERT).
- ``FourierPosEmbed``: random Fourier features of the (row, col) coordinates, ``[cos(2π B v),
  sin(2π B v)]`` with ``B ~ N(0, σ²)`` fixed (drawn once from a fixed seed), then a learned MLP to
  ``D`` (Tancik et al. 2020; Li et al. 2021 make ``B`` learned too). Smooth in position, so it
  carries over to other grid sizes better than a learned table.

Multi-date inputs add a frame-index term on top (:func:`get_1d_sincos_pos_embed` of the frame
index, the same for every patch of a frame); dates themselves are in ``geo_encoding.py``.

References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (1-D sine-cosine encoding).
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
    (facebookresearch/mae ``util/pos_embed.py``).
    Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions", NeurIPS 2020.
    Li et al., "Learnable Fourier Features for Multi-Dimensional Spatial Positional Encoding",
    NeurIPS 2021.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "FourierPosEmbed",
    "LearnedPosEmbed",
    "SinCosPosEmbed",
    "build_pos_embed",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "get_frame_pos_embed",
    "sincos",
]


def sincos(pos: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """``pos`` (...) -> (..., dim): ``[sin(pos ω_i), cos(pos ω_i)]``, ``ω_i = base^(-2i/dim)``.

    In the dtype of ``pos`` when it is floating point (float32 for integers), so it can run inside
    a compiled graph; :func:`get_1d_sincos_pos_embed` is the float64 version for fixed tables.
    """
    if dim % 2:
        raise ValueError(f"dim={dim} must be even for a sine-cosine encoding")
    pos = pos if pos.is_floating_point() else pos.float()
    omega = torch.arange(dim // 2, dtype=pos.dtype, device=pos.device) / (dim / 2.0)
    omega = base**-omega  # (dim/2,)
    out = pos[..., None] * omega  # (..., dim/2)
    return torch.cat([out.sin(), out.cos()], dim=-1)  # (..., dim)


def get_1d_sincos_pos_embed(embed_dim: int, pos: Tensor) -> Tensor:
    """Encode positions ``pos`` (M,) as (M, embed_dim) float64: sines then cosines."""
    return sincos(pos.to(torch.float64).reshape(-1), embed_dim)


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


def get_frame_pos_embed(embed_dim: int, num_frames: int) -> Tensor:
    """The (T, D) frame-index encoding added to every token of a frame; zeros when ``T == 1``.

    A single frame gets no term at all, so a one-date model is exactly the 2-D model.
    """
    if num_frames == 1:
        return torch.zeros(1, embed_dim)
    return get_1d_sincos_pos_embed(embed_dim, torch.arange(num_frames)).float()  # (T, D)


class SinCosPosEmbed(nn.Module):
    """Fixed 2-D sine-cosine table (MAE). ``forward()`` -> (1, L, D)."""

    def __init__(self, embed_dim: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        pos = get_2d_sincos_pos_embed(embed_dim, grid_size)  # (L, D)
        self.register_buffer("pos_embed", pos[None], persistent=False)  # (1, L, D)

    def forward(self) -> Tensor:
        return self.pos_embed


class LearnedPosEmbed(nn.Module):
    """A learned (1, L, D) table, truncated-normal(0.02) init. ``forward()`` -> (1, L, D)."""

    def __init__(self, embed_dim: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = grid_size
        # named pos_embed so that the optimiser leaves it undecayed, as MAE / timm do
        self.pos_embed = nn.Parameter(torch.zeros(1, h * w, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self) -> Tensor:
        return self.pos_embed


class FourierPosEmbed(nn.Module):
    """Random Fourier features of (row, col), then a learned MLP. ``forward()`` -> (1, L, D).

    Args:
        embed_dim: ``D``.
        grid_size: ``(h, w)``.
        num_features: Fourier features ``F`` (half cosines, half sines).
        sigma: std of the frequencies, cycles per patch.
        hidden_dim: MLP hidden width; default ``D``.
    """

    def __init__(
        self,
        embed_dim: int,
        grid_size: tuple[int, int],
        num_features: int = 64,
        sigma: float = 0.25,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        h, w = grid_size
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords = torch.stack([rows.flatten(), cols.flatten()], dim=1).float()  # (L, 2)
        self.register_buffer("coords", coords, persistent=False)
        # fixed frequencies from a fixed seed: the same table in every process, whatever the RNG
        g = torch.Generator().manual_seed(0)
        freqs = torch.randn(num_features // 2, 2, generator=g) * sigma  # (F/2, 2)
        self.register_buffer("freqs", freqs)
        hidden_dim = hidden_dim or embed_dim
        self.mlp = nn.Sequential(
            nn.Linear(num_features, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim)
        )

    def forward(self) -> Tensor:
        angle = 2 * math.pi * self.coords @ self.freqs.T  # (L, F/2)
        feats = torch.cat([angle.cos(), angle.sin()], dim=-1)  # (L, F)
        return self.mlp(feats)[None]  # (1, L, D)


def build_pos_embed(kind: str, embed_dim: int, grid_size: tuple[int, int]) -> nn.Module:
    """The positional encoding module named by ``model.pos_embed``."""
    kinds = {"sincos": SinCosPosEmbed, "learned": LearnedPosEmbed, "fourier": FourierPosEmbed}
    if kind not in kinds:
        raise ValueError(f"unknown positional encoding {kind!r}; choose one of {list(kinds)}")
    return kinds[kind](embed_dim, grid_size)
