"""PCGrad: projecting conflicting gradients (Yu et al., "Gradient Surgery", NeurIPS 2020), Alg. 1.

For each task i, in a random order over the other tasks j:
``if <g_i^pc, g_j> < 0: g_i^pc -= <g_i^pc, g_j> / ||g_j||^2 * g_j``; the update is
``sum_i g_i^pc`` (sum, as LibMTL and the Nash-MTL repository; the WeiChengTseng port averages).
Computed on the Gramian, as torchjd does: ``g_i^pc = sum_j W_ij g_j``, so the update is
``(sum_i W_i) @ grads``. One permutation is drawn per task with ``torch.randperm`` on the CPU, in
the same order as torchjd, so with the same seed both give the same result. No epsilon is added to
``||g_j||^2`` (LibMTL adds 1e-8, which is not scale invariant); a zero g_j never triggers a
projection (its inner products are 0).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._rng import TorchRandom
from .base import GramianBalancer


def pcgrad_weights(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(T,) weights w with ``w @ grads`` the PCGrad update, from the (T, T) Gramian (on CPU)."""
    num = gram.shape[0]
    gram = gram.cpu()
    total = torch.zeros(num, dtype=gram.dtype)
    for i in range(num):
        order = torch.randperm(num, generator=generator)
        row = torch.zeros(num, dtype=gram.dtype)
        row[i] = 1.0
        for j in order.tolist():
            if j == i:
                continue
            inner = gram[j] @ row
            if inner < 0.0:
                row[j] -= inner / gram[j, j]
        total += row
    return total


class PCGrad(GramianBalancer):
    """Random-order gradient projection. ``weights``: coefficients of the update on the raw
    gradients. Heads get their plain gradient (LibMTL, Nash-MTL repo, CAGrad repo)."""

    name: ClassVar[str] = "pcgrad"
    summary: ClassVar[str] = "project conflicting gradients, random task order (Yu 2020)"

    def __init__(self, num_tasks: int, *, seed: int | None = None) -> None:
        super().__init__(num_tasks)
        self.seed = seed
        self._random = TorchRandom(seed)

    def weights_from_gramian(self, gram: Tensor, losses: Tensor) -> Tensor:
        return pcgrad_weights(gram, self._random.generator("cpu"))

    def get_extra_state(self) -> dict[str, Tensor]:
        return self._random.state()

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self._random.load_state(state)
