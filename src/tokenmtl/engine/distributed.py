"""torch.distributed in one small object: rank, world size, and the reductions the run needs.

Launch with `torchrun --nproc_per_node N -m tokenmtl train ...`; torchrun's environment
(RANK, WORLD_SIZE, MASTER_ADDR...) is read here. Backend: NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class DistContext:
    """Rank and world size of this process, with SUM/MEAN all-reduce helpers (no-ops alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def single(cls) -> "DistContext":
        return cls()

    @classmethod
    def from_env(cls) -> "DistContext":
        """Join the process group torchrun describes; one process when WORLD_SIZE is unset or 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        if not tdist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            tdist.init_process_group(backend=backend)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        return cls(rank=tdist.get_rank(), world_size=tdist.get_world_size(), local_rank=local_rank)

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and shows progress bars."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place SUM over ranks (metric counts, covariance sums, conflict counts)."""
        if self.world_size > 1:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place mean over ranks (gradients of a loss that is a per-rank batch mean)."""
        if self.world_size > 1:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and tdist.is_initialized():
            tdist.destroy_process_group()
