"""engine.grad_driver.GradDriver on a tiny stand-in of the MultiTaskModel contract."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from tiny_models import TASKS, TinyMultiTask
from tokenmtl.balancing import available, create
from tokenmtl.engine.grad_driver import GradDriver


def batch(seed: int = 1, size: int = 12) -> tuple[Tensor, dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 6, generator=gen)
    return x, {t: torch.randn(size, 2, generator=gen) for t in TASKS}


def task_losses(
    model: TinyMultiTask, x: Tensor, y: dict[str, Tensor], scale: dict[str, float] | None = None
) -> dict[str, Tensor]:
    out = model(x)
    scale = scale or {}
    return {t: scale.get(t, 1.0) * ((out[t] - y[t]) ** 2).mean() for t in model.tasks}


def grads_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def run(name: str, grad_mode: str = "loop", steps: int = 1, seed: int = 0, **options: object) -> dict[str, Tensor]:
    model = TinyMultiTask(seed=seed)
    driver = GradDriver(model, create(name, len(TASKS), **options), grad_mode=grad_mode)
    for step in range(steps):
        model.zero_grad()
        x, y = batch(step)
        driver.backward(task_losses(model, x, y))
    return grads_of(model)


@pytest.mark.parametrize("name", available())
def test_every_method_sets_finite_grads_on_every_parameter(name: str) -> None:
    model = TinyMultiTask()
    driver = GradDriver(model, create(name, len(TASKS)))
    x, y = batch()
    info = driver.backward(task_losses(model, x, y))
    if driver.needs_reevaluation:
        with torch.no_grad():
            driver.after_step(task_losses(model, x, y))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert info.mode in ("single", "gradients", "shortcut")


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "imtl", "dbmtl", "alignedmtl", "cagrad"])
def test_batched_and_looped_task_gradients_give_identical_grads(name: str) -> None:
    torch.manual_seed(0)
    looped = run(name, "loop", steps=2)
    torch.manual_seed(0)
    batched = run(name, "batched", steps=2)
    for key in looped:
        assert torch.allclose(looped[key], batched[key], rtol=1e-5, atol=1e-7), key


def test_task_gradients_match_per_task_autograd() -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses = task_losses(model, x, y)
    stack = torch.stack([losses[t] for t in TASKS])
    params = model.shared_parameters()
    for mode in ("loop", "batched"):
        driver = GradDriver(model, create("mgda", 3), grad_mode=mode)
        got = driver.task_gradients(stack, params, retain_graph=True)
        for t in range(3):
            expected = torch.autograd.grad(stack[t], params, retain_graph=True)
            for g, e in zip(got, expected):
                assert torch.allclose(g[t], e, atol=1e-7)


@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "imtl", "alignedmtl", "graddrop"])
def test_heads_get_only_their_own_unweighted_gradient(name: str) -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses = task_losses(model, x, y)
    expected = {t: torch.autograd.grad(losses[t], model.task_parameters(t), retain_graph=True) for t in TASKS}
    GradDriver(model, create(name, 3)).backward(losses)
    for t in TASKS:
        for p, e in zip(model.task_parameters(t), expected[t]):
            assert torch.allclose(p.grad, e, atol=1e-7)


@pytest.mark.parametrize("name", ["mgda", "nashmtl"])
def test_authors_weighted_heads_get_the_weight_times_their_gradient(name: str) -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses = task_losses(model, x, y)
    expected = {t: torch.autograd.grad(losses[t], model.task_parameters(t), retain_graph=True) for t in TASKS}
    balancer = create(name, 3)
    GradDriver(model, balancer).backward(losses)
    for i, t in enumerate(TASKS):
        for p, e in zip(model.task_parameters(t), expected[t]):
            assert torch.allclose(p.grad, balancer.head_weights[i] * e, atol=1e-7)


def test_mgda_weight_heads_false_is_libmtls_convention() -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses = task_losses(model, x, y)
    expected = torch.autograd.grad(losses["seg"], model.task_parameters("seg"), retain_graph=True)
    GradDriver(model, create("mgda", 3, weight_heads=False)).backward(losses)
    assert all(torch.allclose(p.grad, e) for p, e in zip(model.task_parameters("seg"), expected))


def test_shared_grads_are_the_aggregate_of_the_task_gradients() -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses = task_losses(model, x, y)
    params = model.shared_parameters()
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], params, retain_graph=True)]) for t in TASKS
    ]
    matrix = torch.stack(rows)
    stack = torch.stack([losses[t] for t in TASKS]).detach()
    expected = create("imtl", 3).aggregate(matrix, stack)
    GradDriver(model, create("imtl", 3)).backward(losses)
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in params]), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["ew", "uw", "dwa", "famo"])
def test_loss_methods_equal_one_backward_of_the_weighted_sum(name: str) -> None:
    x, y = batch()
    model = TinyMultiTask()
    balancer = create(name, 3, **({"max_norm": 0.0} if name == "famo" else {}))
    info = GradDriver(model, balancer).backward(task_losses(model, x, y))
    got = grads_of(model)
    reference = TinyMultiTask()
    losses = task_losses(reference, x, y)
    weights = balancer.weights
    (weights * torch.stack([losses[t] for t in TASKS])).sum().backward()
    for n, p in reference.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-6), n
    assert info.mode == "single"


def test_famo_clips_the_shared_gradient_to_max_norm() -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses = task_losses(model, x, y, scale={"seg": 1e4, "depth": 1e4, "edge": 1e4})
    GradDriver(model, create("famo", 3, max_norm=1e-3)).backward(losses)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]))
    assert float(norm) <= 1e-3 * (1 + 1e-4)


def test_famo_driver_reevaluates_and_updates_its_logits() -> None:
    model = TinyMultiTask()
    balancer = create("famo", 3)
    driver = GradDriver(model, balancer)
    assert driver.needs_reevaluation
    x, y = batch()
    driver.backward(task_losses(model, x, y))
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
        driver.after_step(task_losses(model, x, y))
    assert not torch.equal(balancer.logits, torch.zeros(3))


def test_dbmtl_update_is_unchanged_when_a_loss_is_multiplied_by_a_constant() -> None:
    x, y = batch()
    results = []
    for scale in ({}, {"depth": 1000.0}, {"seg": 1e-3, "edge": 7.0}):
        model = TinyMultiTask()
        driver = GradDriver(model, create("dbmtl", 3))
        for step in range(2):
            model.zero_grad()
            xs, ys = batch(step)
            driver.backward(task_losses(model, xs, ys, scale))
        results.append(grads_of(model))
    for other in results[1:]:
        for n in results[0]:
            assert torch.allclose(results[0][n], other[n], rtol=1e-4, atol=1e-7), n


def test_dbmtl_heads_get_the_gradient_of_the_log_loss() -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses = task_losses(model, x, y)
    expected = torch.autograd.grad(torch.log(losses["edge"] + 1e-8), model.task_parameters("edge"), retain_graph=True)
    GradDriver(model, create("dbmtl", 3)).backward(losses)
    assert all(torch.allclose(p.grad, e, atol=1e-7) for p, e in zip(model.task_parameters("edge"), expected))


def test_imtl_loss_scales_get_their_gradient() -> None:
    model = TinyMultiTask()
    balancer = create("imtl", 3, loss_scale=True)
    x, y = batch()
    losses = task_losses(model, x, y)
    values = torch.stack([losses[t] for t in TASKS]).detach()
    GradDriver(model, balancer).backward(losses)
    # d/ds (exp(s) L - s) = exp(s) L - 1 at s = 0
    assert torch.allclose(balancer.log_scale.grad, values - 1, atol=1e-6)


def test_nashmtl_shortcut_step_reuses_weights_with_one_backward() -> None:
    model = TinyMultiTask()
    balancer = create("nashmtl", 3, update_weights_every=2, max_norm=0.0)
    driver = GradDriver(model, balancer)
    x, y = batch(0)
    driver.backward(task_losses(model, x, y))
    alpha = balancer.weights.clone()
    model.zero_grad()
    x, y = batch(1)
    losses = task_losses(model, x, y)
    params = model.shared_parameters()
    rows = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], params, retain_graph=True)]) for t in TASKS]
    )
    info = driver.backward(losses)
    assert info.mode == "shortcut"
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in params]), alpha @ rows, atol=1e-6)
    assert torch.equal(balancer.weights, alpha)


def _mean_with(recorded: list[Tensor]) -> Callable[[Tensor], Tensor]:
    def hook(t: Tensor) -> Tensor:
        return (t + recorded.pop(0)) / 2

    return hook


def _recorder(recorded: list[Tensor]) -> Callable[[Tensor], Tensor]:
    def hook(t: Tensor) -> Tensor:
        recorded.append(t.clone())
        return t

    return hook


@pytest.mark.parametrize("name", ["mgda", "dbmtl", "pcgrad", "dwa", "uw"])
def test_all_reduce_hook_gives_the_single_process_update_of_the_global_batch(name: str) -> None:
    x, y = batch(size=16)
    halves = [(x[:8], {t: v[:8] for t, v in y.items()}), (x[8:], {t: v[8:] for t, v in y.items()})]
    # process 1 records what it would send; process 0 averages with it
    recorded: list[Tensor] = []
    other = TinyMultiTask()
    torch.manual_seed(0)
    GradDriver(
        other, create(name, 3, **({"window": 1} if name == "dwa" else {})), all_reduce=_recorder(recorded)
    ).backward(task_losses(other, *halves[1]))
    rank0 = TinyMultiTask()
    torch.manual_seed(0)
    balancer = create(name, 3, **({"window": 1} if name == "dwa" else {}))
    GradDriver(rank0, balancer, all_reduce=_mean_with(recorded)).backward(task_losses(rank0, *halves[0]))
    single = TinyMultiTask()
    torch.manual_seed(0)
    GradDriver(single, create(name, 3, **({"window": 1} if name == "dwa" else {}))).backward(task_losses(single, x, y))
    # loss methods: the driver itself averages the parameter gradients (no DDP wrapper)
    for (n, p), q in zip(rank0.named_parameters(), single.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), n


def test_driver_rejects_wrong_losses_and_orphan_parameters() -> None:
    model = TinyMultiTask()
    driver = GradDriver(model, create("mgda", 3))
    x, y = batch()
    losses = task_losses(model, x, y)
    del losses["edge"]
    with pytest.raises(ValueError, match="one entry per task"):
        driver.backward(losses)
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="neither shared nor task-specific"):
        GradDriver(model, create("mgda", 3))
    with pytest.raises(ValueError, match="made for 2 tasks"):
        GradDriver(TinyMultiTask(), create("ew", 2))
    with pytest.raises(ValueError, match="grad_mode"):
        GradDriver(TinyMultiTask(), create("ew", 3), grad_mode="vmap")


def test_grads_accumulate_like_backward() -> None:
    model = TinyMultiTask()
    driver = GradDriver(model, create("imtl", 3))
    x, y = batch()
    driver.backward(task_losses(model, x, y))
    once = grads_of(model)
    driver.backward(task_losses(model, x, y))
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, 2 * once[n], atol=1e-6)
