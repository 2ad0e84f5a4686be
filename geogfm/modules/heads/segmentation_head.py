"""Segmentation head: encoder tokens back to a per-pixel map.

Every patch token predicts the ``p * p`` pixels of its own patch, ``K`` values each: a LayerNorm,
one Linear layer ``D -> p * p * K``, then the patches are laid back in the image (``unpatchify``),
giving (B, K, H, W). This is the linear decoder of Segmenter / SETR-naive, and the MAE decoder's
last layer without the decoder: cheap, and honest about what the features alone hold (a probe).
Multi-date tokens (B, 1 + T/tt * L, D) are averaged over the dates first, one map per sample.
The same head, with ``K`` outputs, is the per-pixel regression head.

References:
    Strudel et al., "Segmenter: Transformer for Semantic Segmentation", ICCV 2021 (linear decoder).
    Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
    Transformers" (SETR), CVPR 2021.
"""

from __future__ import annotations

from torch import Tensor, nn

from geogfm.modules.embeddings.patch_embedding import unpatchify

__all__ = ["SegmentationHead"]


class SegmentationHead(nn.Module):
    """Tokens (B, 1 + N, D) -> per-pixel scores (B, K, H, W).

    Args:
        embed_dim: token width ``D``.
        num_classes: outputs per pixel ``K``.
        patch_size: ``p``, pixels.
        grid_size: ``(h, w)`` patches per image.
        num_frames: token frames per sample (``num_frames // tubelet_size`` of the encoder).
        norm_layer: normalisation of the tokens.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        patch_size: int,
        grid_size: tuple[int, int],
        num_frames: int = 1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.grid_size = tuple(grid_size)
        self.num_frames = num_frames
        self.norm = norm_layer(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size * num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, 1 + N, D), class token first -> (B, K, H, W)."""
        h, w = self.grid_size
        x = x[:, 1:]  # (B, N, D), class token dropped
        B, N, D = x.shape
        if self.num_frames * h * w != N:
            raise ValueError(
                f"got {N} patch tokens, expected num_frames * h * w = "
                f"{self.num_frames} * {h} * {w}; build the head with the encoder's grid"
            )
        x = x.reshape(B, self.num_frames, h * w, D).mean(dim=1)  # (B, L, D), dates averaged
        x = self.pred(self.norm(x))  # (B, L, p*p*K)
        return unpatchify(x, self.patch_size, self.num_classes, h, w)  # (B, K, H, W)
