import pytest
import torch
from torch import nn

from geogfm.modules.attention.multihead_attention import MultiHeadAttention

B, L, D, NH = 3, 7, 32, 4


def _pair(seed: int = 0) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Our attention and torch's reference with the same weights."""
    torch.manual_seed(seed)
    ours = MultiHeadAttention(D, NH)
    ref = nn.MultiheadAttention(D, NH, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ours, ref.train()  # train mode (dropout 0) keeps torch off its fast path


def _padding() -> torch.Tensor:
    kpm = torch.zeros(B, L, dtype=torch.bool)  # True = ignore this key
    kpm[0, 5:] = True
    kpm[2, 1:3] = True
    return kpm


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_torch_multihead_attention(fused: bool, padded: bool) -> None:
    ours, ref = _pair()
    ours.fused = fused
    x = torch.randn(B, L, D)
    kpm = _padding() if padded else None
    expected, _ = ref(x, x, x, key_padding_mask=kpm, need_weights=False)
    torch.testing.assert_close(ours(x, key_padding_mask=kpm), expected)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("as_float", [False, True])
def test_attn_mask_matches_torch(fused: bool, as_float: bool) -> None:
    ours, ref = _pair(1)
    ours.fused = fused
    x = torch.randn(B, L, D)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)  # True = may not attend
    kpm = _padding()
    if as_float:  # additive masks: 0 = attend, -inf = not
        causal = torch.zeros(L, L).masked_fill(causal, float("-inf"))
        kpm = torch.zeros(B, L).masked_fill(kpm, float("-inf"))
    expected, _ = ref(x, x, x, attn_mask=causal, key_padding_mask=kpm, need_weights=False)
    torch.testing.assert_close(ours(x, key_padding_mask=kpm, attn_mask=causal), expected)


def test_fused_and_explicit_paths_agree_with_gradients() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, NH)
    x = torch.randn(B, L, D, requires_grad=True)
    grads = []
    for fused in (True, False):
        attn.fused = fused
        x.grad = None
        attn(x, key_padding_mask=_padding()).square().sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("fused", [True, False])
def test_fully_masked_row_gives_no_nan(fused: bool) -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, NH, fused=fused)
    x = torch.randn(B, L, D, requires_grad=True)
    kpm = torch.zeros(B, L, dtype=torch.bool)
    kpm[1] = True  # sample 1: every key ignored
    out = attn(x, key_padding_mask=kpm)
    assert torch.isfinite(out).all()
    # no key to attend to -> zero attention output -> only the projection bias remains
    torch.testing.assert_close(out[1], attn.proj.bias.expand(L, D))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # the other samples are unaffected
    torch.testing.assert_close(out[0], attn(x)[0])


def test_fully_masked_query_row_from_attn_mask() -> None:
    attn = MultiHeadAttention(D, NH)
    x = torch.randn(B, L, D)
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[2] = True  # query 2 may attend to nothing
    out = attn(x, attn_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 2], attn.proj.bias.expand(B, D))


def test_dim_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="dim=30 is not divisible by num_heads=4"):
        MultiHeadAttention(30, 4)
