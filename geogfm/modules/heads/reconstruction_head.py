"""The MAE decoder: from the encoded visible tokens back to pixels of every patch.

The encoder saw only the kept tokens (in shuffled order). The decoder projects them to its own,
narrower width, appends one shared learned mask token per removed patch, puts all ``L`` tokens back
in image order with ``ids_restore``, adds its fixed sine-cosine positional encoding (so each mask
token knows where it is), runs a few transformer blocks and predicts the ``p * p * C`` pixel values
of every patch, laid out as ``patchify`` lays them out. The class token goes through the blocks and
is dropped at the end. With several dates the ``N = T / tt * L`` tokens are (tubelet, patch) pairs;
the position table then adds a frame-index encoding to the spatial one, and each token predicts the
``tt * p * p * C`` values of its tubelet.

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``forward_decoder``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from geogfm.modules.blocks.transformer_block import TransformerBlock, init_weights
from geogfm.modules.embeddings.positional_encoding import (
    get_2d_sincos_pos_embed,
    get_frame_pos_embed,
)

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
        num_frames: dates ``T`` per sample.
        tubelet_size: dates ``tt`` per token.
        fused_attn: fused attention in the decoder blocks.
        grad_checkpointing: recompute the decoder blocks' activations in backward.
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
        num_frames: int = 1,
        tubelet_size: int = 1,
        fused_attn: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
        Dd, t = decoder_embed_dim, num_frames // tubelet_size
        self.grid_size = (h, w)
        self.grad_checkpointing = grad_checkpointing
        self.decoder_embed = nn.Linear(embed_dim, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        # fixed, not learned; recomputed from the config, so not stored in checkpoints
        space = get_2d_sincos_pos_embed(Dd, (h, w))  # (L, Dd)
        frame = get_frame_pos_embed(Dd, t)  # (T/tt, Dd), zeros for one frame
        pos = (frame[:, None] + space[None]).reshape(-1, Dd)  # (N, Dd), frame-major
        pos = torch.cat([torch.zeros(1, Dd), pos])  # (1 + N, Dd), class token first
        self.register_buffer("decoder_pos_embed", pos[None], persistent=False)  # (1, 1 + N, Dd)
        self.decoder_blocks = nn.ModuleList(
            [
                TransformerBlock(
                    Dd, decoder_num_heads, mlp_ratio, norm_layer=norm_layer, fused_attn=fused_attn
                )
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(Dd)
        patch_values = tubelet_size * patch_size * patch_size * in_chans  # tt*p*p*C
        self.decoder_pred = nn.Linear(Dd, patch_values)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # as MAE: normal(0.02) mask token, xavier_uniform Linear with zero bias, LayerNorm (1, 0)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_weights)

    def forward(self, x: Tensor, ids_restore: Tensor, ids_pred: Tensor | None = None) -> Tensor:
        """Decode encoder tokens ``x`` (B, 1 + L', D) to pixels (B, L, p*p*C).

        ``ids_restore`` (B, L) is the permutation that puts the shuffled sequence [kept tokens,
        removed tokens] back in image order (from ``random_masking``). With several dates read
        ``N`` tokens for ``L`` and ``tt*p*p*C`` values for ``p*p*C``.

        ``ids_pred`` (B, M): predict only these tokens (indices in image order), (B, M, p*p*C).
        The blocks still see every token; only the final norm and projection, which act on each
        token alone, are skipped for the others (the MAE loss reads only the removed ones).
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
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)  # keep only x, recompute in backward
            else:
                x = blk(x)
        x = x[:, 1:]  # (B, L, Dd), class token dropped: it predicts no pixels
        if ids_pred is not None:
            x = torch.gather(x, 1, ids_pred[..., None].expand(-1, -1, Dd))  # (B, M, Dd)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)  # (B, L, p*p*C), or (B, M, p*p*C)
        return x
