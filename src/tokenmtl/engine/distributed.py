"""torch.distributed in one small object: rank, world size, and the reductions the run needs;
and `GlobalBatchShards`, the sampler that gives each rank its share of a global batch.

Launch with `torchrun --nproc_per_node N -m tokenmtl train ...`; torchrun's environment
(RANK, WORLD_SIZE, MASTER_ADDR...) is read here. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch.utils.data import Sampler


def _all_reduce(tensor: torch.Tensor, op: tdist.ReduceOp) -> None:
    """All-reduce in place; a CPU tensor under NCCL (e.g. a meter's float64 sums, which live on
    the CPU) travels through this rank's GPU and is copied back."""
    if tensor.device.type == "cpu" and tdist.get_backend() == "nccl":
        staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        tdist.all_reduce(staged, op=op)
        tensor.copy_(staged)
    else:
        tdist.all_reduce(tensor, op=op)


@dataclass
class DistContext:
    """Rank and world size of this process, with SUM/MEAN all-reduce helpers (no-ops alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def single(cls) -> DistContext:
        """One process: no process group, every reduction a no-op."""
        return cls()

    @classmethod
    def from_env(cls) -> DistContext:
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
            _all_reduce(tensor, tdist.ReduceOp.SUM)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place mean over ranks (gradients of a loss that is a per-rank batch mean)."""
        if self.world_size > 1:
            _all_reduce(tensor, tdist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one rank (a MAX all-reduce).

        For decisions every rank must take at the same step, e.g. stopping on a signal that
        reached the ranks at slightly different moments.
        """
        if self.world_size == 1:
            return bool(flag)
        value = torch.tensor([int(bool(flag))], dtype=torch.int32)
        _all_reduce(value, tdist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        """Wait until every rank gets here (after rank 0 wrote a checkpoint, for instance)."""
        if self.world_size > 1:
            tdist.barrier()

    def close(self) -> None:
        """Leave the process group (once the run is over)."""
        if self.world_size > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


class GlobalBatchShards(Sampler[list[int]]):
    """Shuffled batches cut as one process with the global batch would cut them; each rank
    yields its share.

    Every pass over the sampler draws the next permutation of `num_samples` from a generator
    seeded with `seed` (as a shuffling DataLoader with that generator does). Global batch k is
    ``perm[k*G:(k+1)*G]`` with ``G = batch_size * world_size``; rank r yields
    ``perm[k*G + r*b : k*G + (r+1)*b]`` (empty shares at the tail are skipped). So the first n
    batches of every rank together are the first n batches of one process with batch G, which
    keeps sums such as DTME's token covariance and conflict counts independent of the number of
    processes once they are all-reduced.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        width = self.batch_size * self.world_size
        for start in range(0, self.num_samples, width):
            share = order[start + self.rank * self.batch_size : start + (self.rank + 1) * self.batch_size]
            if share:
                yield share

    def __len__(self) -> int:
        """Batches this rank yields per pass."""
        width = self.batch_size * self.world_size
        full, rest = divmod(self.num_samples, width)
        return full + int(rest > self.rank * self.batch_size)
