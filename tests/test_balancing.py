"""tokenmtl.balancing: registry, closed forms on small Jacobians, properties on random ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenmtl import balancing
from tokenmtl.balancing import create
from tokenmtl.balancing.alignedmtl import balance_transformation
from tokenmtl.balancing.mgda import min_norm_weights

GRADIENT_METHODS = ["ew", "graddrop", "mgda", "pcgrad", "cagrad", "imtl", "nashmtl", "alignedmtl", "dbmtl"]
LOSS_METHODS = ["ew", "uw", "dwa", "famo"]
J_REF = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)


def random_matrix(shape: tuple[int, int], scale: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def degenerate_matrices() -> dict[str, torch.Tensor]:
    g = random_matrix((1, 6), 1.0, 7)[0]
    h = random_matrix((1, 6), 1.0, 8)[0]
    return {
        "all_zero": torch.zeros(3, 6, dtype=torch.float64),
        "one_zero_row": torch.stack([g, torch.zeros(6, dtype=torch.float64), h]),
        "identical": torch.stack([g, g]),
        "opposite": torch.stack([g, -g]),
        "single_task": g[None],
        "tiny": random_matrix((3, 6), 1e-6, 9),
        "huge": random_matrix((3, 6), 1e6, 10),
    }


SHAPES = [(2, 5), (3, 8), (4, 20), (5, 11)]
SCALES = [1e-6, 1.0, 1e6]
RANDOM_CASES = [(shape, scale, seed) for seed, (shape, scale) in enumerate((s, c) for s in SHAPES for c in SCALES)]


def losses_for(num: int) -> torch.Tensor:
    return torch.linspace(0.5, 2.0, num, dtype=torch.float64)


# ---------------------------------------------------------------- registry
def test_available_lists_every_method() -> None:
    assert balancing.available() == [
        "ew",
        "uw",
        "dwa",
        "graddrop",
        "mgda",
        "pcgrad",
        "cagrad",
        "imtl",
        "nashmtl",
        "alignedmtl",
        "famo",
        "dbmtl",
        "recon",
    ]


def test_describe_gives_summary_options_and_kind() -> None:
    info = balancing.describe()
    assert set(info) == set(balancing.available())
    for _name, entry in info.items():
        assert set(entry) == {"summary", "options", "kind"}
        assert entry["kind"] in ("loss", "gradient")
        assert entry["summary"] and "\n" not in entry["summary"]
    assert info["cagrad"]["options"] == {"c": 0.4, "rescale": 1}
    assert info["dbmtl"]["options"] == {"beta": 0.9, "sigma": 0.0}
    assert info["famo"]["options"]["gamma"] == 0.01
    assert info["famo"]["kind"] == "loss" and info["ew"]["kind"] == "loss"


def test_unknown_method_lists_available_names() -> None:
    with pytest.raises(ValueError, match="available: ew, uw, dwa"):
        create("gradnorm", 2)


def test_unknown_option_lists_the_methods_options() -> None:
    with pytest.raises(ValueError, match=r"c=0.4, rescale=1"):
        create("cagrad", 2, alpha=0.5)


def test_invalid_option_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="normalization"):
        create("mgda", 2, normalization="l1")
    with pytest.raises(ValueError, match="rescale"):
        create("cagrad", 2, rescale=3)
    with pytest.raises(ValueError, match="num_tasks"):
        create("ew", 0)


def test_nashmtl_without_cvxpy_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenmtl.balancing import nashmtl

    monkeypatch.setattr(nashmtl, "cp", None)
    with pytest.raises(ImportError, match="pip install cvxpy ecos"):
        create("nashmtl", 2)


# ---------------------------------------------------------------- finiteness, shapes
@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("case", list(degenerate_matrices()))
def test_degenerate_gradients_give_finite_updates(name: str, case: str) -> None:
    grads = degenerate_matrices()[case]
    balancer = create(name, grads.shape[0])
    update = balancer.aggregate(grads, losses_for(grads.shape[0]))
    assert update.shape == (grads.shape[1],)
    assert torch.isfinite(update).all()


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("shape,scale,seed", RANDOM_CASES[::2])
def test_random_gradients_give_finite_updates(name: str, shape: tuple[int, int], scale: float, seed: int) -> None:
    grads = random_matrix(shape, scale, seed)
    update = create(name, shape[0]).aggregate(grads, losses_for(shape[0]))
    assert update.shape == (shape[1],) and torch.isfinite(update).all()


@pytest.mark.parametrize("name", LOSS_METHODS)
@pytest.mark.parametrize("losses", [[0.0, 0.0], [1.0, 1e-9], [3.0, 2.0], [1e6, 1e-6]])
def test_loss_methods_give_finite_totals_and_gradients(name: str, losses: list[float]) -> None:
    balancer = create(name, 2)
    values = torch.tensor(losses, requires_grad=True)
    total = balancer.weigh(values)
    total.backward()
    assert total.ndim == 0 and torch.isfinite(total) and torch.isfinite(values.grad).all()


# ---------------------------------------------------------------- EW, UW, DWA, FAMO
def test_ew_sums_losses_and_gradients() -> None:
    ew = create("ew", 2)
    assert ew.weigh(torch.tensor([1.0, 2.5])).item() == 3.5
    assert torch.equal(ew.aggregate(J_REF, losses_for(2)), J_REF.sum(0))


def test_uw_is_libmtl_form_with_log_variance_init_minus_half() -> None:
    uw = create("uw", 2)
    losses = torch.tensor([1.0, 4.0])
    total = uw.weigh(losses)
    s = -0.5
    assert total.item() == pytest.approx(sum(l / (2 * math.exp(s)) + s / 2 for l in (1.0, 4.0)), rel=1e-6)
    total.backward()
    expected = [-l / (2 * math.exp(s)) + 0.5 for l in (1.0, 4.0)]
    assert uw.log_var.grad.tolist() == pytest.approx(expected, rel=1e-6)
    assert [p.shape for p in uw.parameters()] == [torch.Size([2])]


def test_dwa_weights_from_the_last_two_windows() -> None:
    dwa = create("dwa", 2, window=2, temperature=2.0)
    history = [[1.0, 1.0], [3.0, 1.0], [1.0, 1.0], [1.0, 2.0]]  # window means (2, 1) then (1, 1.5)
    for losses in history:
        dwa.weigh(torch.tensor(losses))
        assert torch.equal(dwa.weights, torch.ones(2))
    dwa.weigh(torch.tensor([5.0, 5.0]))
    ratio = torch.tensor([1.0 / 2.0, 1.5 / 1.0])
    assert torch.allclose(dwa.weights, 2 * torch.softmax(ratio / 2.0, 0))


def test_dwa_state_survives_state_dict() -> None:
    a = create("dwa", 2, window=1)
    for losses in ([2.0, 1.0], [1.0, 1.0]):
        a.weigh(torch.tensor(losses))
    b = create("dwa", 2, window=1)
    b.load_state_dict(a.state_dict())
    a.weigh(torch.tensor([1.0, 1.0]))
    b.weigh(torch.tensor([1.0, 1.0]))
    assert torch.equal(a.weights, b.weights) and not torch.equal(a.weights, torch.ones(2))


def test_famo_parameter_gradient_has_weights_summing_to_one() -> None:
    famo = create("famo", 3)
    losses = torch.tensor([0.5, 2.0, 8.0], requires_grad=True)
    famo.weigh(losses).backward()
    z = torch.full((3,), 1 / 3)
    c = (z / (losses.detach() + 1e-8)).sum()
    assert torch.allclose(losses.grad, z / (c * (losses.detach() + 1e-8)))
    assert losses.grad.sum().item() == pytest.approx(1.0)


def test_famo_moves_weight_away_from_the_task_that_improved_most() -> None:
    famo = create("famo", 2)
    famo.weigh(torch.tensor([1.0, 1.0]))
    famo.after_step(torch.tensor([0.5, 0.99]))
    assert famo.logits[0] < famo.logits[1]


def test_famo_logit_step_is_torch_adam_with_l2_weight_decay() -> None:
    famo = create("famo", 3, w_lr=0.1, gamma=0.05)
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1, weight_decay=0.05)
    sequence = [
        ([1.0, 2.0, 3.0], [0.8, 1.9, 2.0]),
        ([0.8, 1.9, 2.0], [0.7, 1.0, 1.9]),
        ([0.7, 1.0, 1.9], [0.6, 0.9, 1.5]),
    ]
    for before, after in sequence:
        famo.weigh(torch.tensor(before))
        famo.after_step(torch.tensor(after))
        delta = torch.log(torch.tensor(before) + 1e-8) - torch.log(torch.tensor(after) + 1e-8)
        opt.zero_grad()
        w.grad = torch.autograd.grad(torch.softmax(w, 0), w, grad_outputs=delta)[0]
        opt.step()
        assert torch.allclose(famo.logits, w.detach(), atol=1e-6)


def test_famo_defaults_are_the_official_ones_without_clipping() -> None:
    famo = create("famo", 2)
    assert (famo.w_lr, famo.gamma, famo.max_norm) == (0.025, 0.01, 0.0)
    assert famo.needs_reevaluation
    assert balancing.describe()["famo"]["options"]["max_norm"] == 0.0
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        create("famo", 2, max_norm=-1.0)


class _TwoTaskNet(torch.nn.Module):
    """A shared Linear and two Linear heads: the GradDriver's model contract, for FAMO's clip tests."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tasks = ["a", "b"]
        self.shared = torch.nn.Linear(3, 4)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1) for t in self.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: self.heads[t](self.shared(x)) for t in self.tasks}

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.shared.parameters())

    def task_parameters(self, task: str) -> list[torch.nn.Parameter]:
        return list(self.heads[task].parameters())


