"""Distributed data parallel through torchrun: process group, ranks, devices, reductions.

``torchrun --nproc_per_node G [--nnodes N --node_rank R --rdzv_endpoint HOST:PORT] -m hiend_train.cli ...``
sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` > 1 :func:`setup` joins the process
group (NCCL on CUDA, gloo on CPU) and puts each process on its own GPU (``cuda:LOCAL_RANK``).

The device comes from :func:`hiend_model.device.resolve_device` (imported here as
``hiend_train.dist.resolve_device``), the rule ``hiend-model predict`` uses too: ``auto``, ``cpu``,
``cuda``, ``cuda:N``, ``mps``. Apple's MPS backend trains in one process only (torch.distributed has
no MPS backend): several processes on ``mps`` are an InputError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from hiend_data.errors import InputError
from hiend_model.device import resolve_device

#: any object :func:`broadcast_object` carries
T = TypeVar("T")

__all__ = ["DistEnv", "resolve_device", "setup", "teardown", "all_sum", "broadcast_object"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0


def setup(device: str) -> DistEnv:
    """Join the process group when torchrun started several processes; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and dev.type == "mps":
        raise InputError(
            f"device {device!r}: {world} processes (WORLD_SIZE={world}) cannot train on Apple's MPS "
            "backend, which torch.distributed does not support; run one process on mps, or use "
            "--device cpu (gloo) or cuda (NCCL) under torchrun"
        )
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            **({"device_id": dev} if dev.type == "cuda" else {}),
        )
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown(env: DistEnv, finished: bool = False) -> None:
    """Leave the process group (if this module joined one). ``finished``: every rank ended its run
    normally, so they first meet at a barrier: no rank tears its connections down while a peer still
    reads from them (gloo then aborted the peer: "terminate called without an active exception"). On an
    error no barrier is waited for: torchrun ends the other ranks."""
    if env.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all processes, in place (identity on one process)."""
    if env.distributed:
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(env: DistEnv, obj: T) -> T:
    """Rank 0's ``obj`` on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
