"""The fast paths give the readable path's numbers: fused attention, bf16 autocast, torch.compile,
activation checkpointing."""

import pytest
import torch

from geogfm.core.config import ModelConfig
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import GeoViTBackbone, gfm_vit_tiny

C, S, P = 10, 32, 8


def _mae(cfg: ModelConfig) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(cfg, GeoViTBackbone(cfg))


def _tiny(**kw) -> ModelConfig:
    # the real tiny preset (192 wide, 12 blocks, its decoder) on a toy image
    return gfm_vit_tiny(in_chans=C, image_size=S, patch_size=P, **kw)


def _batch(B: int = 2, T: int | None = None):
    g = torch.Generator().manual_seed(0)
    lead = (B,) if T is None else (B, T)
    imgs = torch.randn(*lead, C, S, S, generator=g)
    valid = torch.rand(*lead, S, S, generator=g) > 0.2
    return imgs, valid


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_fused_equals_explicit_attention_end_to_end() -> None:
    imgs, valid = _batch()
    out = {}
    for fused in (True, False):
        model = _mae(_tiny(depth=2, fused_attn=fused))
        loss, pred, _ = model(imgs, valid, generator=torch.Generator().manual_seed(0))
        loss.backward()
        out[fused] = (loss, pred, _grads(model))
    torch.testing.assert_close(out[True][:2], out[False][:2])
    torch.testing.assert_close(out[True][2], out[False][2])


def test_bf16_autocast_end_to_end() -> None:
    model = _mae(_tiny(depth=2, num_frames=2, temporal_encoding=True))
    imgs, valid = _batch(T=2)
    dates = torch.tensor([[[2021.0, 100.0], [2021.0, 200.0]]] * 2)
    kw = dict(dates=dates, noise=model.masking_noise(2, torch.Generator().manual_seed(0)))
    ref, _, _ = model(imgs, valid, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = model(imgs, valid, **kw)
    assert pred.dtype == torch.bfloat16  # the blocks ran in bf16 ...
    assert loss.dtype == torch.float32  # ... and the loss in fp32
    torch.testing.assert_close(loss, ref, rtol=0.05, atol=0.0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_compile_tiny_model_has_no_graph_break() -> None:
    # the whole MAE forward, fed its masking noise (a torch.Generator cannot be traced), is one
    # graph; fullgraph=True raises on any break. The "eager" backend runs Dynamo's tracing without
    # Inductor's code generation, which keeps the test fast; the benchmark runs Inductor.
    model = _mae(_tiny())
    imgs, valid = _batch()
    noise = model.masking_noise(2, torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(model)(imgs, valid, noise=noise)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    got = compiled(imgs, valid, noise=noise)
    want = model(imgs, valid, noise=noise)
    torch.testing.assert_close(got, want)
    got[0].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_activation_checkpointing_same_gradients(drop_path: float) -> None:
    imgs, valid = _batch()
    grads = {}
    for ckpt in (False, True):
        model = _mae(_tiny(depth=3, drop_path=drop_path, grad_checkpointing=ckpt))
        torch.manual_seed(1)  # the same stochastic depth draws; checkpoint replays them
        loss, _, _ = model(imgs, valid, generator=torch.Generator().manual_seed(0))
        loss.backward()
        grads[ckpt] = (loss, _grads(model))
    torch.testing.assert_close(grads[True], grads[False])
