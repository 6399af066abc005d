"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
CVPR 2023), Alg. 1, as the authors' ``ProcrustesSolver`` and LibMTL's ``Aligned_MTL``.

Eigendecomposition of the Gramian ``M = G G^T = V diag(l) V^T`` (``torch.linalg.eigh``; LibMTL's
``torch.symeig`` no longer exists in PyTorch 2), keep the eigenvalues above
``max(l) * T * eps`` (eps of the gradients' dtype), and
``B = sqrt(l_min) V diag(1/sqrt(l)) V^T``; the aligned gradients ``B G`` have the Gramian
``l_min * I``: condition number 1. The update is ``sum_t (B G)_t = (B 1) @ G`` (weights
``B.sum(0)``, as the authors and LibMTL). torchjd's ``AlignedMTL`` uses the mean preference vector
``B 1 / T``: ours is T times torchjd's. ``scale_mode``: "min" (l_min, default), "median",
"rmse" (mean eigenvalue). An all-zero Gramian gives ``B = I``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import BalanceResult, GradientBalancer, gramian

SCALE_MODES = ("min", "median", "rmse")


def balance_transformation(gram: Tensor, scale_mode: str = "min", eps: float | None = None) -> Tensor:
    """The (T, T) matrix B of Aligned-MTL from the Gramian (eps: rank tolerance, default the
    machine epsilon of the Gramian's dtype)."""
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"alignedmtl scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    eps = torch.finfo(gram.dtype).eps if eps is None else eps
    m = gram.double()
    lam, vecs = torch.linalg.eigh(m)
    tol = lam.max() * m.shape[0] * eps
    keep = lam > tol
    if not bool(keep.any()):
        return torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    lam, vecs = lam[keep], vecs[:, keep]
    if scale_mode == "min":
        scale = lam.min()
    elif scale_mode == "median":
        scale = lam.median()
    else:
        scale = lam.mean()
    return scale.sqrt() * (vecs / lam.sqrt()) @ vecs.T


class AlignedMTL(GradientBalancer):
    """Align the principal components of the task gradients, then sum. ``weights``: ``B.sum(0)``.
    Heads get their plain gradient (LibMTL; torchjd's ``mtl_backward``)."""

    name: ClassVar[str] = "alignedmtl"
    summary: ClassVar[str] = "align the gradients' principal components, condition number 1 (Senushkin 2023)"

    def __init__(self, num_tasks: int, *, scale_mode: str = "min") -> None:
        super().__init__(num_tasks)
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"alignedmtl scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
        self.scale_mode = scale_mode

    def _balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        b = balance_transformation(gramian(grads).cpu(), self.scale_mode, torch.finfo(grads.dtype).eps)
        weights = b.sum(dim=0).to(device=grads.device, dtype=grads.dtype)
        return BalanceResult(weights @ grads, weights)
