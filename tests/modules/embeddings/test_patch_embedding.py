import pytest
import torch

from geogfm.modules.embeddings.patch_embedding import PatchEmbed


def test_shape_any_bands_non_square() -> None:
    pe = PatchEmbed((24, 40), 8, in_chans=13, embed_dim=16)
    assert pe.grid_size == (3, 5) and pe.num_patches == 15
    assert pe(torch.randn(2, 13, 24, 40)).shape == (2, 15, 16)


def test_tokens_are_row_major_patches() -> None:
    # token i*w + j must only see the pixels of patch (i, j)
    pe = PatchEmbed((8, 12), 4, in_chans=2, embed_dim=4)
    x = torch.zeros(1, 2, 8, 12)
    x[0, :, 4:8, 8:12] = 1.0  # patch (row 1, col 2) -> token 1 * 3 + 2 = 5
    out = pe(x) - pe(torch.zeros_like(x))
    changed = out.abs().sum(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [5]


def test_config_not_multiple_of_patch() -> None:
    with pytest.raises(
        ValueError, match=r"image_size=\(30, 32\) is not a multiple of patch_size=8"
    ):
        PatchEmbed((30, 32), 8, 3, 16)


def test_input_not_configured_size() -> None:
    pe = PatchEmbed(32, 8, 3, 16)
    with pytest.raises(ValueError, match=r"input size \(16, 32\) differs .* image_size=\(32, 32\)"):
        pe(torch.randn(1, 3, 16, 32))


def test_input_not_multiple_of_patch() -> None:
    pe = PatchEmbed(32, 8, 3, 16)
    with pytest.raises(
        ValueError, match=r"input size \(30, 32\) is not a multiple of patch_size=8"
    ):
        pe(torch.randn(1, 3, 30, 32))


def test_wrong_band_count() -> None:
    pe = PatchEmbed(32, 8, 10, 16)
    with pytest.raises(ValueError, match="input has 13 bands .* in_chans=10"):
        pe(torch.randn(1, 13, 32, 32))
