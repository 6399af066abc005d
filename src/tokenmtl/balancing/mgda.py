"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018, Alg. 2; Desideri 2012).

``w* = argmin_{w in simplex} ||sum_t w_t g_t||^2``, solved on the Gramian as the authors'
``MinNormSolver.find_min_norm_element_FW``: start from the best pair (exact closed form, which is
the solution for T = 2), then Frank-Wolfe steps towards the vertex ``argmin_t (G w)_t`` with the
exact line search, at most ``max_iter`` (250) steps, stop when the weights move less than
``stop_crit`` (1e-5, L1). The pair rule is exact (weights 1 / 0 at the ends); the authors clamp
those ends to 0.999 / 0.001.

``normalization`` is LibMTL's ``mgda_gn``: the gradients are divided by ``||g_t||`` ("l2"), by
``L_t`` ("loss"), by ``L_t ||g_t||`` ("loss+") or not at all ("none", default as LibMTL), and the
*normalised* gradients are combined (LibMTL). The authors' script combines the raw gradients with
the same weights instead (it back-propagates ``sum_t w_t L_t``); the two agree for "none".
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import BalanceResult, GradientBalancer, gramian

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def _pair(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """Min of ``||a v1 + (1 - a) v2||^2`` over a in [0, 1]: returns (a, cost), exact."""
    if v1v2 >= v1v1:
        return 1.0, v1v1
    if v1v2 >= v2v2:
        return 0.0, v2v2
    a = (v2v2 - v1v2) / (v1v1 + v2v2 - 2.0 * v1v2)
    return a, v2v2 + a * (v1v2 - v2v2)


def min_norm_weights(gram: Tensor, max_iter: int = 250, stop_crit: float = 1e-5) -> Tensor:
    """Weights on the simplex of the min-norm element of the hull, from the (T, T) Gramian."""
    g = gram.detach().double().cpu()
    num = g.shape[0]
    if num == 1:
        return torch.ones(1, dtype=torch.float64)
    best: tuple[int, int, float] | None = None
    best_cost = float("inf")
    for i in range(num):
        for j in range(i + 1, num):
            a, cost = _pair(float(g[i, i]), float(g[i, j]), float(g[j, j]))
            if cost < best_cost:
                best_cost, best = cost, (i, j, a)
    assert best is not None
    i, j, a = best
    w = torch.zeros(num, dtype=torch.float64)
    w[i], w[j] = a, 1.0 - a
    if num == 2:
        return w
    for _ in range(max_iter):
        gw = g @ w
        t = int(torch.argmin(gw))
        a, _cost = _pair(float(w @ gw), float(gw[t]), float(g[t, t]))
        new = a * w
        new[t] += 1.0 - a
        if float((new - w).abs().sum()) < stop_crit:
            return new
        w = new
    return w


def normalizers(gram: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """The (T,) divisors of LibMTL's ``mgda_gn`` (zeros replaced by 1: a zero row stays zero)."""
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    if normalization == "none":
        scale = torch.ones_like(norms)
    elif normalization == "l2":
        scale = norms
    elif normalization == "loss":
        scale = losses.to(norms)
    elif normalization == "loss+":
        scale = losses.to(norms) * norms
    else:
        raise ValueError(f"mgda normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return torch.where(scale != 0, scale, torch.ones_like(scale))


class MGDA(GradientBalancer):
    """Min-norm (Frank-Wolfe) combination. ``weights``: coefficients on the raw gradients
    (``w*_t / n_t`` with the normalisers n); they sum to 1 when ``normalization="none"``.

    Heads: the authors' script back-propagates ``sum_t w*_t L_t``, so by default the heads are
    weighted by w* too (``weight_heads=True``); LibMTL leaves the heads unweighted
    (``weight_heads=False``).
    """

    name: ClassVar[str] = "mgda"
    summary: ClassVar[str] = "min-norm point of the gradients' convex hull, Frank-Wolfe (Sener 2018)"

    def __init__(
        self,
        num_tasks: int,
        *,
        normalization: str = "none",
        weight_heads: bool = True,
        max_iter: int = 250,
        stop_crit: float = 1e-5,
    ) -> None:
        super().__init__(num_tasks)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"mgda normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.weight_heads = weight_heads
        self.max_iter = max_iter
        self.stop_crit = stop_crit

    def _balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        gram = gramian(grads).cpu()
        scale = normalizers(gram, losses.double().cpu(), self.normalization)
        solution = min_norm_weights(gram / torch.outer(scale, scale), self.max_iter, self.stop_crit)
        weights = (solution / scale).to(device=grads.device, dtype=grads.dtype)
        heads = solution.to(weights) if self.weight_heads else None
        return BalanceResult(weights @ grads, weights, heads)
