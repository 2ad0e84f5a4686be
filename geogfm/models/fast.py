"""The fast training step of the MAE: compiled whole, fed band-fastest images, AdamW fused.

The readable path and the fast path compute the same step (tests/models/test_fast_paths.py holds
them to ``assert_close``); this module is the fast one, for the training loop and the benchmark:

- the model's fused paths (``model.fused_attn``, the default): ``F.scaled_dot_product_attention``
  in every block, and only the kept patches embedded (the readable path embeds all, as MAE, then
  drops three quarters of them);
- ``torch.compile`` of the whole MAE forward (masking, encoder, decoder, loss) as one graph
  (``fullgraph=True``: a graph break is an error). Inductor fuses the norms, GELUs, residual adds
  and the loss into a few loops, forward and backward. The masking noise is drawn outside the
  graph (a ``torch.Generator`` cannot be traced) and passed in;
- images in band-fastest memory (:func:`band_fastest`, "channels-last"): the graph reads the image
  in patch order, ``(row, col, band)`` with band fastest (``patchify``), for the patch embedding and
  for the loss target; from ``(B, C, H, W)`` memory each value is a separate strided load, from
  band-fastest memory a patch row is ``p * C`` contiguous values;
- only the removed patches predicted: :class:`TrainStep` asks for no prediction
  (``return_pred=False``), so the decoder's final norm and projection and the loss run on the
  removed patches alone (the readable path predicts all, as MAE, and the loss drops the kept ones);
- each Linear's bias added in the elementwise loop that reads its output (GELU, residual add)
  instead of written into the output before the GEMM (:class:`UnfuseBiasOnCPU`, CPU only);
- AdamW's ``fused=True`` kernel (CPU and CUDA): one pass over every parameter, where the readable
  ``foreach=False`` loop runs ~10 small ops per parameter tensor.

Use::

    opt = torch.optim.AdamW(param_groups(mae, wd), lr=lr, fused=True)
    step = TrainStep(mae, opt, generator=torch.Generator().manual_seed(0))
    loss = step(imgs, valid)  # forward + backward + optimizer step; imgs (B, [T,] C, H, W)

or, inside a loop that owns its step: ``net = CompiledMAE(mae)`` and call ``net`` as the MAE.
"""

from __future__ import annotations

import operator
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

__all__ = ["CompiledMAE", "TrainStep", "band_fastest"]


def band_fastest(imgs: Tensor) -> Tensor:
    """``imgs`` (B, [T,] C, H, W), same shape and values, with the band as the fastest axis.

    ``torch.channels_last`` for (B, C, H, W); the same layout per date for (B, T, C, H, W). No copy
    when ``imgs`` is laid out so already.
    """
    return imgs.movedim(-3, -1).contiguous().movedim(-1, -3)


def _pointwise_or_saved(node: fx.Node) -> bool:
    """Every use of ``node`` (through views) is elementwise, or the graph's output."""
    if node.op == "output":
        return True
    if node.op != "call_function":
        return False
    target = node.target
    if target is operator.getitem or (isinstance(target, torch._ops.OpOverload) and target.is_view):
        return all(_pointwise_or_saved(u) for u in node.users)
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags


class UnfuseBiasOnCPU(CustomGraphPass):
    """Inductor pass: ``addmm(bias, a, b)`` -> ``mm(a, b) + bias`` on the CPU, where possible.

    Where every use of the result is elementwise (GELU, residual add, norm, loss) or saved for
    backward. ``addmm`` writes the bias into its output before the GEMM accumulates into it, one
    extra pass over every Linear output; unfused, the bias add joins the elementwise loop that
    reads the output anyway. Inductor does this itself on GPUs (``unfuse_bias_add_to_pointwise``);
    on the CPU it keeps ``addmm``. Same values up to float rounding order.
    """

    def __call__(self, graph: fx.Graph) -> None:
        aten = torch.ops.aten
        for node in list(graph.nodes):
            if node.target is not aten.addmm.default or len(node.args) != 3:
                continue
            bias, a, b = node.args
            val = node.meta.get("val")
            if (
                val is None
                or val.device.type != "cpu"
                or node.kwargs.get("beta", 1) != 1
                or node.kwargs.get("alpha", 1) != 1
                or not isinstance(bias, fx.Node)
                or bias.meta["val"].ndim != 1
                or not all(_pointwise_or_saved(u) for u in node.users)
            ):
                continue
            with graph.inserting_before(node):
                mm = graph.call_function(aten.mm.default, (a, b))
                add = graph.call_function(aten.add.Tensor, (mm, bias))
            mm.meta.update(node.meta)
            add.meta.update(node.meta)
            node.replace_all_uses_with(add)
            graph.erase_node(node)

    def uuid(self) -> Any:
        return get_hash_for_files((__file__,))


