"""Token covariance and the range/null split (docs/method.md, "Token space of a layer")."""

import pytest
import torch

from tokenmtl.dtme import TokenCovariance, range_rank, split_token_space


def planted_covariance(eigenvalues, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T, q


def test_streaming_covariance_equals_dense_computation():
    g = torch.Generator().manual_seed(1)
    batches = [
        torch.randn(3, 5, 7, generator=g) * 2 + 1,
        torch.randn(11, 7, generator=g),
        torch.randn(2, 2, 2, 7, generator=g),
    ]
    cov = TokenCovariance(7)
    for b in batches:
        cov.update(b)
    x = torch.cat([b.reshape(-1, 7) for b in batches]).double()
    assert cov.count == 15 + 11 + 8
    assert cov.matrix.dtype == torch.float64
    torch.testing.assert_close(cov.matrix, x.T @ x / x.shape[0], rtol=1e-12, atol=1e-12)


def test_covariance_mask_keeps_only_selected_tokens():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    cov = TokenCovariance(3)
    cov.update(x, mask)
    kept = x[mask].double()
    assert cov.count == 3
    torch.testing.assert_close(cov.matrix, kept.T @ kept / 3)


def test_non_finite_tokens_raise_naming_the_layer():
    cov = TokenCovariance(4, name="5")
    bad = torch.ones(2, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="layer 5"):
        cov.update(bad)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        cov.update(bad)
    with pytest.raises(ValueError, match="D=4"):
        cov.update(torch.ones(2, 3))


@pytest.mark.parametrize("r, expected_k", [(1.0, 1), (4.0, 2), (9.0, 3), (19.0, 4), (99.0, 6), (1000.0, 7)])
def test_split_picks_planted_rank_for_each_r(r, expected_k):
    # energies 50, 30, 10, 5, 3, 1.5, 0.5, 0 of a total of 100: cumulative 50, 80, 90, 95, 98, 99.5, 100
    values = [50.0, 30.0, 10.0, 5.0, 3.0, 1.5, 0.5, 0.0]
    matrix, q = planted_covariance(values)
    space = split_token_space(matrix, r=r)
    assert space.k == expected_k
    assert space.range_basis.shape == (8, expected_k) and space.null_basis.shape == (8, 8 - expected_k)
    torch.testing.assert_close(space.eigenvalues, torch.tensor(values, dtype=torch.float64), atol=1e-10, rtol=0)
    # the range basis spans exactly the planted top-k eigenvectors
    overlap = q[:, :expected_k].T @ space.range_basis
    torch.testing.assert_close(overlap.abs().sum(0), torch.ones(expected_k, dtype=torch.float64), atol=1e-8, rtol=0)
    basis = space.basis
    torch.testing.assert_close(basis.T @ basis, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)


def test_energy_fraction_option_replaces_r():
    matrix, _ = planted_covariance([50.0, 30.0, 10.0, 5.0, 3.0, 1.5, 0.5, 0.0])
    assert split_token_space(matrix, energy_fraction=0.8).k == 2
    assert split_token_space(matrix, energy_fraction=0.81).k == 3
    assert split_token_space(matrix, energy_fraction=1.0).k == 7


def test_full_rank_spectrum_can_leave_no_null_space():
    matrix, _ = planted_covariance([1.0] * 6)
    space = split_token_space(matrix, r=1e9)
    assert space.k == 6 and space.null_basis.shape == (6, 0)


def test_all_zero_tokens_give_empty_range():
    cov = TokenCovariance(5)
    cov.update(torch.zeros(10, 5))
    space = split_token_space(cov)
    assert space.k == 0 and space.range_basis.shape == (5, 0) and space.null_basis.shape == (5, 5)
    assert range_rank(torch.zeros(3)) == 0


def test_invalid_split_options_are_clear_errors():
    with pytest.raises(ValueError, match="r .* must be > 0"):
        range_rank(torch.ones(3), r=0)
    with pytest.raises(ValueError, match="energy_fraction"):
        range_rank(torch.ones(3), energy_fraction=1.5)
