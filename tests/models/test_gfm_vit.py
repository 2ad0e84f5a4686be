import pytest
import torch
from torch import nn

from geogfm.core.config import ModelConfig
from geogfm.models.gfm_vit import PRESETS, GeoViTBackbone
from geogfm.modules.embeddings.geo_encoding import band_wavelengths, date_features

SIZES = {  # preset: (embed_dim, depth, num_heads)
    "gfm_vit_tiny": (192, 12, 3),
    "gfm_vit_small": (384, 12, 6),
    "gfm_vit_base": (768, 12, 12),
    "gfm_vit_large": (1024, 24, 16),
}


def _cfg(**kw) -> ModelConfig:
    base = dict(embed_dim=32, depth=2, num_heads=2, image_size=16, patch_size=4, in_chans=13)
    return ModelConfig(**{**base, **kw})


def test_features_pool_head_shapes() -> None:
    torch.manual_seed(0)
    enc = GeoViTBackbone(_cfg())
    x = torch.randn(2, 13, 16, 16)
    feats = enc.forward_features(x)
    assert feats.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(enc.pool(feats), feats[:, 0])
    torch.testing.assert_close(enc.forward_head(feats), feats[:, 0])
    torch.testing.assert_close(enc(x), feats[:, 0])


def test_ids_keep_keeps_those_tokens_with_their_positions() -> None:
    torch.manual_seed(0)
    enc = GeoViTBackbone(_cfg()).eval()
    x = torch.randn(2, 13, 16, 16)
    full = enc.forward_features(x)  # (B, 1 + L, D)
    # attention is permutation-equivariant and positions are added before tokens are picked, so
    # keeping all tokens in any order must give the same tokens, reordered
    perm = torch.stack([torch.randperm(16), torch.randperm(16)])  # (B, L)
    kept = enc.forward_features(x, ids_keep=perm)
    torch.testing.assert_close(kept[:, 0], full[:, 0])
    torch.testing.assert_close(
        kept[:, 1:], torch.gather(full[:, 1:], 1, perm[..., None].expand(-1, -1, 32))
    )
    assert enc.forward_features(x, ids_keep=perm[:, :5]).shape == (2, 1 + 5, 32)


def test_band_count_from_config() -> None:
    enc = GeoViTBackbone(_cfg(in_chans=4))
    assert enc(torch.randn(1, 4, 16, 16)).shape == (1, 32)
    with pytest.raises(ValueError, match="input has 13 bands .* in_chans=4"):
        enc(torch.randn(1, 13, 16, 16))


def test_mae_weight_init() -> None:
    torch.manual_seed(0)
    enc = GeoViTBackbone(_cfg(embed_dim=256, num_heads=4))
    assert "pos_embed" not in enc.state_dict()  # fixed sincos, recomputed from the config
    assert not any(n == "pos_embed" for n, _ in enc.named_parameters())
    assert 0.01 < enc.cls_token.std().item() < 0.03
    for m in enc.modules():
        if isinstance(m, nn.Linear):
            assert (m.bias == 0).all()
            bound = (6 / (m.in_features + m.out_features)) ** 0.5  # xavier_uniform
            assert m.weight.abs().max() <= bound
    w = enc.patch_embed.proj.weight
    assert w.abs().max() <= (6 / (w.shape[0] + w[0].numel())) ** 0.5


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets(name: str) -> None:
    cfg = PRESETS[name]()
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == SIZES[name]
    decoder = (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads)
    assert decoder == ModelConfig.SIZES[name.removeprefix("gfm_vit_")][3:]
    assert ModelConfig(size=name.removeprefix("gfm_vit_")) == cfg  # params.yaml: model.size
    # forward / backward at toy depth and size, full width
    torch.manual_seed(0)
    enc = GeoViTBackbone(PRESETS[name](depth=1, image_size=32, patch_size=16, in_chans=3))
    x = torch.randn(2, 3, 32, 32)
    out = enc(x)
    assert out.shape == (2, SIZES[name][0])
    out.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_preset_overrides_other_fields() -> None:
    cfg = PRESETS["gfm_vit_small"](in_chans=13, image_size=64, drop_path=0.1)
    assert (cfg.embed_dim, cfg.in_chans, cfg.image_size, cfg.drop_path) == (384, 13, 64, 0.1)
    # a key given explicitly wins over the size table, and the config round-trips (checkpoints)
    cfg = ModelConfig(size="base", depth=2, decoder_depth=1)
    assert (cfg.embed_dim, cfg.depth, cfg.decoder_embed_dim, cfg.decoder_depth) == (768, 2, 512, 1)
    assert ModelConfig.model_validate(cfg.model_dump()) == cfg


