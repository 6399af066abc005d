"""EW: equal weighting, ``L = sum_t L_t`` (weights 1, not 1/T, as LibMTL's ``EW``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import BalanceResult, LossBalancer, check_losses, check_matrix


class EW(LossBalancer):
    """Equal weights: total loss ``sum_t L_t``; as an aggregator, ``sum_t g_t``.

    ``kind`` is "loss" so the driver does a single backward pass (and DDP reduces as usual);
    :meth:`aggregate` gives the same update from the task gradients, for code that works on
    Jacobians. Weights are 1 (LibMTL's convention; torchjd's ``Sum``), so the update is T times
    torchjd's ``Mean``.
    """

    name: ClassVar[str] = "ew"
    summary: ClassVar[str] = "equal weights: sum of the task losses"

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.weights = torch.ones(num_tasks)

    def weigh(self, losses: Tensor) -> Tensor:
        check_losses(losses, self.num_tasks)
        return losses.sum()

    def balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        """``sum_t g_t`` (weights 1): what a single backward of ``weigh`` gives the shared
        parameters, as a gradient method's result."""
        check_matrix(grads, self.num_tasks)
        check_losses(losses, self.num_tasks)
        return BalanceResult(grads.sum(dim=0), torch.ones(self.num_tasks, dtype=grads.dtype))

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """``sum_t g_t``: the update a single backward of ``weigh`` gives the shared parameters."""
        return self.balance(grads, losses).update
