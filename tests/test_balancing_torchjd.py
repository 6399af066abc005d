"""Our aggregators against torchjd's where the definitions coincide (scale factors stated).

- MGDA, IMTL-G, PCGrad (same seed), GradDrop (same seed, leak 0): equal.
- CAGrad: ours with ``rescale=0`` equals torchjd's ``CAGrad(c)``; the default ``rescale=1`` is
  torchjd's divided by ``1 + c^2``.
- Aligned-MTL: ours sums the aligned gradients (authors, LibMTL): T times torchjd's (mean
  preference vector).
- Nash-MTL: equal with ``max_norm=0`` (the clipping conventions differ).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tokenmtl.balancing import create

tja = pytest.importorskip("torchjd.aggregation")

CASES = [((2, 5), 0), ((3, 8), 1), ((4, 20), 2), ((5, 11), 3), ((3, 30), 4)]


def matrix(shape: tuple[int, int], seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def losses(num: int) -> torch.Tensor:
    return torch.ones(num, dtype=torch.float64)


@pytest.mark.parametrize("shape,seed", CASES)
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_mgda_equals_torchjd(shape: tuple[int, int], seed: int, scale: float) -> None:
    grads = matrix(shape, seed, scale)
    ours = create("mgda", shape[0], stop_crit=1e-9, max_iter=20000).aggregate(grads, losses(shape[0]))
    theirs = tja.MGDA(epsilon=1e-9, max_iters=20000)(grads)
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(theirs.norm()))


@pytest.mark.parametrize("shape,seed", CASES)
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_imtl_equals_torchjd_imtlg(shape: tuple[int, int], seed: int, scale: float) -> None:
    grads = matrix(shape, seed, scale)
    ours = create("imtl", shape[0]).aggregate(grads, losses(shape[0]))
    assert torch.allclose(ours, tja.IMTLG()(grads), rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize("shape,seed", CASES)
def test_cagrad_rescale_zero_equals_torchjd_and_default_divides_by_one_plus_c_squared(
    shape: tuple[int, int], seed: int
) -> None:
    grads = matrix(shape, seed)
    c = 0.4
    theirs = tja.CAGrad(c=c)(grads)
    ours0 = create("cagrad", shape[0], c=c, rescale=0).aggregate(grads, losses(shape[0]))
    ours1 = create("cagrad", shape[0], c=c).aggregate(grads, losses(shape[0]))
    tol = 2e-3 * float(theirs.norm())
    assert torch.allclose(ours0, theirs, atol=tol)
    assert torch.allclose(ours1, theirs / (1 + c**2), atol=tol)


@pytest.mark.parametrize("shape,seed", CASES)
def test_pcgrad_equals_torchjd_with_the_same_seed(shape: tuple[int, int], seed: int) -> None:
    grads = matrix(shape, seed)
    torch.manual_seed(seed)
    ours = create("pcgrad", shape[0]).aggregate(grads, losses(shape[0]))
    torch.manual_seed(seed)
    theirs = tja.PCGrad()(grads)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,seed", CASES)
def test_graddrop_equals_torchjd_with_the_same_seed(shape: tuple[int, int], seed: int) -> None:
    grads = matrix(shape, seed)
    torch.manual_seed(seed)
    ours = create("graddrop", shape[0]).aggregate(grads, losses(shape[0]))
    torch.manual_seed(seed)
    theirs = tja.GradDrop()(grads)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,seed", CASES)
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_is_num_tasks_times_torchjd(shape: tuple[int, int], seed: int, scale_mode: str) -> None:
    grads = matrix(shape, seed)
    ours = create("alignedmtl", shape[0], scale_mode=scale_mode).aggregate(grads, losses(shape[0]))
    theirs = tja.AlignedMTL(scale_mode=scale_mode)(grads)
    assert torch.allclose(ours, shape[0] * theirs, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape,seed", CASES[:3])
def test_nashmtl_equals_torchjd_over_several_steps(shape: tuple[int, int], seed: int) -> None:
    ours = create("nashmtl", shape[0], max_norm=0.0)
    theirs = tja.NashMTL(n_tasks=shape[0], max_norm=0.0)
    for step in range(3):
        grads = matrix(shape, seed + 10 * step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = theirs(grads)
        got = ours.aggregate(grads, losses(shape[0]))
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-8)
