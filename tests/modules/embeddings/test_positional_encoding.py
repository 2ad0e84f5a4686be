import numpy as np
import pytest
import torch

from geogfm.modules.embeddings.positional_encoding import get_2d_sincos_pos_embed


def _mae_reference(embed_dim: int, h: int, w: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py, transcribed, with its square grid made (h, w)."""

    def _1d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(h, dtype=np.float32)
    grid_w = np.arange(w, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, h, w])
    emb_h = _1d(embed_dim // 2, grid[0])
    emb_w = _1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (6, 2)])
def test_matches_mae(grid: tuple[int, int]) -> None:
    h, w = grid
    emb = get_2d_sincos_pos_embed(16, grid)
    assert emb.shape == (h * w, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, torch.from_numpy(_mae_reference(16, h, w)).float())


def test_non_square_with_cls_token() -> None:
    emb = get_2d_sincos_pos_embed(32, (3, 7), cls_token=True)
    assert emb.shape == (1 + 21, 32)
    assert (emb[0] == 0).all()
    assert len({tuple(r) for r in emb[1:].tolist()}) == 21  # every position distinct


def test_embed_dim_multiple_of_four() -> None:
    with pytest.raises(ValueError, match="embed_dim=18 must be a multiple of 4"):
        get_2d_sincos_pos_embed(18, 4)
