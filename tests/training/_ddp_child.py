"""Train a few steps of the CI preset, one process or one DDP rank (under torchrun, gloo, CPU).

``python _ddp_child.py ROOT OUT.pt`` (single process, global batch 8) or
``torchrun --standalone --nproc-per-node 2 _ddp_child.py ROOT OUT.pt`` (2 ranks of batch 4).
Rank 0 (or the single process) saves the initial and final weights to ``OUT.pt``.
"""

import sys
from pathlib import Path

import torch

from geogfm.core.config import load_params
from geogfm.data.loaders import build_dataloader
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import GeoViTBackbone
from geogfm.training.distributed import init_distributed
from geogfm.training.loop import fit

PROJECT = Path(__file__).resolve().parents[2]
GLOBAL_BATCH = 8


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = load_params(PROJECT / "configs" / "ci_tiny.yaml")
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    train_cfg = cfg.train.model_copy(
        update={
            "devices": world,
            "batch_size": GLOBAL_BATCH // world,
            "max_steps": 6,
            "optimizer": cfg.train.optimizer.model_copy(update={"lr": 0.05}),
        }
    )
    rank, world = init_distributed(train_cfg)
    data_cfg = cfg.data.model_copy(
        update={
            "manifest": str(root / "data/manifests/patches.parquet"),
            "cache_dir": str(root / "data/cache"),
            "stats": str(root / "results/stats/channel_stats.json"),
            "batch_size": train_cfg.batch_size,
        }
    )
    loaders = build_dataloader(data_cfg, seed=0, num_replicas=world, rank=rank)
    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg.model, GeoViTBackbone(cfg.model))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, loaders, train_cfg)
    if rank == 0:
        final = model.state_dict()
        torch.save({"initial": initial, "final": final, "history": history["train_loss"]}, out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
