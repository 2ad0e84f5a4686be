import pytest
import torch
from torch import nn

from geogfm.core.config import ModelConfig
from geogfm.models.gfm_vit import PRESETS, GeoViTBackbone

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
