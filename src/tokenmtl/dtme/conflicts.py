"""Token-level gradient conflicts in the range and null spaces of a layer (METHOD.md 1.2).

For every token m and task pair (i < j), the task gradients are projected on the layer's range
space U_R and null space U_N; a pair conflicts in a space when the inner product of the two
projections is negative. `<U U^T g_i, U U^T g_j> = <U^T g_i, U^T g_j>` for an orthonormal U, so
one rotation `g @ [U_R | U_N]` gives both spaces, and per-token T x T Gram matrices (one batched
matmul) give every pair at once: no loop over tokens or pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenmtl.dtme.token_space import TokenSpace

# Index of each statistic in ConflictCounts.values (one float64 vector, so one all-reduce).
_FIELDS = ("pairs", "range_conflicts", "null_conflicts", "range_cos_sum", "range_cos_count",
           "null_cos_sum", "null_cos_count")
# Round-off guard: |<g_i, g_j>_S| <= _ROUNDOFF * D * eps * |g_i| |g_j| counts as zero (no conflict).
_ROUNDOFF = 4.0


@dataclass
class ConflictCounts:
    """Sums over (token, task pair) of one layer: conflicts and cosines per space.

    `values` is a float64 vector of sums (pairs counted, range/null conflicts, cosine sums and
    the number of pairs whose cosine is defined), so counts from several batches add and a
    distributed run all-reduces `values` (SUM) before reading the rates.
    """

    values: torch.Tensor = field(default_factory=lambda: torch.zeros(len(_FIELDS), dtype=torch.float64))

    def __getattr__(self, name: str) -> float:
        if name in _FIELDS:
            return float(self.values[_FIELDS.index(name)])
        raise AttributeError(name)

    def add(self, other: "ConflictCounts") -> None:
        """Accumulate another batch's counts in place."""
        self.values = self.values.to(other.values.device) + other.values

    @staticmethod
    def _ratio(num: float, den: float) -> float:
        return num / den if den > 0 else 0.0

    @property
    def range_rate(self) -> float:
        """Fraction of (token, pair) with `<g_i,R, g_j,R> < 0` (0 when nothing was counted)."""
        return self._ratio(self.range_conflicts, self.pairs)

    @property
    def null_rate(self) -> float:
        """Fraction of (token, pair) with `<g_i,N, g_j,N> < 0` (0 when the null space is empty)."""
        return self._ratio(self.null_conflicts, self.pairs)

    @property
    def range_mean_cosine(self) -> float:
        """Mean cosine of range-space projections over pairs where both are non-zero."""
        return self._ratio(self.range_cos_sum, self.range_cos_count)

    @property
    def null_mean_cosine(self) -> float:
        """Mean cosine of null-space projections over pairs where both are non-zero."""
        return self._ratio(self.null_cos_sum, self.null_cos_count)


def _space_statistics(gram: torch.Tensor, full_norms: torch.Tensor, eps: float, dim: int,
                      i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Conflict count, cosine sum and cosine count of one space from per-token Grams (M, T, T)."""
    inner = gram[:, i, j]                                            # (M, P)
    norms = torch.diagonal(gram, dim1=1, dim2=2).clamp_min(0).sqrt()  # (M, T)
    tol = _ROUNDOFF * dim * eps * full_norms[:, i] * full_norms[:, j]
    conflicts = (inner < -tol).sum(dtype=torch.float64)
    denom = norms[:, i] * norms[:, j]
    defined = denom > tol
    cosine = torch.where(defined, inner / torch.where(defined, denom, torch.ones_like(denom)),
                         torch.zeros_like(denom))
    return conflicts, cosine.sum(dtype=torch.float64), defined.sum(dtype=torch.float64)


def conflict_counts(task_grads: torch.Tensor, space: TokenSpace) -> ConflictCounts:
    """Per-space conflict counts and cosine sums for task gradients (T, M, D) (METHOD.md 1.2).

    A conflict is a strictly negative inner product; a pair whose projected inner product is zero
    (up to round-off, |.| <= 4 D eps |g_i| |g_j|) is not a conflict, so an empty null space
    (k = D) has no null conflicts and zero gradients (e.g. masked tokens) never conflict. The
    projection runs in the gradients' dtype (float32 in training); the sums are float64.
    """
    if task_grads.dim() != 3:
        raise ValueError(f"task_grads must be (T, M, D); got shape {tuple(task_grads.shape)}")
    num_tasks, num_tokens, dim = task_grads.shape
    if dim != space.dim:
        raise ValueError(f"task_grads have D={dim} but the token space has D={space.dim}")
    if num_tasks < 2:
        raise ValueError(f"conflicts need at least 2 tasks; got T={num_tasks}")
    grads = task_grads if task_grads.is_floating_point() else task_grads.double()
    basis = space.basis.to(device=grads.device, dtype=grads.dtype)
    eps = float(torch.finfo(grads.dtype).eps)
    i, j = torch.triu_indices(num_tasks, num_tasks, 1, device=grads.device)
    projected = (grads.reshape(-1, dim) @ basis).reshape(num_tasks, num_tokens, dim)
    projected = projected.transpose(0, 1)                            # (M, T, D)
    full_norms = grads.transpose(0, 1).norm(dim=-1)                  # (M, T)
    k = space.k
    stats = []
    for part in (projected[..., :k], projected[..., k:]):
        gram = part @ part.transpose(1, 2)                           # (M, T, T)
        stats.append(_space_statistics(gram, full_norms, eps, dim, i, j))
    (r_conf, r_cos, r_def), (n_conf, n_cos, n_def) = stats
    pairs = torch.tensor(float(num_tokens * i.numel()), dtype=torch.float64, device=grads.device)
    values = torch.stack([pairs, r_conf, n_conf, r_cos, r_def, n_cos, n_def]).to(torch.float64)
    return ConflictCounts(values)


def conflict_rates(task_grads: torch.Tensor, space: TokenSpace) -> tuple[float, float]:
    """(range_rate, null_rate): fractions of (token, task pair) with a negative inner product per space."""
    counts = conflict_counts(task_grads, space)
    return counts.range_rate, counts.null_rate
