"""The fast paths give the readable path's numbers: fused attention, kept-only patch embedding,
bf16 autocast, torch.compile, the fused optimizer step, activation checkpointing."""

import pytest
import torch

from geogfm.core.config import ModelConfig
from geogfm.models.fast import CompiledMAE, TrainStep, UnfuseBiasOnCPU, band_fastest
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


def test_band_fastest_keeps_values_and_puts_bands_last_in_memory() -> None:
    for shape in [(2, 5, 4, 6), (2, 3, 5, 4, 6)]:
        x = torch.randn(shape)
        y = band_fastest(x)
        assert torch.equal(y, x) and y.stride(-3) == 1  # same values; bands adjacent in memory
        assert y.permute(*range(y.ndim - 3), -2, -1, -3).is_contiguous()
        assert band_fastest(y).data_ptr() == y.data_ptr()  # no copy when already so


def _optimizer(model: torch.nn.Module, **kind) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, **kind)


def _close_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    # AdamW's step m / sqrt(v) is about +-lr whatever the gradient's size, so a weight whose
    # gradient is ~0 can move by up to lr on float rounding alone: compare to a tenth of a step
    torch.testing.assert_close(list(a.parameters()), list(b.parameters()), atol=1e-4, rtol=1e-4)


def _train(fused: bool, steps: int = 3, **step_kw) -> tuple[list[torch.Tensor], MaskedAutoencoder]:
    # readable: explicit attention, every patch embedded, AdamW's per-parameter loop; fast: SDPA,
    # kept patches only, AdamW's fused kernel
    model = _mae(_tiny(depth=2, fused_attn=fused))
    opt = _optimizer(model, **({"fused": True} if fused else {"foreach": False}))
    step = TrainStep(model, opt, generator=torch.Generator().manual_seed(0), **step_kw)
    imgs, valid = _batch()
    return [step(imgs, valid) for _ in range(steps)], model


def test_fused_train_steps_equal_readable_train_steps() -> None:
    losses, readable = _train(fused=False, compile=False)
    fused_losses, fused = _train(fused=True, compile=False)
    torch.testing.assert_close(fused_losses, losses)
    _close_params(fused, readable)
    assert losses[-1] < losses[0]  # and they trained


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",  # Dynamo's graph and AOTAutograd's joint forward-backward, run eagerly
        pytest.param("inductor", marks=pytest.mark.slow),  # + Inductor's code (~1-2 min cold)
    ],
)
def test_compiled_train_steps_equal_readable_train_steps(backend: str) -> None:
    # the benchmark's "compiled" variant: fullgraph, band-fastest images, fused AdamW
    torch._dynamo.reset()
    losses, readable = _train(fused=False, compile=False)
    options = {"backend": backend}
    compiled_losses, compiled = _train(fused=True, compile=True, compile_options=options)
    torch.testing.assert_close(compiled_losses, losses)
    _close_params(compiled, readable)


def test_compiled_mae_wraps_the_model() -> None:
    model = _mae(_tiny(depth=1))
    net = CompiledMAE(model, backend="eager")
    assert net.module is model  # what training.steps.unwrap finds
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]
    imgs, valid = _batch()
    noise = model.masking_noise(2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(net(imgs, valid, noise=noise), model(imgs, valid, noise=noise))
    with net.no_sync():  # a no-op without DDP, so a loop may call it either way
        pass


def _unfused_backend(seen: list[torch.fx.Graph]):
    # AOTAutograd's forward graph, rewritten by the pass and then run eagerly (no Inductor)
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def forward_compiler(gm: torch.fx.GraphModule, example_inputs):
        UnfuseBiasOnCPU()(gm.graph)
        gm.recompile()
        seen.append(gm.graph)
        return make_boxed_func(gm)

    return aot_autograd(fw_compiler=forward_compiler)


def test_unfuse_bias_pass_keeps_values_and_gradients() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)
    )  # both biases unfused: GELU, then the residual add and the sum
    qk = torch.nn.Linear(8, 8)  # its output goes into a matmul: stays addmm

    def f(x):
        y = x + mlp(x)
        return (qk(y) @ y.transpose(-2, -1)).square().mean()

    x = torch.randn(3, 5, 8)
    want = f(x)
    want_grads = torch.autograd.grad(want, [*mlp.parameters(), *qk.parameters()])
    graphs: list[torch.fx.Graph] = []
    got = torch.compile(f, backend=_unfused_backend(graphs), fullgraph=True)(x)
    got_grads = torch.autograd.grad(got, [*mlp.parameters(), *qk.parameters()])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grads, want_grads)
    ops = [n.target for n in graphs[0].nodes if n.op == "call_function"]
    assert ops.count(torch.ops.aten.addmm.default) == 1  # qk's
    assert ops.count(torch.ops.aten.mm.default) == 2  # the MLP's two Linears, bias unfused
