"""The MAE decoder: from the encoded visible tokens back to pixels of every patch.

The encoder saw only the kept tokens (in shuffled order). The decoder projects them to its own,
narrower width, appends one shared learned mask token per removed patch, puts all ``L`` tokens back
in image order with ``ids_restore``, adds its fixed sine-cosine positional encoding (so each mask
token knows where it is), runs a few transformer blocks and predicts the ``p * p * C`` pixel values
of every patch, laid out as ``patchify`` lays them out. The class token goes through the blocks and
is dropped at the end.

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``forward_decoder``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geogfm.modules.blocks.transformer_block import TransformerBlock, init_weights
from geogfm.modules.embeddings.positional_encoding import get_2d_sincos_pos_embed

__all__ = ["ReconstructionHead"]


class ReconstructionHead(nn.Module):
    """MAE decoder predicting the pixels of every patch.

    Args:
        grid_size: ``h`` or ``(h, w)``, patches per image side.
        patch_size: ``p``, pixels.
        in_chans: bands ``C`` to predict.
        embed_dim: encoder width ``D`` (input tokens).
        decoder_embed_dim: decoder width.
        decoder_depth: decoder transformer blocks.
        decoder_num_heads: decoder attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``decoder_embed_dim``.
        norm_layer: normalisation type.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
        self.grid_size = (h, w)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # fixed, not learned; recomputed from the config, so not stored in checkpoints
        pos = get_2d_sincos_pos_embed(decoder_embed_dim, (h, w), cls_token=True)  # (1 + L, Dd)
        self.register_buffer("decoder_pos_embed", pos[None], persistent=False)  # (1, 1 + L, Dd)
        self.decoder_blocks = nn.ModuleList(
            [
                TransformerBlock(
                    decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_layer=norm_layer
                )
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # as MAE: normal(0.02) mask token, xavier_uniform Linear with zero bias, LayerNorm (1, 0)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_weights)

    def forward(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        """Decode encoder tokens ``x`` (B, 1 + L', D) to pixels (B, L, p*p*C).

        ``ids_restore`` (B, L) is the permutation that puts the shuffled sequence [kept tokens,
        removed tokens] back in image order (from ``random_masking``).
        """
        x = self.decoder_embed(x)  # (B, 1 + L', Dd)
        B, L = ids_restore.shape
        Dd = x.shape[-1]

        # append a mask token per removed patch, then unshuffle to image order
        mask_tokens = self.mask_token.expand(B, L + 1 - x.shape[1], Dd)  # (B, L - L', Dd)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, Dd), shuffled order
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(B, L, Dd))  # (B, L, Dd), image order
        x = torch.cat([x[:, :1], x_], dim=1)  # (B, 1 + L, Dd), class token first

        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)  # (B, 1 + L, p*p*C)
        return x[:, 1:]  # (B, L, p*p*C), class token dropped