def _famo_shared_grad_norm(**options: float) -> tuple[float, float]:
    """(norm of the shared gradient set by the driver, norm of the plain weighted-sum gradient)."""
    from tokenmtl.engine.grad_driver import GradDriver

    model, x = _TwoTaskNet(), torch.linspace(-3, 3, 12).reshape(4, 3)
    famo = create("famo", 2, **options)
    GradDriver(model, famo).backward({t: 1e3 * (out - 5).pow(2).mean() for t, out in model(x).items()})
    driver_norm = torch.cat([p.grad.flatten() for p in model.shared_parameters()]).norm()
    model.zero_grad()
    losses = torch.stack([1e3 * (out - 5).pow(2).mean() for out in model(x).values()])
    (famo.weights * losses).sum().backward()
    plain_norm = torch.cat([p.grad.flatten() for p in model.shared_parameters()]).norm()
    return float(driver_norm), float(plain_norm)


def test_famo_default_leaves_a_large_shared_gradient_unclipped() -> None:
    driver_norm, plain_norm = _famo_shared_grad_norm()
    assert plain_norm > 10.0  # a clip to max_norm=1 would have acted on this gradient
    assert driver_norm == pytest.approx(plain_norm, rel=1e-5)


def test_famo_max_norm_option_clips_when_asked() -> None:
    driver_norm, plain_norm = _famo_shared_grad_norm(max_norm=1.0)
    assert plain_norm > 10.0 and driver_norm == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------- MGDA
