"""The transformer's position-wise MLP: Linear -> activation -> Linear.

References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    timm ``layers/mlp.py``; nanoGPT ``model.py`` (MLP).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two Linear layers with an activation between, applied to each token.

    Args:
        in_features: input width ``D``.
        hidden_features: hidden width; default ``in_features`` (blocks pass ``mlp_ratio * D``).
        out_features: output width; default ``in_features``.
        act_layer: activation type, instantiated with no arguments.
        drop: dropout after the activation and after the second Linear.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)  # (B, L, hidden)
        x = self.act(x)
        x = self.drop1(x)
        x = self.fc2(x)  # (B, L, out)
        x = self.drop2(x)
        return x
