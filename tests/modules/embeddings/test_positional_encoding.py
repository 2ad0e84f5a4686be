import numpy as np
import pytest
import torch

from geogfm.modules.embeddings.positional_encoding import (
    build_pos_embed,
    get_2d_sincos_pos_embed,
    get_frame_pos_embed,
)


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


@pytest.mark.parametrize("kind", ["sincos", "learned", "fourier"])
def test_every_kind_gives_one_row_per_token(kind: str) -> None:
    torch.manual_seed(0)
    pe = build_pos_embed(kind, 32, (3, 5))
    table = pe()
    assert table.shape == (1, 15, 32)
    assert len({tuple(r) for r in table[0].tolist()}) == 15  # every position distinct
    params = list(pe.parameters())
    assert (kind == "sincos") == (not params)  # only sincos is fixed
    if params:
        table.square().sum().backward()
        assert all(p.grad is not None for p in params)


def test_learned_is_undecayed_and_fourier_is_reproducible() -> None:
    # the optimiser leaves names ending in pos_embed undecayed (MAE / timm)
    assert [n for n, _ in build_pos_embed("learned", 8, (2, 2)).named_parameters()] == ["pos_embed"]
    torch.manual_seed(0)
    a = build_pos_embed("fourier", 16, (4, 4))
    torch.manual_seed(1)
    b = build_pos_embed("fourier", 16, (4, 4))
    assert torch.equal(a.freqs, b.freqs)  # fixed frequencies whatever the global RNG


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown positional encoding 'rope'"):
        build_pos_embed("rope", 16, (2, 2))


def test_frame_encoding() -> None:
    assert torch.equal(get_frame_pos_embed(8, 1), torch.zeros(1, 8))  # one date: no term
    emb = get_frame_pos_embed(8, 3)
    assert emb.shape == (3, 8) and len({tuple(r) for r in emb.tolist()}) == 3
