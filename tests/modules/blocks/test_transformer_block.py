import torch
from torch import nn

from geogfm.modules.blocks.mlp import Mlp
from geogfm.modules.blocks.transformer_block import DropPath, TransformerBlock


def test_mlp_shapes() -> None:
    mlp = Mlp(8, 32, out_features=4)
    assert mlp(torch.randn(2, 5, 8)).shape == (2, 5, 4)


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
