import pytest
import torch

from geogfm.core.config import ModelConfig
from geogfm.models.gfm_mae import MaskedAutoencoder, num_kept, patchify, unpatchify
from geogfm.models.gfm_vit import PRESETS, GeoViTBackbone

C, S, P = 13, 16, 4  # bands, image side, patch
L = (S // P) ** 2


def _model(**kw) -> MaskedAutoencoder:
    base = dict(
        embed_dim=32,
        depth=2,
        num_heads=2,
        image_size=S,
        patch_size=P,
        in_chans=C,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        mask_ratio=0.75,
    )
    cfg = ModelConfig(**{**base, **kw})
    torch.manual_seed(0)
    return MaskedAutoencoder(cfg, GeoViTBackbone(cfg))


def _batch(seed: int = 0, B: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(B, C, S, S, generator=g)
    valid = torch.rand(B, S, S, generator=g) > 0.2
    return imgs, valid


# ----------------------------------------------------------------------------- patchify


def test_patchify_round_trip_13_bands_non_square() -> None:
    p, h, w = 4, 3, 5
    imgs = torch.randn(2, 13, h * p, w * p)
    x = patchify(imgs, p)
    assert x.shape == (2, h * w, p * p * 13)
    torch.testing.assert_close(unpatchify(x, p, 13, h, w), imgs, rtol=0, atol=0)


def test_patchify_layout() -> None:
    # token i*w + j holds patch (i, j); values ordered (row r, col s, band c), band fastest
    p, h, w = 2, 2, 3
    imgs = torch.randn(1, 5, h * p, w * p)
    x = patchify(imgs, p)
    for i, j, r, s, c in [(0, 0, 0, 0, 0), (1, 2, 1, 0, 4), (0, 1, 1, 1, 2)]:
        assert x[0, i * w + j, (r * p + s) * 5 + c] == imgs[0, c, i * p + r, j * p + s]


def test_patchify_errors() -> None:
    with pytest.raises(ValueError, match=r"image size \(10, 12\) is not a multiple of the patch"):
        patchify(torch.randn(1, 3, 10, 12), 4)
    with pytest.raises(ValueError, match=r"expected \(B, 6, 48\)"):
        unpatchify(torch.randn(1, 5, 48), 4, 3, 2, 3)


# ------------------------------------------------------------------------------ masking


@pytest.mark.parametrize(
    ("L_", "ratio", "kept"),
    [(196, 0.75, 49), (16, 0.75, 4), (15, 0.75, 4), (13, 0.75, 3), (10, 0.75, 3), (10, 0.9, 1)],
)
def test_num_kept_rounds_to_nearest_halves_up(L_: int, ratio: float, kept: int) -> None:
    # round(L * (1 - r)): 15 * 0.25 = 3.75 -> 4, 13 * 0.25 = 3.25 -> 3, 10 * 0.25 = 2.5 -> 3,
    # 10 * (1 - 0.9) = 0.999... in floats -> 1
    assert num_kept(L_, ratio) == kept


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_mask_ratio_exact(ratio: float) -> None:
    model = _model()
    B, L_ = 4, 50
    ids_keep, mask, ids_restore = model.random_masking(torch.rand(B, L_), ratio)
    n_keep = num_kept(L_, ratio)
    assert ids_keep.shape == (B, n_keep)
    assert (mask.sum(1) == L_ - n_keep).all()  # 1 = removed
    assert (torch.gather(mask, 1, ids_keep) == 0).all()  # the kept ones are the 0s
    shuffle = torch.argsort(ids_restore, dim=1)
    torch.testing.assert_close(shuffle[:, :n_keep], ids_keep)
    assert not torch.equal(ids_keep[0], ids_keep[1])  # per-sample noise


def test_encoder_sees_exactly_the_kept_tokens() -> None:
    model = _model()
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    imgs, _ = _batch()
    latent, mask, _ = model.forward_encoder(imgs, 0.75, model.masking_noise(3))
    assert seen == [torch.Size((3, 1 + num_kept(L, 0.75), 32))]
    assert latent.shape == (3, 1 + 4, 32)
    _, pred, mask = model(imgs, mask_ratio=0.5)
    assert pred.shape == (3, L, P * P * C) and (mask.sum(1) == L // 2).all()
    # 16 * (1 - 0.6) = 6.4 -> the encoder sees round(6.4) = 6 patch tokens, 10 are removed
    seen.clear()
    _, _, mask = model(imgs, mask_ratio=0.6)
    assert seen == [torch.Size((3, 1 + 6, 32))] and (mask.sum(1) == 10).all()


def test_bad_mask_ratio() -> None:
    model = _model()
    with pytest.raises(ValueError, match="mask_ratio=0.97 keeps 0 of 16 patches"):
        model(_batch()[0], mask_ratio=0.97)
    with pytest.raises(
        ValueError, match=r"noise has shape \(3, 15\), expected \(B, L\) = \(3, 16\)"
    ):
        model(_batch()[0], noise=torch.rand(3, 15))


def test_deterministic_with_generator() -> None:
    model = _model()
    imgs, valid = _batch()
    rng = torch.get_rng_state()
    a = model(imgs, valid, generator=torch.Generator().manual_seed(7))
    b = model(imgs, valid, generator=torch.Generator().manual_seed(7))
    c = model(imgs, valid, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[2], c[2])
    # the noise the generator draws, passed in, gives the same result (the compiled-model path)
    noise = model.masking_noise(3, torch.Generator().manual_seed(7))
    for x, y in zip(a, model(imgs, valid, noise=noise), strict=True):
        assert torch.equal(x, y)


def test_deterministic_under_a_fixed_seed() -> None:
    # the same seed builds the same weights, and with a seeded generator the same outputs
    imgs, valid = _batch()
    a, b = _model(), _model()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    out_a = a(imgs, valid, generator=torch.Generator().manual_seed(3))
    out_b = b(imgs, valid, generator=torch.Generator().manual_seed(3))
    for x, y in zip(out_a, out_b, strict=True):
        assert torch.equal(x, y)


# --------------------------------------------------------------------------------- loss


def test_valid_all_true_equals_none() -> None:
    model = _model()
    imgs, _ = _batch()
    full = torch.ones(3, S, S, dtype=torch.bool)
    la = model(imgs, full, generator=torch.Generator().manual_seed(0))[0]
    lb = model(imgs, None, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(la, lb)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_ignores_invalid_pixels(norm_pix: bool) -> None:
    model = _model(norm_pix_loss=norm_pix)
    imgs, valid = _batch()
    _, pred, mask = model(imgs, valid, generator=torch.Generator().manual_seed(0))
    loss = model.forward_loss(imgs, pred, mask, valid)
    imgs2 = imgs.clone()
    imgs2[~valid[:, None].expand_as(imgs)] = 1e3  # clouds, nodata fill
    torch.testing.assert_close(model.forward_loss(imgs2, pred, mask, valid), loss)
    assert not torch.allclose(model.forward_loss(imgs2, pred, mask, None), loss)


def test_loss_zero_when_every_removed_patch_invalid() -> None:
    model = _model()
    imgs, _ = _batch()
    g = torch.Generator().manual_seed(0)
    _, _, mask = model(imgs, generator=g)
    # invalidate exactly the removed patches
    removed_pixels = model.unpatchify(mask[..., None].expand(-1, -1, P * P * C))[:, 0] > 0
    loss, _, _ = model(imgs, ~removed_pixels, generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0.0
    loss.backward()  # no NaN in the graph
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_valid_shape_error() -> None:
    model = _model()
    imgs, _ = _batch()
    with pytest.raises(ValueError, match=r"valid mask has shape \(3, 8, 8\), expected"):
        model(imgs, torch.ones(3, 8, 8, dtype=torch.bool))


def test_encoder_must_match_config() -> None:
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, image_size=16, patch_size=4, in_chans=3)
    enc = GeoViTBackbone(cfg.model_copy(update={"in_chans": 4}))
    with pytest.raises(ValueError, match="does not match model_cfg"):
        MaskedAutoencoder(cfg, enc)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_forward_backward(name: str) -> None:
    # full width, the preset's decoder width, one block each
    cfg = PRESETS[name](depth=1, decoder_depth=1, image_size=32, patch_size=16, in_chans=4)
    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg, GeoViTBackbone(cfg))
    imgs = torch.randn(2, 4, 32, 32)
    valid = torch.rand(2, 32, 32) > 0.1
    loss, pred, mask = model(imgs, valid, mask_ratio=0.5)
    assert pred.shape == (2, 4, 16 * 16 * 4) and mask.shape == (2, 4)
    loss.backward()
    assert torch.isfinite(loss)
    # every parameter gets a gradient (the removed patches reach the mask token)
    assert all(p.grad is not None for p in model.parameters())


def test_loss_decreases_on_a_fixed_batch() -> None:
    model = _model()
    # smooth multispectral images (per-band ramps and a wave), 20 % invalid pixels, a fixed mask
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, S), torch.linspace(0, 1, S), indexing="ij")
    a, b, c = (torch.randn(4, C, 1, 1, generator=g) for _ in range(3))
    imgs = a * yy + b * xx + c * torch.sin(6 * xx + 3 * yy)  # (4, C, S, S)
    valid = torch.rand(4, S, S, generator=g) > 0.2
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss, _, _ = model(imgs, valid, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_design_quick_start() -> None:
    # DESIGN.md: ViT-B/16 at 224 px, default band count (10)
    model_cfg = ModelConfig(architecture="gfm_vit", embed_dim=768, depth=12, image_size=224)
    encoder = GeoViTBackbone(model_cfg)
    model = MaskedAutoencoder(model_cfg, encoder)
    with torch.no_grad():
        loss, pred, mask = model(torch.randn(1, 10, 224, 224))
    assert pred.shape == (1, 196, 16 * 16 * 10) and mask.sum().item() == 196 - 49
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------ dates


@pytest.mark.parametrize("tt", [1, 3])
def test_multi_date_mae(tt: int) -> None:
    T = 3
    model = _model(num_frames=T, tubelet_size=tt, norm_pix_loss=True)
    N = T // tt * L
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(2, T, C, S, S, generator=g)  # 13 bands, 3 dates
    valid = torch.rand(2, T, S, S, generator=g) > 0.2
    # patchify / unpatchify round trip through the model
    assert torch.equal(model.unpatchify(model.patchify(imgs)), imgs)
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    loss, pred, mask = model(imgs, valid, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, N, tt * P * P * C) and mask.shape == (2, N)
    assert seen == [torch.Size((2, 1 + num_kept(N, 0.75), 32))]
    assert (mask.sum(1) == N - num_kept(N, 0.75)).all()
    assert model.unpatchify(pred).shape == imgs.shape
    # invalid pixels of any date never count
    imgs2 = imgs.clone()
    imgs2[~valid[:, :, None].expand_as(imgs)] = 1e3
    torch.testing.assert_close(model.forward_loss(imgs2, pred, mask, valid), loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"valid mask has shape \(2, 16, 16\), expected"):
        model(imgs, valid[:, 0])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("frames", [(1, 1), (2, 1), (2, 2)])
def test_loss_without_prediction_is_the_same_loss(fused: bool, frames: tuple[int, int]) -> None:
    # return_pred=False: the fused path predicts only the removed patches (the loss reads no
    # others), the readable one still predicts all; the loss and every gradient are unchanged
    T, tt = frames
    model = _model(fused_attn=fused, norm_pix_loss=True, num_frames=T, tubelet_size=tt)
    g = torch.Generator().manual_seed(3)
    imgs = torch.randn(3, *((T,) if T > 1 else ()), C, S, S, generator=g)
    valid = torch.rand(imgs.shape[:-3] + (S, S), generator=g) > 0.3
    noise = model.masking_noise(3, torch.Generator().manual_seed(0))
    out = {}
    for return_pred in (True, False):
        model.zero_grad(set_to_none=True)
        loss, pred, mask = model(imgs, valid, noise=noise, return_pred=return_pred)
        loss.backward()
        out[return_pred] = (loss, mask, [p.grad for p in model.parameters()])
        assert (pred is None) != return_pred
    torch.testing.assert_close(out[False], out[True])
