"""Mixed precision (engine.precision + GradDriver): bf16 autocast, fp32 task gradients for every
balancer, and fp16 loss scaling whose unscaling is exact.

Tolerance of bf16 vs fp32: under CPU autocast every Linear rounds its input and weight to
bfloat16 (8 significant bits: relative error up to 2^-9 ~ 2e-3 each) and accumulates in fp32. The
tiny model has two Linear layers before each head's Linear, so a loss (a mean of squared errors)
could carry a relative error of a few times 2e-3 per forward pass in the worst case; the mean over
32 squared errors averages independent roundings down, and 3 SGD steps on gradients with the same
error compound it a little: we allow 1e-2 relative (measured: at most 7.2e-4 over the 13
methods). The test also requires the two runs to differ, which proves autocast was on.

GradScaler: S is a power of two (2^16), so scaling the losses by S and dividing the gradients by
S is exact in floating point (no overflow here): with a scaler, ``.grad / S`` equals the
gradients of the run without one bit for bit. ``torch.amp.GradScaler("cpu")`` runs that path on
the CPU (``Precision.create`` offers fp16 on CUDA only).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tiny_models import TASKS, TinyMultiTask
from tokenmtl.balancing import available, create
from tokenmtl.engine.grad_driver import GradDriver
from tokenmtl.engine.precision import Precision

BF16_RTOL = 1e-2


def batch(seed: int, size: int = 16) -> tuple[Tensor, dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 6, generator=gen)
    return x, {t: torch.randn(size, 2, generator=gen) for t in TASKS}


def losses_of(
    model: TinyMultiTask, x: Tensor, y: dict[str, Tensor], scale: dict[str, float] | None = None
) -> dict[str, Tensor]:
    out = model(x)
    return {t: (scale or {}).get(t, 1.0) * ((out[t].float() - y[t]) ** 2).mean() for t in TASKS}


def train(name: str, precision: Precision, steps: int = 3) -> list[list[float]]:
    """`steps` SGD steps of method `name`; the task losses seen at every step."""
    model = TinyMultiTask(hidden=16)
    balancer = create(name, len(TASKS), **({"seed": 0} if name in ("pcgrad", "graddrop") else {}))
    driver = GradDriver(model, balancer, grad_scaler=precision.scaler)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(balancer.parameters()), lr=0.05)
    seen = []
    for step in range(steps):
        x, y = batch(step)
        with precision.autocast():
            losses = losses_of(model, x, y)
        seen.append([float(losses[t].detach()) for t in TASKS])
        optimizer.zero_grad()
        driver.backward(losses)
        precision.step(optimizer)
        if driver.needs_reevaluation:
            with torch.no_grad(), precision.autocast():
                driver.after_step(losses_of(model, x, y))
    return seen


def test_precision_names_and_devices_are_checked():
    with pytest.raises(ValueError, match=r"train.precision must be one of fp32, bf16, fp16, got 'half'"):
        Precision.create("half", "cpu")
    with pytest.raises(ValueError, match=r"fp16 needs a CUDA device .* device is 'cpu': use bf16 or fp32"):
        Precision.create("fp16", "cpu")
    assert Precision.create("fp32", "cpu").scaler is None and Precision.create("bf16", "cpu").scaler is None


def test_bf16_autocast_runs_linear_layers_in_bfloat16_and_fp32_does_not():
    layer, x = nn.Linear(4, 3), torch.randn(2, 4)
    with Precision.create("bf16", "cpu").autocast():
        assert layer(x).dtype == torch.bfloat16
    with Precision.create("fp32", "cpu").autocast():
        assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("name", available())
def test_every_method_trains_under_bf16_autocast_close_to_fp32(name):
    full = torch.tensor(train(name, Precision.create("fp32", "cpu")))
    half = torch.tensor(train(name, Precision.create("bf16", "cpu")))
    assert torch.isfinite(half).all()
    assert not torch.equal(half, full)  # autocast was on
    torch.testing.assert_close(half, full, rtol=BF16_RTOL, atol=1e-4)


@pytest.mark.parametrize("name", ["mgda", "dbmtl", "nashmtl", "pcgrad"])
def test_half_precision_task_gradients_reach_the_balancer_in_float32(name, monkeypatch):
    model = TinyMultiTask(hidden=16).to(torch.bfloat16)
    balancer = create(name, len(TASKS))
    seen: list[torch.dtype] = []
    original = type(balancer)._balance

    def spy(self, grads, losses):
        seen.append(grads.dtype)
        seen.append(losses.dtype)
        return original(self, grads, losses)

    monkeypatch.setattr(type(balancer), "_balance", spy)
    x, y = batch(0)
    result = GradDriver(model, balancer).backward(losses_of(model, x.bfloat16(), y))
    assert seen == [torch.float32, torch.float32]
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())
    assert result.task_weights is not None and set(result.task_weights) == set(TASKS)


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "name, options",
    [
        ("dbmtl", {}),
        ("mgda", {}),
        ("nashmtl", {}),
        ("pcgrad", {"seed": 0}),
        ("imtl", {"loss_scale": True}),
        ("cagrad", {}),
        ("ew", {}),
        ("uw", {}),
        ("famo", {"max_norm": 1e-3}),
    ],
)
def test_grad_scaler_gives_the_unscaled_run_times_s_bit_for_bit(name, options):
    """Every method sees the true gradients: .grad is exactly S times the unscaled run's."""
    grads = {}
    for scaled in (False, True):
        model = TinyMultiTask(hidden=16)
        balancer = create(name, len(TASKS), **options)
        scaler = torch.amp.GradScaler("cpu") if scaled else None
        driver = GradDriver(model, balancer, grad_scaler=scaler)
        for step in range(2):  # DB-MTL's EMA and Nash-MTL's warm start carry state
            model.zero_grad()
            x, y = batch(step)
            result = driver.backward(losses_of(model, x, y))
        assert not result.skipped
        grads[scaled] = _grads(model)
        if scaled:
            scale = scaler.get_scale()
            assert scale == 2.0**16
    for key, value in grads[False].items():
        assert torch.equal(grads[True][key] / scale, value), key
    if name == "famo":  # the clip acted on the true gradient norm
        shared = torch.cat([grads[False][k].reshape(-1) for k in grads[False] if k.startswith("encoder")])
        assert float(torch.linalg.vector_norm(shared)) == pytest.approx(1e-3, rel=1e-4)


