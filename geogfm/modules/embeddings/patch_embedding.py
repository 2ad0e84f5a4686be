"""Patch embedding: an image (B, C, H, W) -> a token sequence (B, L, D).

A ``p x p`` convolution with stride ``p`` is a Linear layer applied to every non-overlapping patch
of ``p * p * C`` pixels. Any band count ``C`` (13 Sentinel-2 bands, 10, 3, ...) and non-square
images (``image_size=(H, W)``) work; tokens come out row-major, ``L = h * w`` with ``h, w = H // p,
W // p``, the order :func:`geogfm.models.gfm_mae.patchify` and the positional encoding use.

References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    timm ``layers/patch_embed.py``; facebookresearch/mae ``models_mae.py``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchEmbed"]


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(x, int):
        return x, x
    h, w = x
    return int(h), int(w)


class PatchEmbed(nn.Module):
    """Image to patch tokens.

    Args:
        image_size: ``H`` (square) or ``(H, W)``, pixels; the only input size accepted.
        patch_size: side ``p`` of a square patch, pixels; must divide ``H`` and ``W``.
        in_chans: number of bands ``C``.
        embed_dim: token width ``D``.

    Raises:
        ValueError: if ``image_size`` is not a multiple of ``patch_size``.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        H, W = _pair(image_size)
        p = patch_size
        if H % p or W % p:
            raise ValueError(
                f"image_size={(H, W)} is not a multiple of patch_size={p}; choose an image size "
                f"divisible by the patch size (e.g. {(H // p * p, W // p * p)})"
            )
        self.image_size = (H, W)
        self.patch_size = p
        self.in_chans = in_chans
        self.grid_size = (H // p, W // p)  # (h, w)
        self.num_patches = self.grid_size[0] * self.grid_size[1]  # L
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=p, stride=p)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` (B, C, H, W) into (B, L, D); raises ValueError on a wrong C, H or W."""
        B, C, H, W = x.shape
        p = self.patch_size
        if self.in_chans != C:
            raise ValueError(
                f"input has {C} bands but the model was built for in_chans={self.in_chans}; "
                f"set model.in_chans (from data.bands) to {C} or select {self.in_chans} bands"
            )
        if H % p or W % p:
            raise ValueError(
                f"input size {(H, W)} is not a multiple of patch_size={p}; crop or pad the "
                f"images to a multiple of {p}"
            )
        if self.image_size != (H, W):
            raise ValueError(
                f"input size {(H, W)} differs from the configured image_size={self.image_size}; "
                f"set model.image_size to the chip size or resize the inputs"
            )
        x = self.proj(x)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, L, D)
        return x
