"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021), Alg. 1, as the authors'
code (Cranial-XIX/CAGrad, ``cagrad``).

With ``g0 = mean_t g_t`` and ``phi = c^2 ||g0||^2``:
``w* = argmin_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w)`` (scipy SLSQP from 1/T, bounds
[0, 1], sum-to-one constraint, as the authors), ``g_w = sum_t w*_t g_t``,
``d = g0 + (c ||g0|| / ||g_w||) g_w``, then ``rescale``: 0 -> d, 1 -> d / (1 + c^2) (default, as
the authors' NYUv2/Cityscapes scripts and LibMTL), 2 -> d / (1 + c).
Default ``c=0.4`` (authors' scripts and the Nash-MTL repository; LibMTL's default is 0.5).

Scales: the problem is solved on the Gramian divided by its mean diagonal, which leaves w*
unchanged (both terms scale alike) but keeps SLSQP and the authors' 1e-8 guards scale-free.
torchjd's ``CAGrad(c)`` has no rescale: ours with ``rescale=0`` equals it, ours with the default
``rescale=1`` is torchjd's divided by ``1 + c^2``. The update is on the *mean* scale (weights sum
to ~(1 + c)), i.e. about 1/T of EW's sum; the Nash-MTL repository multiplies by T.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from .base import GramianBalancer

_RESCALES = (0, 1, 2)


def cagrad_weights(gram: Tensor, c: float = 0.4, rescale: int = 1) -> Tensor:
    """(T,) weights w with ``w @ grads`` the CAGrad update, from the (T, T) Gramian."""
    g = gram.detach().double().cpu().numpy()
    num = g.shape[0]
    mean_diag = float(np.trace(g)) / num
    if mean_diag <= 0.0:  # all gradients are zero: any weights give the zero update
        return torch.full((num,), 1.0 / num, dtype=torch.float64)
    a = g / mean_diag
    b = np.full(num, 1.0 / num)
    g0_norm = float(np.sqrt(max(float(b @ a @ b), 0.0) + 1e-8))
    radius = c * g0_norm + 1e-8

    def objective(x: np.ndarray) -> float:
        return float(x @ a @ b + radius * np.sqrt(max(float(x @ a @ x), 0.0) + 1e-8))

    result = minimize(
        objective,
        b.copy(),
        bounds=[(0.0, 1.0)] * num,
        constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum()},),
    )
    w = np.clip(result.x, 0.0, None) if np.all(np.isfinite(result.x)) else b.copy()
    gw_norm = float(np.sqrt(max(float(w @ a @ w), 0.0)))
    weights = b + (radius / (gw_norm + 1e-8)) * w
    if rescale == 1:
        weights = weights / (1.0 + c**2)
    elif rescale == 2:
        weights = weights / (1.0 + c)
    return torch.from_numpy(weights)


class CAGrad(GramianBalancer):
    """Conflict-averse direction in a ball around the mean gradient. ``weights``: coefficients
    of the update on the raw gradients. Heads get their plain gradient (authors' code)."""

    name: ClassVar[str] = "cagrad"
    summary: ClassVar[str] = "conflict-averse gradient descent, c=0.4, rescale 1 (Liu 2021)"

    def __init__(self, num_tasks: int, *, c: float = 0.4, rescale: int = 1) -> None:
        super().__init__(num_tasks)
        if c < 0:
            raise ValueError(f"cagrad c must be >= 0, got {c}")
        if rescale not in _RESCALES:
            raise ValueError(f"cagrad rescale must be one of {_RESCALES}, got {rescale!r}")
        self.c = c
        self.rescale = rescale

    def weights_from_gramian(self, gram: Tensor, losses: Tensor) -> Tensor:
        return cagrad_weights(gram, self.c, self.rescale)
