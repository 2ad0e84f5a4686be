import pytest
import torch
from torch import nn

from geogfm.data.datasets.sentinel2 import DEFAULT_BANDS
from geogfm.modules.embeddings.geo_encoding import band_wavelengths
from geogfm.modules.embeddings.patch_embedding import (
    PatchEmbed,
    SpectralPatchEmbed,
    patchify,
    unpatchify,
)


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


# ------------------------------------------------------------------ linear variant, dates, tubelets


def _conv_as_linear(conv: nn.Conv2d | nn.Conv3d) -> torch.Tensor:
    # (D, C, [tt,] p, p) -> (D, [tt,] p, p, C) -> (D, K): patchify's (frame, row, col, band) columns
    w = conv.weight
    w = w.permute(0, 2, 3, 1) if w.ndim == 4 else w.permute(0, 2, 3, 4, 1)
    return w.reshape(w.shape[0], -1)


@pytest.mark.parametrize(("T", "tt"), [(1, 1), (3, 1), (4, 2)])
def test_linear_variant_equals_conv(T: int, tt: int) -> None:
    torch.manual_seed(0)
    kw = dict(num_frames=T, tubelet_size=tt)
    conv = PatchEmbed((8, 12), 4, 13, 16, **kw)
    lin = PatchEmbed((8, 12), 4, 13, 16, linear=True, **kw)
    with torch.no_grad():
        lin.proj.weight.copy_(_conv_as_linear(conv.proj))
        lin.proj.bias.copy_(conv.proj.bias)
    x = torch.randn(2, T, 13, 8, 12, requires_grad=True)
    out = conv(x)
    assert out.shape == (2, T // tt * 6, 16)
    torch.testing.assert_close(lin(x), out)
    out.sum().backward()  # and both are differentiable down to the input
    assert torch.isfinite(x.grad).all()


def test_per_frame_tokens_are_frame_major() -> None:
    # token (t * h + i) * w + j must only see date t's patch (i, j)
    pe = PatchEmbed((8, 12), 4, in_chans=2, embed_dim=4, num_frames=3)
    x = torch.zeros(1, 3, 2, 8, 12)
    x[0, 2, :, 4:8, 0:4] = 1.0  # date 2, patch (1, 0) -> token (2 * 2 + 1) * 3 + 0 = 15
    changed = (pe(x) - pe(torch.zeros_like(x))).abs().sum(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [15]
    # one date: (B, C, H, W) and (B, 1, C, H, W) are the same input
    pe1 = PatchEmbed(8, 4, 2, 4)
    y = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(pe1(y), pe1(y[:, None]))


def test_dates_errors() -> None:
    pe = PatchEmbed(8, 4, 2, 4, num_frames=3)
    with pytest.raises(ValueError, match=r"input has 1 date\(s\) but .* num_frames=3"):
        pe(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="num_frames=3 is not a multiple of tubelet_size=2"):
        PatchEmbed(8, 4, 2, 4, num_frames=3, tubelet_size=2)


# ------------------------------------------------------------------------------- patchify


@pytest.mark.parametrize("tt", [1, 3])
def test_patchify_round_trip_13_bands_3_dates_non_square(tt: int) -> None:
    B, T, C, p, h, w = 2, 3, 13, 4, 3, 5
    imgs = torch.randn(B, T, C, h * p, w * p)
    x = patchify(imgs, p, tt)
    assert x.shape == (B, T // tt * h * w, tt * p * p * C)
    assert torch.equal(unpatchify(x, p, C, h, w, num_frames=T, tubelet_size=tt), imgs)


def test_patchify_tubelet_layout() -> None:
    # token (t * h + i) * w + j, value ((u * p + r) * p + s) * C + c = frame t*tt+u, band c,
    # pixel (i * p + r, j * p + s)
    B, T, C, p, h, w, tt = 1, 4, 3, 2, 2, 3, 2
    imgs = torch.randn(B, T, C, h * p, w * p)
    x = patchify(imgs, p, tt)
    for t, i, j, u, r, s, c in [
        (0, 0, 0, 0, 0, 0, 0),
        (1, 1, 2, 1, 1, 0, 2),
        (1, 0, 1, 0, 1, 1, 1),
    ]:
        token, value = (t * h + i) * w + j, ((u * p + r) * p + s) * C + c
        assert x[0, token, value] == imgs[0, t * tt + u, c, i * p + r, j * p + s]


# -------------------------------------------------------------------------- spectral


def _spectral(**kw) -> SpectralPatchEmbed:
    torch.manual_seed(0)
    return SpectralPatchEmbed((8, 12), 4, 16, band_wavelengths(DEFAULT_BANDS), **kw)


def test_spectral_takes_any_band_set() -> None:
    pe = _spectral()
    x = torch.randn(2, 10, 8, 12)
    assert pe(x).shape == (2, 6, 16)
    # four of the bands, given by their wavelengths: same token shape, other tokens
    sub = [0, 2, 6, 8]
    wl = torch.tensor(band_wavelengths([DEFAULT_BANDS[i] for i in sub]))
    assert pe(x[:, sub], wl).shape == (2, 6, 16)
    # 13 bands (never configured) work too
    wl13 = torch.tensor(band_wavelengths(DEFAULT_BANDS) + [0.443, 0.945, 1.375])
    out = pe(torch.randn(2, 13, 8, 12, requires_grad=True), wl13)
    out.sum().backward()
    assert pe.kernel_generator.fc1.weight.grad is not None


def test_spectral_band_order_does_not_matter() -> None:
    pe = _spectral(num_frames=2)
    x = torch.randn(2, 2, 10, 8, 12)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pe(x[:, :, perm], pe.wavelengths[perm]), pe(x))


def test_spectral_wavelength_count_error() -> None:
    pe = _spectral()
    with pytest.raises(ValueError, match=r"input has 4 bands but \(10,\) wavelengths"):
        pe(torch.randn(1, 4, 8, 12))


# ------------------------------------------------------------------- embedding only the kept tokens


@pytest.mark.parametrize(("linear", "T", "tt"), [(False, 1, 1), (True, 1, 1), (False, 2, 2)])
def test_kept_tokens_equal_embed_then_drop(linear: bool, T: int, tt: int) -> None:
    torch.manual_seed(0)
    # a convolution embeds kept tokens by its weights read as a Linear (D, tt*p*p*C)
    kw = dict(num_frames=T, tubelet_size=tt, linear=linear)
    pe = PatchEmbed((8, 12), 4, in_chans=5, embed_dim=6, **kw)
    x = torch.randn(2, T, 5, 8, 12)
    ids_keep = torch.stack([torch.randperm(6)[:4], torch.randperm(6)[:4]])  # (B, N')
    want = torch.gather(pe(x), 1, ids_keep[..., None].expand(-1, -1, 6))
    torch.testing.assert_close(pe(x, ids_keep), want)


def test_spectral_kept_tokens_equal_embed_then_drop() -> None:
    torch.manual_seed(0)
    pe = SpectralPatchEmbed(8, 4, 6, band_wavelengths(["blue", "red", "nir"]))
    x = torch.randn(2, 3, 8, 8)
    ids_keep = torch.tensor([[3, 0], [1, 2]])
    want = torch.gather(pe(x), 1, ids_keep[..., None].expand(-1, -1, 6))
    torch.testing.assert_close(pe(x, ids_keep=ids_keep), want)