# ------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    "variant",
    [
        {"patch_embed": "linear"},
        {"pos_embed": "learned"},
        {"pos_embed": "fourier"},
        {"norm_position": "post", "layer_scale": 1e-4},
        {"layer_scale": 0.1, "drop_path": 0.2},
        {"fused_attn": False},
    ],
)
def test_variants_forward_backward(variant: dict) -> None:
    torch.manual_seed(0)
    enc = GeoViTBackbone(_cfg(**variant))
    feats = enc.forward_features(torch.randn(2, 13, 16, 16))
    assert feats.shape == (2, 17, 32)
    feats.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert isinstance(enc.norm, nn.Identity) == (variant.get("norm_position") == "post")


def test_multi_date_per_frame_tokens_and_tubelets() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 13, 16, 16)  # (B, T, C, H, W)
    enc = GeoViTBackbone(_cfg(num_frames=4)).eval()
    feats = enc.forward_features(x)
    assert feats.shape == (2, 1 + 4 * 16, 32)
    # the frame-index encoding tells the dates apart: swapping two dates changes the features
    assert not torch.allclose(enc(x), enc(x[:, [1, 0, 2, 3]]))
    tub = GeoViTBackbone(_cfg(num_frames=4, tubelet_size=2))
    assert tub.forward_features(x).shape == (2, 1 + 2 * 16, 32)
    with pytest.raises(ValueError, match=r"input has 3 date\(s\) .* num_frames=4"):
        enc(x[:, :3])


def test_temporal_and_location_encodings() -> None:
    torch.manual_seed(0)
    enc = GeoViTBackbone(_cfg(num_frames=2, temporal_encoding=True, location_encoding=True))
    x = torch.randn(2, 2, 13, 16, 16)
    dates = date_features([["2021-08-14", "2021-11-02"], ["2022-02-20", "2022-05-11"]])
    latlon = torch.tensor([[46.0, 15.0], [-3.5, 120.0]])
    out = enc(x, dates=dates, latlon=latlon)
    assert out.shape == (2, 32)
    assert not torch.allclose(out, enc(x, dates=dates.flip(1), latlon=latlon))
    assert not torch.allclose(out, enc(x, dates=dates, latlon=latlon.flip(0)))
    out.square().sum().backward()
    assert enc.temporal_embed.scale.grad is not None and enc.location_embed.scale.grad is not None
    with pytest.raises(ValueError, match="temporal_encoding and dates go together"):
        enc(x, latlon=latlon)
    with pytest.raises(ValueError, match=r"latlon has shape \(2, 3\), expected \(2, 2\)"):
        enc(x, dates=dates, latlon=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="location_encoding and latlon go together"):
        GeoViTBackbone(_cfg())(x[:, 0], latlon=latlon)


def test_spectral_backbone_takes_another_band_set() -> None:
    bands = ["blue", "green", "red", "nir"]
    cfg = _cfg(in_chans=4, patch_embed="spectral", wavelengths=band_wavelengths(bands))
    torch.manual_seed(0)
    enc = GeoViTBackbone(cfg)
    assert enc(torch.randn(2, 4, 16, 16)).shape == (2, 32)
    wl = torch.tensor(band_wavelengths(["red", "nir", "swir16"]))
    assert enc(torch.randn(2, 3, 16, 16), wavelengths=wl).shape == (2, 32)
    with pytest.raises(ValueError, match="needs model.wavelengths, one per band"):
        _cfg(in_chans=4, patch_embed="spectral")
    with pytest.raises(ValueError, match="fixed band set; build it with model.patch_embed"):
        GeoViTBackbone(_cfg())(torch.randn(1, 13, 16, 16), wavelengths=wl)


@pytest.mark.parametrize("patch_embed", ["conv", "linear", "spectral"])
def test_embedding_only_kept_tokens_equals_embed_then_drop(patch_embed: str) -> None:
    # the fused path embeds only the kept patches and gathers their encodings; the readable path
    # embeds every patch, adds the encodings and drops the removed tokens: the same tokens
    bands = ["blue", "green", "red", "nir"]
    cfg = _cfg(
        in_chans=4,
        patch_embed=patch_embed,
        wavelengths=band_wavelengths(bands),
        num_frames=2,
        temporal_encoding=True,
        location_encoding=True,
    )
    torch.manual_seed(0)
    enc = GeoViTBackbone(cfg)
    x = torch.randn(2, 2, 4, 16, 16)
    meta = dict(
        dates=date_features([["2021-08-14", "2021-11-02"], ["2022-02-20", "2022-05-11"]]),
        latlon=torch.tensor([[46.0, 15.0], [-3.5, 120.0]]),
    )
    ids_keep = torch.stack([torch.randperm(32)[:8], torch.randperm(32)[:8]])  # (B, N')
    out = {}
    for kept_only in (True, False):
        enc.embed_kept_only = kept_only
        enc.zero_grad()
        feats = enc.forward_features(x, ids_keep, **meta)
        feats.square().sum().backward()
        out[kept_only] = (feats, [p.grad.clone() for p in enc.parameters()])
    assert out[True][0].shape == (2, 1 + 8, 32)
    torch.testing.assert_close(out[True], out[False])
