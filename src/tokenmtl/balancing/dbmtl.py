"""DB-MTL: dual balancing (Lin et al., arXiv 2308.12029), as the authors' LibMTL ``DB_MTL``.

Loss-scale balancing: task t contributes ``l_t = log(L_t + 1e-8)``. Gradient-magnitude
balancing: ``g_t = grad l_t`` on the shared parameters, an EMA buffer (from zero, no bias
correction) ``m_t <- g_t + (beta / k**sigma) (m_t - g_t)`` at step k = 1, 2, ..., and the update
``sum_t (max_s ||m_s|| / (||m_t|| + 1e-8)) m_t``. Heads get the plain gradient of
``sum_t l_t``. Defaults beta 0.9, sigma 0 (the paper grid-searches beta in {0.1, 0.5, 0.9},
sigma in {0, 0.5}).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import BalanceResult, GradientBalancer

_EPS = 1e-8


class DBMTL(GradientBalancer):
    """Log losses + EMA gradients rescaled to the largest norm. ``weights``: the factors
    ``max_s ||m_s|| / (||m_t|| + 1e-8)`` applied to the *buffers* m_t."""

    name: ClassVar[str] = "dbmtl"
    summary: ClassVar[str] = "dual balancing: log losses + EMA gradients scaled to the max norm (Lin 2023)"

    def __init__(self, num_tasks: int, *, beta: float = 0.9, sigma: float = 0.0) -> None:
        super().__init__(num_tasks)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"dbmtl beta must be in [0, 1], got {beta}")
        if sigma < 0:
            raise ValueError(f"dbmtl sigma must be >= 0, got {sigma}")
        self.beta = beta
        self.sigma = sigma
        self.step = 0
        self.buffer: Tensor | None = None

    def task_loss_transform(self, losses: Tensor) -> Tensor:
        return torch.log(losses + _EPS)

    def _balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        self.step += 1
        if self.buffer is None or self.buffer.shape != grads.shape:  # first step, or new shapes
            self.buffer = torch.zeros_like(grads)
        self.buffer = self.buffer.to(device=grads.device, dtype=grads.dtype)
        factor = self.beta / self.step**self.sigma
        self.buffer.sub_(grads).mul_(factor).add_(grads)  # g + factor (m - g), in place
        norms = torch.linalg.vector_norm(self.buffer, dim=1)
        weights = norms.max() / (norms + _EPS)
        return BalanceResult(weights @ self.buffer, weights)

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self.step, "buffer": None if self.buffer is None else self.buffer.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.buffer = None if state["buffer"] is None else state["buffer"].clone()
