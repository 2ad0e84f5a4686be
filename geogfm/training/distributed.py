"""DDP set-up under ``torchrun``: one process per device, ``train.devices`` per node.

``torchrun --nnodes N --nproc-per-node D ...`` starts ``N * D`` processes and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous variables; :func:`init_distributed` joins them
into one process group (NCCL on GPUs, gloo on CPUs). A single process needs none of it.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from geogfm.core.config import TrainConfig

__all__ = ["init_distributed", "is_main_process"]

log = logging.getLogger(__name__)


def init_distributed(train_cfg: TrainConfig) -> tuple[int, int]:
    """Join the ``torchrun`` process group when more than one process is configured.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` for a single process.

    Raises:
        ValueError: when the processes started do not match ``train.devices * train.nodes``.
    """
    expected = train_cfg.devices * train_cfg.nodes
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != expected:
        raise ValueError(
            f"train.devices x train.nodes = {train_cfg.devices} x {train_cfg.nodes} but "
            f"{world} process(es) were started; launch with `torchrun --nnodes "
            f"{train_cfg.nodes} --nproc-per-node {train_cfg.devices} -m geogfm pretrain ...` "
            "or set train.devices and train.nodes to what you launch"
        )
    if expected == 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and train_cfg.device != "cpu"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    log.info("DDP: rank %d of %d (%s)", rank, world, dist.get_backend())
    if rank != 0:  # one log: the other ranks only report warnings and errors
        logging.getLogger("geogfm").setLevel(logging.WARNING)
    return rank, world


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