@pytest.mark.parametrize("a,b", [(1.0, 1.0), (3.0, 0.5), (1e-4, 2e3)])
def test_mgda_on_orthogonal_gradients_weighs_by_the_other_norm(a: float, b: float) -> None:
    grads = torch.tensor([[a, 0.0, 0.0], [0.0, b, 0.0]], dtype=torch.float64)
    mgda = create("mgda", 2)
    mgda.aggregate(grads, losses_for(2))
    assert mgda.weights.tolist() == pytest.approx([b**2 / (a**2 + b**2), a**2 / (a**2 + b**2)], rel=1e-9)


def test_mgda_returns_the_shorter_gradient_when_it_is_the_min_norm_point() -> None:
    grads = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)  # <g1, g2> >= ||g1||^2
    mgda = create("mgda", 2)
    assert torch.allclose(mgda.aggregate(grads, losses_for(2)), grads[0])
    assert mgda.weights.tolist() == [1.0, 0.0]


def test_mgda_reference_values() -> None:
    mgda = create("mgda", 2)
    assert torch.allclose(
        mgda.aggregate(J_REF, losses_for(2)), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), atol=1e-12
    )
    assert mgda.weights.tolist() == pytest.approx([0.6, 0.4])


@pytest.mark.parametrize("shape,scale,seed", RANDOM_CASES)
def test_mgda_reaches_the_exact_min_norm_point(shape: tuple[int, int], scale: float, seed: int) -> None:
    quadprog = pytest.importorskip("quadprog")
    grads = random_matrix(shape, scale, seed)
    gram = (grads @ grads.T / scale**2).numpy()
    num = shape[0]
    # min 1/2 w^T G w  s.t. sum w = 1, w >= 0
    exact = quadprog.solve_qp(
        gram + 1e-12 * np.eye(num),
        np.zeros(num),
        np.hstack([np.ones((num, 1)), np.eye(num)]),
        np.hstack([[1.0], np.zeros(num)]),
        meq=1,
    )[0]
    w = min_norm_weights(torch.from_numpy(gram))
    assert float(w.sum()) == pytest.approx(1.0) and bool((w >= 0).all())
    assert float(w @ torch.from_numpy(gram) @ w) <= float(exact @ gram @ exact) * (1 + 1e-3) + 1e-12


