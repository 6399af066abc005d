"""GradDrop: Gradient Sign Dropout (Chen et al., "Just Pick a Sign", NeurIPS 2020), Alg. 1.

Positive sign purity per coordinate ``P = (1 + sum_t g_t / sum_t |g_t|) / 2``; with
``U ~ U(0, 1)`` per coordinate, task t keeps its coordinate when ``P > U`` and ``g_t > 0`` or
``P < U`` and ``g_t < 0``; the update is ``sum_t (leak + (1 - leak) M_t) * g_t``.

Input: the paper (and LibMTL, which requires ``rep_grad=True``) applies this to the gradient with
respect to a shared *activation*, summed over the batch after multiplying by ``sign(activation)``.
The balancer API gives the (T, P) gradients of the shared *parameters*, so this implementation
acts on those, as torchjd's ``GradDrop`` does (identical formula and random draws: with the same
seed and ``leak=0`` it returns torchjd's result). Coordinates where every task's gradient is 0
get P = 1/2 (they contribute nothing either way).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._rng import TorchRandom
from .base import BalanceResult, GradientBalancer


def graddrop_update(grads: Tensor, leak: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """The GradDrop combination of the (T, P) gradients (one uniform draw per coordinate).

    With ``s = sum_t g_t``, ``a = sum_t |g_t|`` and ``d = sign(P - U)``, the kept gradients sum to
    ``(s + a) / 2`` (the positive ones, d = 1), ``(s - a) / 2`` (the negative ones, d = -1) or 0,
    i.e. ``d (a + d s) / 2``: no (T, P) mask is built.
    """
    total = grads.sum(dim=0)
    magnitude = grads.abs().sum(dim=0)
    # a = 0 only where every g_t = 0, and then s = 0: dividing by the smallest normal gives 0
    purity = 0.5 * (1.0 + total / magnitude.clamp_min(torch.finfo(grads.dtype).tiny))
    uniform = torch.rand(purity.shape, dtype=grads.dtype, device=grads.device, generator=generator)
    side = torch.sign(purity - uniform)
    kept = 0.5 * side * (magnitude + side * total)
    if leak == 0.0:
        return kept
    return leak * total + (1.0 - leak) * kept


class GradDrop(GradientBalancer):
    """Sign dropout on the shared-parameter gradients; heads get their plain gradient."""

    name: ClassVar[str] = "graddrop"
    summary: ClassVar[str] = "gradient sign dropout on the shared-parameter gradients (Chen 2020)"

    def __init__(self, num_tasks: int, *, leak: float = 0.0, seed: int | None = None) -> None:
        super().__init__(num_tasks)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"graddrop leak must be in [0, 1], got {leak}")
        self.leak = leak
        self.seed = seed
        self._random = TorchRandom(seed)

    def _balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        """No per-task weights: the dropout acts per coordinate (``task_weights`` is None)."""
        return BalanceResult(graddrop_update(grads, self.leak, self._random.generator(grads.device)))

    def get_extra_state(self) -> dict[str, Tensor]:
        return self._random.state()

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self._random.load_state(state)
