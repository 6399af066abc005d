"""UW: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

LibMTL's form (``weighting/UW.py``): a learnable log-variance s_t per task, initialised to -0.5,
and ``L = sum_t L_t / (2 exp(s_t)) + s_t / 2``. The Nash-MTL repository uses the same objective
with s_t initialised to 0 (``init=0.0`` reproduces it).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import LossBalancer, check_losses


class UW(LossBalancer):
    """``L = sum_t exp(-s_t) L_t / 2 + s_t / 2`` with learnable s (``balancer.parameters()``).

    The s_t are trained by the main optimiser: add ``balancer.parameters()`` to it.
    ``weights`` = ``exp(-s) / 2``, the effective loss weights of the last call.
    """

    name: ClassVar[str] = "uw"
    summary: ClassVar[str] = "uncertainty weighting with learnable log-variances (Kendall 2018)"

    def __init__(self, num_tasks: int, *, init: float = -0.5) -> None:
        super().__init__(num_tasks)
        self.init = init
        self.log_var = nn.Parameter(torch.full((num_tasks,), float(init)))

    def weigh(self, losses: Tensor) -> Tensor:
        check_losses(losses, self.num_tasks)
        log_var = self.log_var.to(losses.dtype)
        self.weights = (0.5 * torch.exp(-log_var)).detach()
        return (losses * 0.5 * torch.exp(-log_var) + 0.5 * log_var).sum()