@pytest.mark.parametrize("shape,scale,seed", RANDOM_CASES)
def test_mgda_update_is_non_conflicting(shape: tuple[int, int], scale: float, seed: int) -> None:
    grads = random_matrix(shape, scale, seed)
    update = create("mgda", shape[0]).aggregate(grads, losses_for(shape[0]))
    assert (grads @ update >= -1e-3 * update.norm() ** 2 - 1e-12 * scale**2).all()


def test_mgda_l2_normalization_ignores_gradient_scales() -> None:
    grads = random_matrix((3, 7), 1.0, 3)
    scaled = grads * torch.tensor([[10.0], [0.1], [3.0]], dtype=torch.float64)
    a = create("mgda", 3, normalization="l2").aggregate(grads, losses_for(3))
    b = create("mgda", 3, normalization="l2").aggregate(scaled, losses_for(3))
    assert torch.allclose(a, b, rtol=1e-6)


def test_mgda_loss_normalization_divides_by_the_losses() -> None:
    grads = random_matrix((2, 4), 1.0, 4)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    a = create("mgda", 2, normalization="loss").aggregate(grads, losses)
    b = create("mgda", 2).aggregate(grads / losses[:, None], losses)
    assert torch.allclose(a, b)


# ---------------------------------------------------------------- PCGrad
def test_pcgrad_on_two_conflicting_vectors_by_hand() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    # g1 - (<g1,g2>/||g2||^2) g2 = (0.5, 0.5); g2 - (<g2,g1>/||g1||^2) g1 = (0, 1)
    assert torch.allclose(
        create("pcgrad", 2).aggregate(grads, losses_for(2)), torch.tensor([0.5, 1.5], dtype=torch.float64)
    )