_UNFUSE_BIAS = UnfuseBiasOnCPU()


def inductor_options(compile_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``torch.compile`` keyword arguments with :class:`UnfuseBiasOnCPU` added for Inductor.

    A ``mode`` becomes its Inductor options (``torch.compile`` takes a mode or options, not
    both); other backends are left as they are.
    """
    kwargs = dict(compile_kwargs)
    if kwargs.get("backend", "inductor") != "inductor":
        return kwargs
    mode = kwargs.pop("mode", None)
    options = torch._inductor.list_mode_options(mode) if mode else {}
    options = {"post_grad_custom_post_pass": _UNFUSE_BIAS, **options}
    return {**kwargs, "options": {**options, **kwargs.get("options", {})}}


class CompiledMAE(nn.Module):
    """A MAE (or a DDP wrapper of one) compiled whole; call it as the MAE.

    ``forward(imgs, valid, noise=..., ...)`` moves ``imgs`` to band-fastest memory (one copy,
    outside the graph) and runs the compiled model. ``.module`` is the model it wraps (what
    ``geogfm.training.steps.unwrap`` looks for); its parameters are the model's (the state dict
    keys gain a ``module.`` prefix, as DDP's do: save ``net.module``'s).

    Args:
        model: the :class:`~geogfm.models.gfm_mae.MaskedAutoencoder`, or a DDP of it.
        fullgraph: a graph break is an error (the MAE has none).
        **compile_kwargs: passed to ``torch.compile`` (``mode``, ``dynamic``, ``backend``).
    """

    def __init__(self, model: nn.Module, *, fullgraph: bool = True, **compile_kwargs: Any) -> None:
        super().__init__()
        self.module = model
        compiled = torch.compile(model, fullgraph=fullgraph, **inductor_options(compile_kwargs))
        object.__setattr__(self, "compiled", compiled)  # not a submodule: no second state dict

    def forward(self, imgs: Tensor, valid: Tensor | None = None, **kwargs: Any) -> Any:
        """The wrapped model's ``forward``, compiled; ``imgs`` as the model takes them."""
        return self.compiled(band_fastest(imgs), valid, **kwargs)

    def no_sync(self):
        """DDP's ``no_sync`` when the wrapped model has one, else a no-op context."""
        return self.module.no_sync() if hasattr(self.module, "no_sync") else nullcontext()


class TrainStep:
    """One optimizer step of a MAE: masking noise, forward, backward, optimizer step.

    Args:
        model: the :class:`~geogfm.models.gfm_mae.MaskedAutoencoder` (its ``fused_attn`` picks
            the fused or the readable attention and patch embedding).
        optimizer: its optimizer; the fast path is ``torch.optim.AdamW(..., fused=True)``.
        compile: run the model as :class:`CompiledMAE`; False: eager.
        generator: source of the masking noise (CPU); None: the global RNG.
        amp_dtype: autocast dtype (``torch.bfloat16``), or None for full precision.
        compile_options: keyword arguments for ``torch.compile`` (``mode``, ``backend``).

    Calling it with ``imgs`` (B, [T,] C, H, W) and ``valid`` (B, [T,] H, W) or None returns the
    loss (detached) of the step it took.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        compile: bool = True,
        generator: torch.Generator | None = None,
        amp_dtype: torch.dtype | None = None,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.forward = CompiledMAE(model, **(compile_options or {})) if compile else model
        self.generator = generator
        self.amp_dtype = amp_dtype

    def __call__(self, imgs: Tensor, valid: Tensor | None = None) -> Tensor:
        noise = self.model.masking_noise(imgs.shape[0], self.generator, imgs.device)  # (B, N)
        amp = nullcontext()
        if self.amp_dtype is not None:
            amp = torch.autocast(imgs.device.type, dtype=self.amp_dtype)
        with amp:
            loss, _, _ = self.forward(imgs, valid, noise=noise, return_pred=False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
