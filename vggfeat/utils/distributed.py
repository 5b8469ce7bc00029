"""One process per device under torchrun, for training (Sect. 3.1: synchronous data parallelism, gradients
averaged over GPUs, identical to one GPU) and for extraction (ranks share the chunks of a store).
NCCL on CUDA, gloo on the CPU; a single process when not launched by torchrun. torchrun's environment is read
here only (env_info); torch is imported by the functions that need it, so reading the rank stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started: bool = False  # this process created the group, so it destroys it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (`env`, default os.environ), without joining
    any group: the one place that reads RANK, WORLD_SIZE and LOCAL_RANK."""
    env = os.environ if env is None else env
    try:
        info = DistInfo(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))
    except ValueError:  # not torchrun's: a value we cannot read is not a rank
        return DistInfo()
    return info if info.world > 1 else DistInfo()  # outside torchrun this process speaks for the run


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun (WORLD_SIZE > 1), else a single process.
    On CUDA each process takes the GPU of its local rank."""
    import torch
    import torch.distributed as dist

    env = env_info()
    if env.world <= 1:
        return DistInfo()
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), env.local_rank, started)
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the process group (training and extraction both end with it: no leaked NCCL/gloo state)."""
    if info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def process_group(device_type: str) -> Iterator[DistInfo]:
    """`init_distributed` for the block; a group created here is destroyed when it ends, however it ends."""
    info = init_distributed(device_type)
    try:
        yield info
    finally:
        if info.started:
            shutdown(info)
