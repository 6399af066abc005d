"""Step-indexed sampling: batch s of a run is a pure function of (seed, s), whatever the resume
point, worker count or number of processes. Rank r of W takes its slice of the global batch, so
W processes see exactly the samples one process with the same global batch would see."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite stream of batches of (dataset index, sample seed) from `start_step` on.

    The stream is the concatenation of seeded per-epoch permutations; global batch s covers
    stream positions [s*G, (s+1)*G) with G = batch_size * world_size; rank r takes positions
    [s*G + r*b, s*G + (r+1)*b). The sample seed (from the stream position) drives augmentation.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training split is empty: no samples to draw batches from")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: _epoch_permutation(self.num_samples, self.seed, epoch)}
        return int(self._perm_cache[epoch][offset])

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The (index, sample seed) pairs of this rank's share of global batch `step`."""
        start = step * self.batch_size * self.world_size + self.rank * self.batch_size
        return [(self._index(p), self.seed * 7_919 + p) for p in range(start, start + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is unbounded
        return 2**62


class SeededDataset(Dataset):
    """Wraps a dataset so item (index, seed) is produced under `torch.manual_seed(seed)`.

    Random train transforms then depend only on the sample's stream position, not on worker
    processes or on when the run was resumed.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
