"""IMTL: impartial multi-task learning (Liu et al., ICLR 2021).

IMTL-G: the update ``g = sum_t a_t g_t`` (``sum_t a_t = 1``) has equal projections on every unit
gradient, ``<g, u_t>`` the same for all t. With ``d_t = ||g_t||`` this is ``G a = k d``, so
``a = G^+ d / (1^T G^+ d)`` (torchjd's form, which handles linearly dependent gradients; it
equals the paper's / LibMTL's closed form ``a_{2..T} = g_1 U^T (D U^T)^{-1}`` for independent
ones). When ``1^T G^+ d`` vanishes (relative to ``||G^+ d||_1``; e.g. two opposite gradients) no
such direction exists and the update is 0.

IMTL-L (``loss_scale=True``): learnable s_t (init 0, trained by the main optimiser) and the
transformed losses ``exp(s_t) L_t - s_t`` are what IMTL-G and the heads see (LibMTL's ``IMTL`` is
this L+G hybrid; the default here is IMTL-G alone).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import GramianBalancer

_REL_TOL = 1e-10


def imtl_weights(gram: Tensor) -> Tensor:
    """(T,) IMTL-G weights (sum 1) from the (T, T) Gramian; zeros when undefined."""
    gram = gram.double()
    d = gram.diagonal().clamp_min(0.0).sqrt()
    v = torch.linalg.pinv(gram, hermitian=True) @ d
    total = v.sum()
    if not torch.isfinite(total) or total.abs() <= _REL_TOL * v.abs().sum() or total == 0:
        return torch.zeros_like(v)
    return v / total


class IMTL(GramianBalancer):
    """IMTL-G (optionally with IMTL-L's loss scales). ``weights``: a (sum 1). Heads get their
    plain gradient of the (scaled) loss, as the paper's Alg. 1 and LibMTL."""

    name: ClassVar[str] = "imtl"
    summary: ClassVar[str] = "impartial MTL: equal projections on unit gradients (Liu 2021)"

    def __init__(self, num_tasks: int, *, loss_scale: bool = False) -> None:
        super().__init__(num_tasks)
        self.loss_scale = loss_scale
        self.log_scale = nn.Parameter(torch.zeros(num_tasks)) if loss_scale else None

    def task_loss_transform(self, losses: Tensor) -> Tensor:
        if self.log_scale is None:
            return losses
        s = self.log_scale.to(losses.dtype)
        return torch.exp(s) * losses - s

    def weights_from_gramian(self, gram: Tensor, losses: Tensor) -> Tensor:
        return imtl_weights(gram)
