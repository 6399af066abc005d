"""Token-level gradient conflicts in the range and null spaces of a layer (docs/method.md, "Conflicts").

For every token m and task pair (i < j), the task gradients are projected on the layer's range
space U_R and null space U_N; a pair conflicts in a space when the inner product of the two
projections is negative. `<U U^T g_i, U U^T g_j> = <U^T g_i, U^T g_j>` for an orthonormal U, so
one rotation `g @ [U_R | U_N]` gives both spaces, and per-token T x T Gram matrices (one batched
matmul) give every pair at once: no loop over tokens or pairs.

The rotation runs in float64: a null space often carries a tiny share of a gradient (1e-4 of
its norm is common), and its conflicts must still be counted. The round-off guard is relative
to the norms of the projections in that space (see `_space_statistics`), so only inner products
that round-off could have produced count as zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenmtl.dtme.token_space import TokenSpace

# Index of each statistic in ConflictCounts.values (one float64 vector, so one all-reduce).
_FIELDS = (
    "pairs",
    "range_conflicts",
    "null_conflicts",
    "range_cos_sum",
    "range_cos_count",
    "null_cos_sum",
    "null_cos_count",
)
# Safety factor of the round-off bounds (see `_space_statistics`).
_ROUNDOFF = 4.0
# Tokens per chunk of the float64 rotation: chunk * T * D values at most 2**24 (128 MiB).
_CHUNK_VALUES = 2**24


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

    def add(self, other: ConflictCounts) -> None:
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
        """Mean cosine of range-space projections over pairs where both are above round-off."""
        return self._ratio(self.range_cos_sum, self.range_cos_count)

    @property
    def null_mean_cosine(self) -> float:
        """Mean cosine of null-space projections over pairs where both are above round-off."""
        return self._ratio(self.null_cos_sum, self.null_cos_count)


def projection_error(full_norms: torch.Tensor, dim: int, input_eps: float) -> torch.Tensor:
    """Bound on the round-off of a projection `U^T g` of a gradient of norm |g|, per gradient.

    `delta = (eps_in / 2 + 4 D eps_64) |g|`: a gradient stored in a dtype of machine epsilon
    eps_in is its exact value to within eps_in/2 |g| (which the orthonormal U^T cannot amplify),
    and the float64 rotation adds at most D eps_64 |g| (times a safety factor of 4).
    """
    eps64 = float(torch.finfo(torch.float64).eps)
    return (0.5 * input_eps + _ROUNDOFF * dim * eps64) * full_norms


def _space_statistics(
    gram: torch.Tensor, delta: torch.Tensor, space_dim: int, i: torch.Tensor, j: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Conflict count, cosine sum and cosine count of one space from per-token float64 Grams (M, T, T).

    With projections p and their round-off bounds delta, `<p_i, p_j>` is known to within
    `tol = delta_i |p_j| + |p_i| delta_j + delta_i delta_j + 4 d eps_64 |p_i||p_j|` (the last term:
    the Gram's own round-off over the d dimensions of the space):
    a conflict is `<p_i, p_j> < -tol`. A projection at round-off level (|p| <= delta) can never
    conflict (|<p_i, p_j>| <= |p_i||p_j| <= tol), and its cosine is undefined (not averaged).
    """
    eps64 = float(torch.finfo(torch.float64).eps)
    inner = gram[:, i, j]  # (M, P)
    norms = torch.diagonal(gram, dim1=1, dim2=2).clamp_min(0).sqrt()  # (M, T)
    ni, nj, di, dj = norms[:, i], norms[:, j], delta[:, i], delta[:, j]
    tol = di * nj + ni * dj + di * dj + _ROUNDOFF * space_dim * eps64 * ni * nj
    conflicts = (inner < -tol).sum(dtype=torch.float64)
    defined = (ni > di) & (nj > dj)
    denom = torch.where(defined, ni * nj, torch.ones_like(ni))
    cosine = torch.where(defined, inner / denom, torch.zeros_like(inner))
    return conflicts, cosine.sum(dtype=torch.float64), defined.sum(dtype=torch.float64)


def conflict_counts(task_grads: torch.Tensor, space: TokenSpace) -> ConflictCounts:
    """Per-space conflict counts and cosine sums for task gradients (T, M, D) (docs/method.md, "Conflicts").

    A conflict is an inner product of the two projections below minus its round-off bound; the
    projection runs in float64 whatever the gradients' dtype, so a null space holding a tiny
    share of the gradients still has its conflicts counted, while a projection that is zero up to
    round-off (a pure range-space gradient's null part, an empty null space, a masked token's
    zero gradient) never conflicts.
    """
    if task_grads.dim() != 3:
        raise ValueError(f"task_grads must be (T, M, D); got shape {tuple(task_grads.shape)}")
    num_tasks, num_tokens, dim = task_grads.shape
    if dim != space.dim:
        raise ValueError(f"task_grads have D={dim} but the token space has D={space.dim}")
    if num_tasks < 2:
        raise ValueError(f"conflicts need at least 2 tasks; got T={num_tasks}")
    input_eps = float(torch.finfo(task_grads.dtype).eps) if task_grads.is_floating_point() else 0.0
    device = task_grads.device
    basis = space.basis.to(device=device, dtype=torch.float64)
    i, j = torch.triu_indices(num_tasks, num_tasks, 1, device=device)
    k = space.k
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    chunk = max(1, _CHUNK_VALUES // (num_tasks * dim))
    for start in range(0, num_tokens, chunk):
        grads = task_grads[:, start : start + chunk].to(torch.float64).transpose(0, 1)  # (m, T, D)
        delta = projection_error(grads.norm(dim=-1), dim, input_eps)  # (m, T)
        projected = grads @ basis  # (m, T, D)
        stats = []
        for part in (projected[..., :k], projected[..., k:]):
            stats.append(_space_statistics(part @ part.transpose(1, 2), delta, part.shape[-1], i, j))
        (r_conf, r_cos, r_def), (n_conf, n_cos, n_def) = stats
        sums += torch.stack([r_conf, n_conf, r_cos, r_def, n_cos, n_def])
    pairs = torch.tensor([float(num_tokens * i.numel())], dtype=torch.float64, device=device)
    return ConflictCounts(torch.cat([pairs, sums]))


def conflict_rates(task_grads: torch.Tensor, space: TokenSpace) -> tuple[float, float]:
    """(range_rate, null_rate): fractions of (token, task pair) with a negative inner product per space."""
    counts = conflict_counts(task_grads, space)
    return counts.range_rate, counts.null_rate
