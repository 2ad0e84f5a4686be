"""Regression head: one value (or ``K``) per image, or per pixel.

A scalar target (biomass of a plot, crop yield of a field, a cloud fraction) is a pooled Linear
head; a per-pixel target (canopy height, soil moisture) is the segmentation head's per-patch
Linear laid back into the image. Both are the classification / segmentation heads with ``K``
real-valued outputs and no softmax; this module picks one, so probes name the task, not the layout.
``squeeze`` drops the ``K = 1`` axis: (B,) or (B, H, W).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from geogfm.modules.heads.classification_head import ClassificationHead
from geogfm.modules.heads.segmentation_head import SegmentationHead

__all__ = ["RegressionHead"]


class RegressionHead(nn.Module):
    """Tokens (B, 1 + N, D) -> (B, K) pooled, or (B, K, H, W) per pixel.

    Args:
        embed_dim: token width ``D``.
        out_dim: values per image or per pixel ``K``.
        per_pixel: a map (needs ``patch_size`` and ``grid_size``) instead of one value per image.
        pool: pooling of the per-image head, ``"cls"`` or ``"mean"``.
        patch_size: ``p`` (per-pixel only).
        grid_size: ``(h, w)`` (per-pixel only).
        num_frames: token frames per sample (per-pixel only).
        squeeze: drop the ``K`` axis when ``out_dim == 1``.
    """

    def __init__(
        self,
        embed_dim: int,
        out_dim: int = 1,
        *,
        per_pixel: bool = False,
        pool: Literal["cls", "mean"] = "mean",
        patch_size: int | None = None,
        grid_size: tuple[int, int] | None = None,
        num_frames: int = 1,
        squeeze: bool = True,
    ) -> None:
        super().__init__()
        if per_pixel:
            if patch_size is None or grid_size is None:
                raise ValueError("a per-pixel RegressionHead needs patch_size and grid_size")
            self.head = SegmentationHead(embed_dim, out_dim, patch_size, grid_size, num_frames)
        else:
            self.head = ClassificationHead(embed_dim, out_dim, pool=pool)
        self.squeeze = squeeze and out_dim == 1

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, 1 + N, D) -> (B, K) or (B, K, H, W); (B,) or (B, H, W) when squeezed."""
        y = self.head(x)
        return y.squeeze(1) if self.squeeze else y
