"""Overhead of ``fit`` (loop, loader, bookkeeping) over a bare loop of model steps.

Both sides train the same model (a size preset, built from the same seed) with the same optimizer
(geogfm's ``build_optimizer``: AdamW, MAE's groups) and gradient clipping, for the same number of
steps of the same batch size, in this one process:

    bare  a ``for`` loop of forward + backward + clip + AdamW step over batches made beforehand:
          read once from the tile cache, normalised, already on the device; fresh masking noise
          each step. Nothing but the model step.
    fit   ``geogfm.training.loop.fit`` on the train loader of ``build_dataloader`` as the pretrain
          stage builds it (uint16 DN from the Zarr cache, normalised on the device, ``--workers``
          loader workers), with its schedule, progress bar, step callbacks (a logging callback),
          no validation and no checkpoints.

Rounds of the two alternate (so load from other processes falls on both alike). Each round
times whole calls: ``fit`` includes its set-up (optimizer, scheduler, loader iterator); the
loader's persistent workers are started before the first round, as they would be in a run's
first epoch. Printed: the best and median round of each, images/s, and the overhead
``fit / bare - 1`` of the best rounds (the goal: at most 10 % on the CPU tiny preset), in wall
time and in this process's CPU time (``time.process_time``: with ``--workers 0`` the loading is in
it, and it is far less sensitive than wall time to other jobs on a shared machine; with workers
their CPU time is not counted, their cost shows in wall time when cores are short).

The data are the default DAG's (``data/cache``, ``data/manifests/patches.parquet``,
``results/stats/channel_stats.json`` under ``--root``, default the project: run
``snakemake --cores 2 pretrain`` first) and its ``params.yaml`` (bands, image size, patch size);
the model is the ``--preset`` size preset.

Usage::

    .venv/bin/python benchmarks/fit_overhead.py                       # tiny, batch 64, CPU
    .venv/bin/python benchmarks/fit_overhead.py --workers 0 --threads 1   # steadier when shared
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from geogfm.core.config import TrainConfig, load_params
from geogfm.data.loaders import build_dataloader
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import PRESETS, GeoViTBackbone
from geogfm.training.callbacks import LoggingCallback
from geogfm.training.loop import fit
from geogfm.training.optimizer import build_optimizer
from geogfm.training.steps import _to_device

ROOT = Path(__file__).resolve().parents[1]


def _model(cfg, device):
    torch.manual_seed(0)
    return MaskedAutoencoder(cfg, GeoViTBackbone(cfg)).to(device)


def bare(model_cfg, train_cfg, batches, device) -> tuple[float, float]:
    """Wall and CPU seconds (this process) for ``len(batches)`` plain steps."""
    model = _model(model_cfg, device)
    opt = build_optimizer(model, train_cfg)
    gen = torch.Generator().manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    for imgs, valid in batches:
        model.train()
        noise = model.masking_noise(imgs.shape[0], gen, "cpu").to(device)
        opt.zero_grad(set_to_none=True)
        loss, _, _ = model(imgs, valid, noise=noise)
        loss.item()  # fit reads the loss each step (the non-finite guard)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def with_fit(model_cfg, train_cfg, train_dl, device) -> tuple[float, float]:
    """Wall and CPU seconds (this process) for one ``fit`` call of ``train_cfg.max_steps``."""
    model = _model(model_cfg, device)
    start, cpu = time.perf_counter(), time.process_time()
    fit(model, (train_dl, None), train_cfg, callbacks=[LoggingCallback()])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--root", type=Path, default=ROOT, help="where data/ and results/ are")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="loader workers of the fit side")
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    cfg = load_params(args.params)
    device = torch.device(args.device)
    model_cfg = PRESETS[f"gfm_vit_{args.preset}"](
        in_chans=len(cfg.data.bands),
        image_size=cfg.model.image_size,
        patch_size=cfg.data.patch_size,
    )
    data_cfg = cfg.data.model_copy(
        update={
            "manifest": str(args.root / "data/manifests/patches.parquet"),
            "cache_dir": str(args.root / "data/cache"),
            "stats": str(args.root / "results/stats/channel_stats.json"),
            "batch_size": args.batch,
            "num_workers": args.workers,
        }
    )
    train_dl, _ = build_dataloader(data_cfg, seed=0)
    train_cfg = TrainConfig(
        epochs=100, batch_size=args.batch, max_steps=args.steps, device=args.device, log_every=5
    )
    # the bare loop's batches: the loader's first ones, normalised, on the device
    it = iter(train_dl)  # also starts the persistent workers the fit side reuses
    batches = [_to_device(next(it), device) for _ in range(min(args.steps, len(train_dl)))]
    batches = (batches * args.steps)[: args.steps]
    del it

    print(
        f"fit overhead: gfm_vit_{args.preset}, {len(cfg.data.bands)} bands, "
        f"{cfg.model.image_size} px, patch {cfg.data.patch_size}, batch {args.batch}, "
        f"{args.steps} steps x {args.rounds} rounds on {device}, {torch.get_num_threads()} "
        f"threads; fit loader: {args.workers} workers"
    )
    bare(model_cfg, train_cfg, batches[:1], device)  # warm-up (allocator, kernels)
    times = {"bare": [], "fit": []}
    for _ in range(args.rounds):
        times["bare"].append(bare(model_cfg, train_cfg, batches, device))
        times["fit"].append(with_fit(model_cfg, train_cfg, train_dl, device))
    print(f"  {'':6s} {'best s':>8s} {'median s':>9s} {'img/s':>8s} {'best CPU s':>11s}")
    for name, ts in times.items():
        best = min(w for w, _ in ts)
        print(
            f"  {name:6s} {best:8.2f} {statistics.median(w for w, _ in ts):9.2f} "
            f"{args.steps * args.batch / best:8.1f} {min(c for _, c in ts):11.2f}"
        )
    wall = min(w for w, _ in times["fit"]) / min(w for w, _ in times["bare"])
    cpu = min(c for _, c in times["fit"]) / min(c for _, c in times["bare"])
    print(
        f"  fit / bare, wall time: {wall:.3f} = overhead {100 * (wall - 1):+.1f} % (goal <= 10 %)"
    )
    print(
        f"  fit / bare, CPU time of this process: {cpu:.3f} = {100 * (cpu - 1):+.1f} % "
        f"(with --workers 0 this includes all loading; steadier on a busy machine)"
    )


if __name__ == "__main__":
    main()
