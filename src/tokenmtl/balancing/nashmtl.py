"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022), Alg. 1, as the
authors' ``NashMTL`` (AvivNavon/nash-mtl, ``methods/weight_methods.py``).

Solve ``G a = 1 / a`` (a > 0) by sequential convex approximation, with ``nf = ||G||_F`` and
``G' = G / nf``: at most ``optim_niter`` (20) cvxpy/ECOS solves (``max_iters=100``, warm start) of
``min sum(G' a) + phi'(a_prev)^T (a - a_prev) / nf`` subject to ``-log(a_t nf) - log((G' a)_t) <= 0``,
stopping when ``||G' a - 1/(a + 1e-10)|| < 1e-3`` or a moves less than 1e-6; the weights are
recomputed every ``update_weights_every`` steps (1) and reused in between. The update is ``sum_t a_t g_t``
clipped to norm ``max_norm`` (1.0) as
``clip_grad_norm_`` does; the heads get ``a_t grad L_t`` (the authors back-propagate
``sum_t a_t L_t``; the clip applies to the shared parameters only).

Known limitation, kept for fidelity: ECOS works in units that scale like 1/||g||, so for very small
or very large gradients (norms ~1e-6 or ~1e6) the solver may fail and the previous weights are kept
(LibMTL issue #39; the official code behaves the same).

Differences from torchjd's ``NashMTL``: torchjd scales the weights (hence also the heads) so that
the norm is exactly ``max_norm``, without clip_grad_norm_'s 1e-6; with ``max_norm=0`` both agree.
A solver failure, a zero Gramian or non-finite weights keep the previous weights (the authors'
code divides by a zero norm and returns NaN on an all-zero Gramian).

Needs the optional packages ``cvxpy`` and ``ecos``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .base import BalanceResult, GradientBalancer, gramian

try:  # optional dependency
    import cvxpy as cp
except ImportError:  # pragma: no cover - exercised only without cvxpy
    cp = None


class NashSolver:
    """Sequential convex approximation of Nash-MTL's bargaining solution (state: the last a)."""

    def __init__(self, num_tasks: int, optim_niter: int) -> None:
        self.num_tasks = num_tasks
        self.optim_niter = optim_niter
        self.prev_alpha = np.ones(num_tasks, dtype=np.float64)
        self._built = False

    def _build(self) -> None:
        n = self.num_tasks
        self.alpha = cp.Variable(shape=(n,), nonneg=True)
        self.prev = cp.Parameter(shape=(n,), value=self.prev_alpha.copy())
        self.gtg = cp.Parameter(shape=(n, n), value=np.eye(n))
        self.nf = cp.Parameter(shape=(1,), value=np.array([1.0]))
        g_prev = self.gtg @ self.prev
        phi_grad = 1 / self.prev + (1 / g_prev) @ self.gtg
        phi = phi_grad @ (self.alpha - self.prev)
        g_alpha = self.gtg @ self.alpha
        constraints = [-cp.log(self.alpha[t] * self.nf) - cp.log(g_alpha[t]) <= 0 for t in range(n)]
        self.problem = cp.Problem(cp.Minimize(cp.sum(g_alpha) + phi / self.nf), constraints)
        self._built = True

    def solve(self, gram: np.ndarray) -> np.ndarray:
        """Weights a for the (T, T) Gramian; keeps the previous a when it cannot solve."""
        norm = float(np.linalg.norm(gram))
        if not np.isfinite(norm) or norm == 0.0:
            return self.prev_alpha
        if self.num_tasks == 1:  # a (g.g) a = 1
            self.prev_alpha = np.array([1.0 / np.sqrt(norm)])
            return self.prev_alpha
        if not self._built:
            self._build()
        gtg = gram / norm
        self.gtg.value = gtg
        self.nf.value = np.array([norm])
        alpha_t = self.prev_alpha
        for _ in range(self.optim_niter):
            self.alpha.value = alpha_t
            self.prev.value = alpha_t
            try:
                with warnings.catch_warnings():  # the authors' problem is not DPP: no speed-up
                    warnings.filterwarnings("ignore", message=".*not DPP.*")
                    warnings.filterwarnings("ignore", category=RuntimeWarning)  # 1/0 on a zero row
                    self.problem.solve(solver=cp.ECOS, warm_start=True, max_iters=100)
            except (cp.error.SolverError, ValueError, ArithmeticError):
                self.alpha.value = self.prev.value
            new = self.alpha.value
            if (
                new is None
                or not np.all(np.isfinite(new))
                or np.linalg.norm(gtg @ alpha_t - 1 / (alpha_t + 1e-10)) < 1e-3
                or np.linalg.norm(new - self.prev.value) < 1e-6
            ):
                break
            alpha_t = new
        if np.all(np.isfinite(alpha_t)) and np.all(alpha_t > 0):
            self.prev_alpha = np.asarray(alpha_t, dtype=np.float64)
        return self.prev_alpha


class NashMTL(GradientBalancer):
    """Bargaining-game weights ``G a = 1/a``. ``weights``: a (heads get a_t, unclipped)."""

    name: ClassVar[str] = "nashmtl"
    summary: ClassVar[str] = "Nash bargaining weights solving G a = 1/a, cvxpy+ECOS (Navon 2022)"
    weight_heads: bool = True

    def __init__(
        self,
        num_tasks: int,
        *,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        max_norm: float = 1.0,
    ) -> None:
        super().__init__(num_tasks)
        if cp is None:
            raise ImportError("nashmtl needs the optional packages cvxpy and ecos: pip install cvxpy ecos")
        if not isinstance(update_weights_every, int) or update_weights_every < 1:
            raise ValueError(f"nashmtl update_weights_every must be an integer >= 1, got {update_weights_every!r}")
        if not isinstance(optim_niter, int) or optim_niter < 1:
            raise ValueError(f"nashmtl optim_niter must be an integer >= 1, got {optim_niter!r}")
        if max_norm < 0:
            raise ValueError(f"nashmtl max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.max_norm = max_norm
        self.step = 0
        self.solver = NashSolver(num_tasks, optim_niter)
        self._last_alpha = np.ones(num_tasks, dtype=np.float64)

    def _clip(self, update: Tensor) -> Tensor:
        if self.max_norm <= 0:
            return update
        coef = self.max_norm / (torch.linalg.vector_norm(update) + 1e-6)
        return update * coef.clamp(max=1.0)

    def _balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        if self.step % self.update_weights_every == 0:
            self._last_alpha = self.solver.solve(gramian(grads).cpu().numpy())
        self.step += 1
        weights = torch.from_numpy(self._last_alpha.copy()).to(device=grads.device, dtype=grads.dtype)
        return BalanceResult(self._clip(weights @ grads), weights, weights)

    def shortcut_weights(self) -> Tensor | None:
        if self.step % self.update_weights_every == 0:
            return None
        return torch.from_numpy(self._last_alpha.copy())

    def finish_shortcut(self, combined: Tensor) -> BalanceResult:
        self.step += 1
        weights = torch.from_numpy(self._last_alpha.copy()).to(combined)
        self.weights = self.head_weights = weights
        return BalanceResult(self._clip(combined), weights, weights)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "solver_alpha": torch.from_numpy(self.solver.prev_alpha.copy()),
            "last_alpha": torch.from_numpy(self._last_alpha.copy()),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.solver.prev_alpha = state["solver_alpha"].double().numpy().copy()
        self._last_alpha = state["last_alpha"].double().numpy().copy()
