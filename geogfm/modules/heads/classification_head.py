"""Classification head: encoder tokens -> one vector of class scores per image.

The encoder's tokens (B, 1 + N, D) are pooled to (B, D), either by taking the class token (ViT,
MAE's linear probe) or by averaging the patch tokens (MAE fine-tuning's ``global_pool``, which
normalises the mean with its own LayerNorm, as the encoder's final norm saw the tokens one at a
time), then a dropout and one Linear layer give (B, K). Multi-date tokens are averaged over every
date. The same head, with ``K`` outputs, is the pooled regression head.

References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (class token head).
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``global_pool``).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Module):
    """Pooled token -> (B, num_classes) logits.

    Args:
        embed_dim: token width ``D``.
        num_classes: outputs ``K``.
        pool: ``"cls"`` (the class token) or ``"mean"`` (the mean of the patch tokens).
        drop: dropout before the Linear layer.
        norm_layer: normalisation of the mean-pooled vector (``"mean"`` only).
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        pool: Literal["cls", "mean"] = "cls",
        drop: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool={pool!r}: choose 'cls' or 'mean'")
        self.pool = pool
        self.norm = norm_layer(embed_dim) if pool == "mean" else nn.Identity()
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)  # MAE's head init
        nn.init.zeros_(self.fc.bias)

    def pooled(self, x: Tensor) -> Tensor:
        """Tokens (B, 1 + N, D), class token first -> (B, D)."""
        x = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)  # (B, D)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, 1 + N, D) -> logits (B, K)."""
        return self.fc(self.drop(self.pooled(x)))
