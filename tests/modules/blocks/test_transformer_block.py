import pytest
import torch
from torch import nn

from geogfm.modules.blocks.mlp import Mlp
from geogfm.modules.blocks.transformer_block import DropPath, LayerScale, TransformerBlock


def test_mlp_shapes() -> None:
    mlp = Mlp(8, 32, out_features=4)
    out = mlp(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in mlp.parameters())


def test_block_forward_backward() -> None:
    torch.manual_seed(0)
    blk = TransformerBlock(32, 4, mlp_ratio=2.0, drop_path=0.1)
    x = torch.randn(2, 9, 32, requires_grad=True)
    out = blk(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in blk.parameters())


def test_drop_path_identity_when_zero() -> None:
    blk = TransformerBlock(16, 2, drop_path=0.0)
    assert isinstance(blk.drop_path1, nn.Identity) and isinstance(blk.drop_path2, nn.Identity)
    assert isinstance(TransformerBlock(16, 2, drop_path=0.2).drop_path1, DropPath)


def test_drop_path_per_sample_and_eval_identity() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(64, 3, 4)
    y = dp(x)
    # each sample is either dropped (0) or kept and rescaled (2), whole
    per_sample = y.reshape(64, -1)
    assert ((per_sample == 0).all(1) | (per_sample == 2).all(1)).all()
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(dp.eval()(x), x)


def test_norm_layer_is_a_type() -> None:
    blk = TransformerBlock(16, 2, norm_layer=nn.RMSNorm)
    assert isinstance(blk.norm1, nn.RMSNorm)
    assert blk(torch.randn(1, 3, 16)).shape == (1, 3, 16)


def test_block_padding_mask_isolates_ignored_tokens() -> None:
    # a token every other token ignores cannot change their outputs
    torch.manual_seed(0)
    blk = TransformerBlock(16, 2).eval()
    x = torch.randn(1, 5, 16)
    kpm = torch.tensor([[False, False, False, False, True]])
    x2 = x.clone()
    x2[0, 4] = 100.0
    torch.testing.assert_close(blk(x, kpm)[:, :4], blk(x2, kpm)[:, :4])


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_matches_torch_transformer_encoder_layer(norm_first: bool, fused: bool) -> None:
    # pre-norm = TransformerEncoderLayer(norm_first=True), post-norm = (norm_first=False)
    torch.manual_seed(0)
    D, nh = 32, 4
    blk = TransformerBlock(D, nh, mlp_ratio=2.0, fused_attn=fused, norm_first=norm_first)
    ref = nn.TransformerEncoderLayer(
        D, nh, dim_feedforward=2 * D, dropout=0.0, activation="gelu", batch_first=True,
        norm_first=norm_first,
    )  # fmt: skip
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(blk.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(blk.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(blk.attn.proj.weight)
        ref.self_attn.out_proj.bias.copy_(blk.attn.proj.bias)
        ref.linear1.load_state_dict(blk.mlp.fc1.state_dict())
        ref.linear2.load_state_dict(blk.mlp.fc2.state_dict())
        for name in ("norm1", "norm2"):
            getattr(ref, name).load_state_dict(getattr(blk, name).state_dict())
            getattr(ref, name).weight.uniform_(0.5, 1.5)  # not the identity init
            getattr(blk, name).load_state_dict(getattr(ref, name).state_dict())
    x = torch.randn(2, 7, D)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 4:] = True
    torch.testing.assert_close(blk(x, kpm), ref.train()(x, src_key_padding_mask=kpm))


def test_layer_scale() -> None:
    torch.manual_seed(0)
    assert isinstance(TransformerBlock(16, 2).ls1, nn.Identity)  # off by default
    blk = TransformerBlock(16, 2, layer_scale=1e-5)
    assert isinstance(blk.ls1, LayerScale) and (blk.ls2.gamma == 1e-5).all()
    x = torch.randn(2, 5, 16)
    # a tiny gain makes the block start near the identity, yet every gain learns
    torch.testing.assert_close(blk(x), x, atol=1e-3, rtol=0)
    blk(x).square().sum().backward()
    assert blk.ls1.gamma.grad is not None and blk.ls2.gamma.grad.abs().sum() > 0


def test_post_norm_forward_backward_with_layer_scale() -> None:
    torch.manual_seed(0)
    blk = TransformerBlock(16, 2, norm_first=False, layer_scale=0.1, drop_path=0.1)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = blk(x)
    # post-norm: the output is normalised (LayerNorm with its identity init)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    (out * torch.randn_like(out)).sum().backward()
    assert all(p.grad is not None for p in blk.parameters())