def test_grad_scaler_step_applies_the_same_update_as_fp32():
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu")):
        model = TinyMultiTask(hidden=16)
        driver = GradDriver(model, create("dbmtl", len(TASKS)), grad_scaler=scaler)
        precision = Precision("fp16-on-cpu" if scaler else "fp32", "cpu", torch.float32, scaler)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = batch(0)
        driver.backward(losses_of(model, x, y))
        assert precision.step(optimizer, model.parameters(), max_norm=0.5)
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for key, value in results[0].items():
        assert torch.equal(results[1][key], value), key


def test_non_finite_scaled_gradients_skip_the_step_and_the_balancer_state():
    model = TinyMultiTask(hidden=16)
    balancer = create("dbmtl", len(TASKS))
    scaler = torch.amp.GradScaler("cpu")
    precision = Precision("fp16-on-cpu", "cpu", torch.float32, scaler)
    driver = GradDriver(model, balancer, grad_scaler=scaler)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch(0)
    optimizer.zero_grad()
    assert not driver.backward(losses_of(model, x, y)).skipped
    assert precision.step(optimizer)
    buffer, params = balancer.buffer.clone(), {n: p.detach().clone() for n, p in model.named_parameters()}
    # a finite loss of 1e36 times S = 2^16 overflows float32: its gradients are inf
    optimizer.zero_grad()
    result = driver.backward(losses_of(model, *batch(1), scale={"seg": 1e36}))
    assert result.skipped and result.task_weights is None
    assert balancer.step == 1 and torch.equal(balancer.buffer, buffer)  # no EMA update
    assert not precision.step(optimizer)  # the scaler skipped the step ...
    assert scaler.get_scale() == 2.0**15  # ... and lowered the scale
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), params[n]), n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 + GradScaler needs CUDA")
@pytest.mark.parametrize("name", ["ew", "dbmtl", "mgda", "famo"])
def test_fp16_with_grad_scaler_on_cuda_trains_close_to_fp32(name):
    """fp16 has 11 significant bits (2^-12 ~ 2.4e-4 per rounding): within 1e-2 after 3 steps."""

    def run(precision_name: str) -> Tensor:
        precision = Precision.create(precision_name, "cuda")
        model = TinyMultiTask(hidden=16).cuda()
        balancer = create(name, len(TASKS))
        driver = GradDriver(model, balancer, grad_scaler=precision.scaler)
        optimizer = torch.optim.SGD(list(model.parameters()) + list(balancer.parameters()), lr=0.05)
        seen = []
        for step in range(3):
            x, y = batch(step)
            x, y = x.cuda(), {t: v.cuda() for t, v in y.items()}
            with precision.autocast():
                losses = losses_of(model, x, y)
            seen.append(torch.stack([losses[t] for t in TASKS]).float().cpu())
            optimizer.zero_grad()
            driver.backward(losses)
            precision.step(optimizer)
            if driver.needs_reevaluation:
                with torch.no_grad(), precision.autocast():
                    driver.after_step(losses_of(model, x, y))
        return torch.stack(seen)

    half, full = run("fp16"), run("fp32")
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, full, rtol=1e-2, atol=1e-4)
