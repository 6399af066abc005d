"""Token space of one layer: streaming uncentered covariance and its range/null split
(docs/method.md, "Token space of a layer").

The covariance is accumulated in float64, batch by batch (memory O(D^2), never O(M*D)); the
split keeps in the range space the top eigenvectors holding a fraction r/(1+r) of the energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class TokenCovariance:
    """Streaming uncentered token covariance `C = (1/M) sum_m x_m x_m^T` in float64
    (docs/method.md, "Token space of a layer").

    `update(tokens)` takes any shape ending in D (all leading axes are tokens). `sum` and `count`
    are plain tensors so that a distributed run can all-reduce them (SUM) before reading `matrix`.
    """

    def __init__(self, dim: int, name: str | None = None, device: torch.device | str | None = None):
        if dim <= 0:
            raise ValueError(f"TokenCovariance needs a positive token dimension; got dim={dim}")
        self.dim = int(dim)
        self.name = name
        self.sum = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def _where(self) -> str:
        return f" at layer {self.name}" if self.name is not None else ""

    def update(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add tokens (..., D); `mask` (the leading shape, bool) keeps only the True tokens."""
        if tokens.shape[-1] != self.dim:
            raise ValueError(
                f"tokens{self._where()} have last dimension {tokens.shape[-1]}; this covariance expects D={self.dim}"
            )
        x = tokens.detach().reshape(-1, self.dim)
        if mask is not None:
            x = x[mask.reshape(-1).to(x.device)]
        if not torch.isfinite(x).all():
            raise ValueError(
                f"tokens{self._where()} contain NaN or Inf; the token covariance needs finite "
                f"tokens (check the learning rate / the checkpoint)"
            )
        if self.sum.device != x.device:
            self.sum = self.sum.to(x.device)
            self.count = self.count.to(x.device)
        x = x.to(torch.float64)
        self.sum.addmm_(x.T, x)
        self.count += x.shape[0]

    @property
    def matrix(self) -> torch.Tensor:
        """The D x D covariance normalised by the token count (zeros before any token)."""
        if float(self.count) == 0:
            return torch.zeros_like(self.sum)
        return self.sum / self.count


@dataclass
class TokenSpace:
    """Range/null split of a token space: orthonormal bases and the eigenvalues (descending)."""

    range_basis: torch.Tensor  # (D, k)
    null_basis: torch.Tensor  # (D, D - k)
    eigenvalues: torch.Tensor  # (D,), descending
    k: int

    @property
    def dim(self) -> int:
        """Token dimension D."""
        return int(self.eigenvalues.shape[0])

    @property
    def basis(self) -> torch.Tensor:
        """All eigenvectors, range first: (D, D) = [range_basis | null_basis]."""
        return torch.cat([self.range_basis, self.null_basis], dim=1)


def range_rank(eigenvalues: torch.Tensor, r: float = 100.0, energy_fraction: float | None = None) -> int:
    """Smallest k with `sum_{i<=k} s_i >= f * sum_i s_i`, f = r/(1+r) or `energy_fraction`
    (docs/method.md, "Token space of a layer").

    Eigenvalues must be sorted descending; tiny negative ones (round-off) count as zero. An all-zero
    spectrum has no range (k = 0).
    """
    if energy_fraction is not None:
        if not 0.0 < energy_fraction <= 1.0:
            raise ValueError(f"energy_fraction must be in (0, 1]; got {energy_fraction}")
        fraction = float(energy_fraction)
    else:
        if not r > 0:
            raise ValueError(f"r (range:null energy ratio) must be > 0; got {r}")
        fraction = float(r) / (1.0 + float(r))
    s = eigenvalues.to(torch.float64).clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(s, 0)
    # relative tolerance: a fraction of 1.0 must reach k = D despite round-off in the cumsum
    reached = cumulative >= fraction * total * (1 - 1e-12)
    return int(torch.nonzero(reached)[0, 0]) + 1


def split_token_space(
    cov: TokenCovariance | torch.Tensor,
    r: float = 100.0,
    energy_fraction: float | None = None,
    name: str | None = None,
) -> TokenSpace:
    """Eigendecompose a token covariance and split it into range (top k) and null spaces
    (docs/method.md, "Token space of a layer").

    `r` is the range:null energy ratio (k keeps r/(1+r) of the energy: r=100 -> 99%);
    `energy_fraction` replaces it with a plain fraction. k = D gives an empty null basis (D x 0).
    """
    matrix = cov.matrix if isinstance(cov, TokenCovariance) else cov
    name = name if name is not None else getattr(cov, "name", None)
    where = f" at layer {name}" if name is not None else ""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a covariance must be a square matrix; got shape {tuple(matrix.shape)}{where}")
    matrix = matrix.to(torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError(f"the token covariance{where} contains NaN or Inf")
    matrix = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    eigenvalues = eigenvalues.flip(0)
    eigenvectors = eigenvectors.flip(1)
    k = range_rank(eigenvalues, r=r, energy_fraction=energy_fraction)
    return TokenSpace(
        range_basis=eigenvectors[:, :k].contiguous(),
        null_basis=eigenvectors[:, k:].contiguous(),
        eigenvalues=eigenvalues,
        k=k,
    )
