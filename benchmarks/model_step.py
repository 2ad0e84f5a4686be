"""Training-step time of the GeoViT MAE: the readable eager path vs the fused and compiled paths.

One step = forward + backward + AdamW step of the MAE of a size preset with its decoder, on a
fixed batch with fresh masking noise every step (``geogfm.models.fast.TrainStep``). Three variants,
built from the same seed (same weights, same masks), measured in this one process:

    readable  the explicit ``softmax(q kᵀ / √hd) v`` attention, every patch embedded then the
              removed ones dropped (MAE's order), AdamW's per-parameter loop (``foreach=False``);
              eager
    fused     ``F.scaled_dot_product_attention``, only the kept patches embedded, only the
              removed patches predicted (the loss reads no others; ``return_pred=False``), AdamW
              ``fused=True``; eager
    compiled  fused + ``torch.compile`` of the whole MAE (Inductor, fullgraph: a graph break is
              an error) fed band-fastest ("channels-last") images, Linear biases added in the
              elementwise loops that follow (``CompiledMAE``); the masking noise is drawn
              outside and passed in (a torch.Generator cannot be traced)

All three are fp32 on the CPU (the fp32 ratios never mix precisions). The fused AdamW kernel is
part of "fused": the readable baseline runs AdamW's per-parameter loop, as written. The variants'
steps are
interleaved in rounds (so that load from other processes falls on all of them alike); each
variant's best round (mean step time of its fastest round, as ``timeit`` reports) and median round
are printed, with the ratios of the best and of the median rounds to ``readable``. The loss of the
first step is printed too: the variants compute the same thing. On a machine shared with other
jobs, ``--threads 1 --clock cpu`` (this process's CPU time, which other processes' load barely
changes) gives steadier ratios than wall time with several OpenMP threads, which stall whenever
one of them is descheduled.

CPU section (always): presets tiny and small, batch 8, 12 bands, 224 px, patch 16, fp32: the
issue's standard input (ViT-B/16's 224 px: 196 tokens, of which MAE keeps 49) at a CPU batch.
``--bands 10 --image 128`` is the earlier, smaller setting (64 tokens, 16 kept), where per-op
overhead weighs more and attention less. ``--bf16-matmul`` adds two REDUCED-PRECISION rows,
"fused bf16mm" and "compiled bf16mm": the same fp32 model with
``torch.set_float32_matmul_precision("medium")`` (oneDNN computes fp32 matmuls in bf16, on AMX
where the CPU has it; the CPU analogue of TF32 on a GPU), timed against the fp32 readable path;
their loss@1 column shows the loss parity. They are not fp32 figures.
CUDA section (when a GPU is available, or ``--mfu-device``): ViT-B/16 MAE (preset base), 12
bands, 224 px, bf16 autocast, batch 256: images/s and model FLOP utilisation, MFU = model FLOPs
of one step (forward + backward, counted by ``torch.utils.flop_counter`` on the readable model,
whose matmuls it always sees) x steps/s / the device's peak dense bf16 FLOP/s (``PEAK_TFLOPS``
or ``--peak-tflops``).

Usage::

    .venv/bin/python benchmarks/model_step.py                      # CPU (+ CUDA if present)
    .venv/bin/python benchmarks/model_step.py --threads 2 --steps 30 --rounds 10
    .venv/bin/python benchmarks/model_step.py --bands 10 --image 128   # the smaller input
    .venv/bin/python benchmarks/model_step.py --threads 1 --clock cpu  # on a busy machine
    .venv/bin/python benchmarks/model_step.py --presets small --bf16-matmul  # + bf16 matmul rows
    .venv/bin/python benchmarks/model_step.py --presets tiny --no-compile
    .venv/bin/python benchmarks/model_step.py --skip-cpu --mfu-batch 128   # the GPU part only
    # the CUDA section's code path on CPU at toy size (a smoke test, not a measurement):
    .venv/bin/python benchmarks/model_step.py --skip-cpu --mfu-device cpu --mfu-preset tiny \\
        --mfu-image 32 --mfu-batch 2 --steps 2 --rounds 1 --peak-tflops 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from geogfm.core.config import TrainConfig
from geogfm.models.fast import TrainStep
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import PRESETS, GeoViTBackbone
from geogfm.training.optimizer import param_groups

VARIANTS = ("readable", "fused", "compiled")
#: reduced-precision variants (``--bf16-matmul``): fp32 model, matmuls in bf16
BF16MM = ("fused bf16mm", "compiled bf16mm")

#: Peak dense bf16 tensor-core TFLOP/s from the vendor datasheets, by device-name substring;
#: the first match wins, so the more specific names come first.
PEAK_TFLOPS = {
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # SXM
    "H200": 989.4,  # also GH200
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.1,
    "L40": 181.0,
    "L4": 121.0,
}


class Runner:
    """One variant: its model, optimizer, masking generator and step."""

    def __init__(self, variant, preset, *, bands, image, patch, batch, device, bf16):
        readable = variant == "readable"
        # "... bf16mm": fp32 matmuls computed in bf16 (set around each step, restored after)
        self.precision = "medium" if variant.endswith("bf16mm") else "highest"
        cfg = PRESETS[f"gfm_vit_{preset}"](
            in_chans=bands, image_size=image, patch_size=patch, fused_attn=not readable
        )
        torch.manual_seed(0)  # the same weights in every variant
        self.model = MaskedAutoencoder(cfg, GeoViTBackbone(cfg)).to(device)
        train = TrainConfig(batch_size=batch)
        opt = train.optimizer
        # readable: AdamW's per-parameter loop; fused and compiled: its one fused kernel
        kind = {"foreach": False} if readable else {"fused": True}
        self.opt = torch.optim.AdamW(
            param_groups(self.model, opt.weight_decay),
            lr=train.effective_lr,
            betas=tuple(opt.betas),
            **kind,
        )
        self.gen = torch.Generator().manual_seed(0)  # the same masks in every variant
        self.device, self.batch = torch.device(device), batch
        self.amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else None
        self.train_step = TrainStep(
            self.model,
            self.opt,
            compile=variant.startswith("compiled"),
            generator=self.gen,
            amp_dtype=torch.bfloat16 if bf16 else None,
        )

    def step(self, imgs, valid):
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.precision)
        try:
            return self.train_step(imgs, valid)
        finally:
            torch.set_float32_matmul_precision(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(batch, bands, image, device):
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(batch, bands, image, image, generator=g).to(device)
    valid = (torch.rand(batch, image, image, generator=g) > 0.1).to(device)
    return imgs, valid


def compare(
    preset, variants, *, bands, image, patch, batch, device, bf16, warmup, steps, rounds,
    clock=time.perf_counter,
):  # fmt: skip
    """Best and median seconds per step, and first-step loss, of each variant (in rounds)."""
    device = torch.device(device)
    imgs, valid = _batch(batch, bands, image, device)
    runners, first_loss, times = {}, {}, {v: [] for v in variants}
    for v in variants:
        t0 = time.perf_counter()
        runners[v] = Runner(
            v, preset, bands=bands, image=image, patch=patch, batch=batch, device=device, bf16=bf16
        )
        first_loss[v] = runners[v].step(imgs, valid).item()  # compiles "compiled"
        for _ in range(warmup - 1):
            runners[v].step(imgs, valid)
        _sync(device)
        print(
            f"  {preset}/{v}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True
        )
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for v in variants:
            _sync(device)
            t0 = clock()
            for _ in range(per_round):
                runners[v].step(imgs, valid)
            _sync(device)
            times[v].append((clock() - t0) / per_round)
    best = {v: min(times[v]) for v in variants}
    median = {v: statistics.median(times[v]) for v in variants}
    return best, median, first_loss


def step_flops(runner_cfg: dict) -> int:
    """Model FLOPs of one forward + backward: the work a step needs.

    Counted on the readable attention (whose matmuls the counter always sees) with only the kept
    patches embedded, as the fused paths do.
    """
    r = Runner("readable", **runner_cfg)
    r.model.encoder.embed_kept_only = True
    imgs, valid = _batch(r.batch, runner_cfg["bands"], runner_cfg["image"], r.device)
    noise = r.model.masking_noise(r.batch, r.gen, r.device)
    with FlopCounterMode(display=False) as counter:
        with r.amp or nullcontext():
            loss, _, _ = r.model(imgs, valid, noise=noise)
        loss.backward()
    return counter.get_total_flops()


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "given"
    if device.type != "cuda":
        return None, "unknown"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops, f"datasheet, {key}"
    return None, "unknown"


def _row(label, v, best, median, first_loss, batch, extra):
    """One variant's line; speedups are readable / variant, of the best and of the median rounds."""
    print(
        f"  {label:22s} {1e3 * best[v]:9.1f} {1e3 * median[v]:9.1f} {batch / best[v]:9.1f} "
        f"{best['readable'] / best[v]:7.2f}x {median['readable'] / median[v]:7.2f}x "
        f"{extra:>8s}   {first_loss:.5f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bands", type=int, default=12)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (>= 1)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of timed steps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (steadier on a busy machine, with --threads 1)",
    )
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    ap.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast in the CPU section")
    ap.add_argument(
        "--bf16-matmul",
        action="store_true",
        help="add reduced-precision rows: fp32 matmuls computed in bf16 (matmul precision medium)",
    )
    ap.add_argument("--skip-cpu", action="store_true", help="skip the CPU section")
    ap.add_argument("--mfu-device", default="cuda" if torch.cuda.is_available() else None)
    ap.add_argument("--mfu-preset", default="base")
    ap.add_argument("--mfu-bands", type=int, default=12)
    ap.add_argument("--mfu-image", type=int, default=224)
    ap.add_argument("--mfu-batch", type=int, default=256)
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    args = ap.parse_args()
    variants = list(VARIANTS) + (list(BF16MM) if args.bf16_matmul else [])
    variants = [v for v in variants if not (args.no_compile and v.startswith("compiled"))]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    timing = dict(warmup=max(1, args.warmup), steps=args.steps, rounds=args.rounds, clock=clock)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    def header(extra: str) -> str:
        return (
            f"\n  {'':22s} {'best ms':>9s} {'median':>9s} {'img/s':>9s} {'x best':>8s} "
            f"{'x median':>8s} {extra:>8s}   loss@1    ({args.clock} time per step; best and "
            f"median of {args.rounds} rounds)"
        )

    if not args.skip_cpu:
        print(
            f"\nCPU: MAE training step (forward + backward + AdamW), batch {args.batch}, "
            f"{args.bands} bands, {args.image} px, patch {args.patch}, "
            f"{'bf16 autocast' if args.cpu_bf16 else 'fp32'}"
        )
        size = dict(bands=args.bands, image=args.image, patch=args.patch, batch=args.batch)
        results = {}
        for preset in args.presets:
            flops = step_flops({"preset": preset, **size, "device": "cpu", "bf16": args.cpu_bf16})
            print(f"  {preset}: {flops / 1e9:.2f} GFLOP per step (forward + backward)")
            cmp = compare(preset, variants, **size, device="cpu", bf16=args.cpu_bf16, **timing)
            results[preset] = (flops, *cmp)
        print(header("GFLOP/s"))
        for preset, (flops, best, median, loss) in results.items():
            for v in variants:
                rate = f"{flops / best[v] / 1e9:.1f}"
                _row(f"{preset} {v}", v, best, median, loss[v], args.batch, rate)
        if args.bf16_matmul:
            print(
                "  (bf16mm rows: REDUCED PRECISION, fp32 matmuls computed in bf16; their x is "
                "against the fp32 readable path and is not an fp32 speedup)"
            )

    if not args.mfu_device:
        print("\nno CUDA device: the ViT-B/16 bf16 images/s and MFU section was not run")
        return
    device = torch.device(args.mfu_device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 leftovers (norms, loss)
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU (a smoke test of the GPU section's code, not a measurement)"
    cfg = dict(
        bands=args.mfu_bands, image=args.mfu_image, patch=16, batch=args.mfu_batch,
        device=device, bf16=True,
    )  # fmt: skip
    flops = step_flops({"preset": args.mfu_preset, **cfg})
    peak, source = peak_tflops(device, args.peak_tflops)
    print(
        f"\n{name}: {args.mfu_preset} preset /16 MAE training step, batch {args.mfu_batch}, "
        f"{args.mfu_bands} bands, {args.mfu_image} px, bf16 autocast; {flops / 1e9:.1f} GFLOP "
        f"per step (forward + backward); peak {peak} TFLOP/s ({source})"
    )
    variants = [v for v in variants if not v.endswith("bf16mm")]  # autocast bf16 already
    best, median, loss = compare(args.mfu_preset, variants, **cfg, **timing)
    print(header("MFU"))
    for v in variants:
        mfu = f"{100 * flops / best[v] / (peak * 1e12):.1f}%" if peak else "n/a"
        _row(v, v, best, median, loss[v], args.mfu_batch, mfu)


if __name__ == "__main__":
    main()