def test_pcgrad_reference_values() -> None:
    update = create("pcgrad", 2).aggregate(J_REF, losses_for(2))
    assert torch.allclose(update, torch.tensor([0.5848, 3.8012, 3.8012], dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("shape,scale,seed", [c for c in RANDOM_CASES if c[0][0] == 2])
def test_pcgrad_is_non_conflicting_for_two_tasks(shape: tuple[int, int], scale: float, seed: int) -> None:
    grads = random_matrix(shape, scale, seed)
    update = create("pcgrad", 2).aggregate(grads, losses_for(2))
    assert (grads @ update >= -1e-9 * scale**2).all()


def test_pcgrad_order_follows_torch_manual_seed() -> None:
    grads = random_matrix((5, 9), 1.0, 11)
    results = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        results.append(create("pcgrad", 5).aggregate(grads, losses_for(5)))
    assert torch.equal(results[0], results[1])
    distinct = [create("pcgrad", 5, seed=s).aggregate(grads, losses_for(5)) for s in range(20)]
    assert any(not torch.allclose(distinct[0], d) for d in distinct[1:])


def test_pcgrad_private_seed_ignores_the_global_generator() -> None:
    grads = random_matrix((4, 9), 1.0, 12)
    torch.manual_seed(0)
    a = create("pcgrad", 4, seed=5).aggregate(grads, losses_for(4))
    torch.manual_seed(1)
    b = create("pcgrad", 4, seed=5).aggregate(grads, losses_for(4))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- CAGrad
def test_cagrad_on_orthogonal_unit_gradients_by_hand() -> None:
    # G = I: w* = (1/2, 1/2), ||g0|| = ||g_w|| = 1/sqrt(2), so d = (1 + c) g0, then / (1 + c^2).
    grads = torch.eye(2, dtype=torch.float64)
    c = 0.4
    update = create("cagrad", 2).aggregate(grads, losses_for(2))
    assert torch.allclose(update, torch.full((2,), 0.5 * (1 + c) / (1 + c**2), dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize(
    "rescale,expected",
    [(0, [0.1835, 1.2041, 1.2041]), (1, [0.1468, 0.9633, 0.9633]), (2, [0.1835 / 1.5, 1.2041 / 1.5, 1.2041 / 1.5])],
)
def test_cagrad_reference_values_for_each_rescale(rescale: int, expected: list[float]) -> None:
    update = create("cagrad", 2, c=0.5, rescale=rescale).aggregate(J_REF, losses_for(2))
    assert update.tolist() == pytest.approx(expected, abs=2e-4)


def test_cagrad_with_c_zero_is_the_mean() -> None:
    grads = random_matrix((3, 5), 1.0, 2)
    update = create("cagrad", 3, c=0.0).aggregate(grads, losses_for(3))
    assert torch.allclose(update, grads.mean(0), atol=1e-6)


@pytest.mark.parametrize("scale", SCALES)
def test_cagrad_is_linear_under_scaling(scale: float) -> None:
    grads = random_matrix((3, 6), 1.0, 13)
    a = create("cagrad", 3).aggregate(grads, losses_for(3))
    b = create("cagrad", 3).aggregate(grads * scale, losses_for(3))
    assert torch.allclose(b, a * scale, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- IMTL
@pytest.mark.parametrize("shape,scale,seed", RANDOM_CASES)
def test_imtl_update_has_equal_projections_on_unit_gradients(shape: tuple[int, int], scale: float, seed: int) -> None:
    grads = random_matrix(shape, scale, seed)
    imtl = create("imtl", shape[0])
    update = imtl.aggregate(grads, losses_for(shape[0]))
    proj = (grads / grads.norm(dim=1, keepdim=True)) @ update
    assert torch.allclose(proj, proj.mean().expand_as(proj), rtol=1e-6, atol=1e-9 * scale)
    assert float(imtl.weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["imtl", "alignedmtl"])
@pytest.mark.parametrize("shape,scale,seed", RANDOM_CASES)
def test_imtl_and_aligned_mtl_do_not_conflict_on_random_gradients(
    name: str, shape: tuple[int, int], scale: float, seed: int
) -> None:
    # not a theorem for either (IMTL-G needs 1^T G^-1 d > 0), but it holds on these samples
    grads = random_matrix(shape, scale, seed)
    update = create(name, shape[0]).aggregate(grads, losses_for(shape[0]))
    assert (grads @ update >= -1e-9 * scale**2).all()


@pytest.mark.parametrize("seed", range(4))
def test_imtl_equals_the_papers_closed_form(seed: int) -> None:
    grads = random_matrix((4, 10), 1.0, 100 + seed)
    unit = grads / grads.norm(dim=1, keepdim=True)
    d = grads[0] - grads[1:]
    u = unit[0] - unit[1:]
    tail = grads[0] @ u.T @ torch.linalg.inv(d @ u.T)
    alpha = torch.cat([1 - tail.sum()[None], tail])
    imtl = create("imtl", 4)
    imtl.aggregate(grads, losses_for(4))
    assert torch.allclose(imtl.weights, alpha, atol=1e-8)


def test_imtl_reference_values() -> None:
    update = create("imtl", 2).aggregate(J_REF, losses_for(2))
    assert torch.allclose(update, torch.tensor([0.0767, 1.0, 1.0], dtype=torch.float64), atol=1e-4)


def test_imtl_loss_scale_transforms_the_losses() -> None:
    imtl = create("imtl", 2, loss_scale=True)
    with torch.no_grad():
        imtl.log_scale.copy_(torch.tensor([0.5, -1.0]))
    losses = torch.tensor([2.0, 3.0])
    expected = torch.exp(torch.tensor([0.5, -1.0])) * losses - torch.tensor([0.5, -1.0])
    assert torch.allclose(imtl.task_loss_transform(losses), expected)
    assert len(list(create("imtl", 2).parameters())) == 0


# ---------------------------------------------------------------- Aligned-MTL
@pytest.mark.parametrize("shape,scale,seed", RANDOM_CASES)
def test_aligned_gradients_have_condition_number_one(shape: tuple[int, int], scale: float, seed: int) -> None:
    grads = random_matrix(shape, scale, seed)
    b = balance_transformation(grads @ grads.T)
    aligned = b @ grads
    eig = torch.linalg.eigvalsh(aligned @ aligned.T)
    assert float(eig.max() / eig.min()) == pytest.approx(1.0, rel=1e-6)


def test_aligned_mtl_reference_values_sum_the_aligned_gradients() -> None:
    aligned = create("alignedmtl", 2)
    update = aligned.aggregate(J_REF, losses_for(2))
    assert aligned.weights.tolist() == pytest.approx([1.1181, 0.8165], abs=1e-4)
    assert update.tolist() == pytest.approx([0.4266, 1.9347, 1.9347], abs=1e-4)


def test_aligned_mtl_of_identical_gradients_is_their_sum() -> None:
    g = random_matrix((1, 5), 1.0, 1)
    grads = torch.cat([g, g]).float()
    assert torch.allclose(create("alignedmtl", 2).aggregate(grads, losses_for(2).float()), 2 * g[0].float(), rtol=1e-5)


# ---------------------------------------------------------------- Nash-MTL
@pytest.mark.parametrize("shape,scale,seed", [c for c in RANDOM_CASES if c[1] == 1.0 and c[0][0] < 5])
def test_nashmtl_solves_the_bargaining_equation(shape: tuple[int, int], scale: float, seed: int) -> None:
    grads = random_matrix(shape, scale, seed)
    nash = create("nashmtl", shape[0], max_norm=0.0)
    update = nash.aggregate(grads, losses_for(shape[0]))
    w = nash.weights
    assert (w > 0).all()
    assert torch.allclose(w * (grads @ grads.T @ w), torch.ones_like(w), rtol=0, atol=1e-2)
    assert (grads @ update > 0).all()


def test_nashmtl_clips_the_update_to_max_norm_and_weights_heads() -> None:
    grads = random_matrix((3, 6), 100.0, 5)
    nash = create("nashmtl", 3)
    update = nash.aggregate(grads, losses_for(3))
    assert float(update.norm()) <= 1.0 + 1e-6
    assert nash.weight_heads and torch.equal(nash.head_weights, nash.weights)


def test_nashmtl_reuses_weights_between_updates() -> None:
    nash = create("nashmtl", 2, update_weights_every=2, max_norm=0.0)
    nash.aggregate(random_matrix((2, 4), 1.0, 1), losses_for(2))
    first = nash.weights.clone()
    assert nash.shortcut_weights() is not None
    nash.aggregate(random_matrix((2, 4), 1.0, 2), losses_for(2))
    assert torch.equal(nash.weights, first)
    assert nash.shortcut_weights() is None


# ---------------------------------------------------------------- DB-MTL
def test_dbmtl_ema_and_update_by_hand_over_three_steps() -> None:
    steps = [random_matrix((2, 4), s, 20 + i) for i, s in enumerate((1.0, 3.0, 0.5))]
    db = create("dbmtl", 2)
    m = torch.zeros(2, 4, dtype=torch.float64)
    for g in steps:
        m = 0.9 * m + 0.1 * g
        norms = m.norm(dim=1)
        expected = (norms.max() / (norms + 1e-8)) @ m
        assert torch.allclose(db.aggregate(g, losses_for(2)), expected)


def test_dbmtl_sigma_decays_the_ema_factor_with_the_step() -> None:
    db = create("dbmtl", 1, beta=0.5, sigma=0.5)
    g1, g2 = torch.ones(1, 3), 2 * torch.ones(1, 3)
    db.aggregate(g1, torch.ones(1))
    db.aggregate(g2, torch.ones(1))
    m1 = g1 + 0.5 * (0 - g1)
    m2 = g2 + (0.5 / math.sqrt(2)) * (m1 - g2)
    assert torch.allclose(db.buffer, m2)


def test_dbmtl_transforms_losses_to_logs() -> None:
    db = create("dbmtl", 2)
    assert torch.allclose(db.task_loss_transform(torch.tensor([1.0, math.e])), torch.tensor([1e-8, 1.0]), atol=1e-7)


def test_dbmtl_state_survives_state_dict() -> None:
    a = create("dbmtl", 2)
    for i in range(2):
        a.aggregate(random_matrix((2, 5), 1.0, i), losses_for(2))
    b = create("dbmtl", 2)
    b.load_state_dict(a.state_dict())
    g = random_matrix((2, 5), 1.0, 9)
    assert torch.equal(a.aggregate(g, losses_for(2)), b.aggregate(g, losses_for(2)))


# ---------------------------------------------------------------- GradDrop
def test_graddrop_keeps_everything_when_signs_agree() -> None:
    grads = random_matrix((3, 8), 1.0, 4).abs()
    assert torch.allclose(create("graddrop", 3).aggregate(grads, losses_for(3)), grads.sum(0))


def test_graddrop_keeps_one_sign_per_coordinate() -> None:
    grads = random_matrix((4, 50), 1.0, 6)
    update = create("graddrop", 4, seed=0).aggregate(grads, losses_for(4))
    for k in range(50):
        pos, neg = grads[:, k].clamp(min=0).sum(), grads[:, k].clamp(max=0).sum()
        assert torch.isclose(update[k], pos) or torch.isclose(update[k], neg) or update[k] == 0


def test_graddrop_with_full_leak_is_the_sum() -> None:
    grads = random_matrix((3, 8), 1.0, 5)
    assert torch.allclose(create("graddrop", 3, leak=1.0).aggregate(grads, losses_for(3)), grads.sum(0))


# ---------------------------------------------------------------- permutation invariance
@pytest.mark.parametrize("name", ["ew", "mgda", "cagrad", "imtl", "alignedmtl", "dbmtl", "nashmtl"])
@pytest.mark.parametrize("seed", range(2))
def test_permuting_tasks_does_not_change_the_update(name: str, seed: int) -> None:
    grads = random_matrix((4, 9), 1.0, 50 + seed)
    perm = torch.tensor([2, 0, 3, 1])
    losses = losses_for(4)
    a = create(name, 4).aggregate(grads, losses)
    b = create(name, 4).aggregate(grads[perm], losses[perm])
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.norm()))
