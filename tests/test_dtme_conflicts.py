"""Token-level gradient conflicts (docs/method.md, "Conflicts"), the analysis pass over a model, the plots."""

import itertools

import pytest
import timm
import torch
import torch.nn.functional as F

from tokenmtl.dtme import (
    ConflictReport,
    TokenSpace,
    analyze,
    conflict_counts,
    conflict_rates,
    make_plan,
    split_token_space,
)
from tokenmtl.dtme.analysis import _task_gradients
from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter

TASKS = {"seg": 3, "depth": 1, "normals": 2}


def random_space(dim, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return TokenSpace(range_basis=q[:, :k], null_basis=q[:, k:], eigenvalues=torch.linspace(1, 0, dim).double(), k=k)


def brute_force(grads, space):
    """Pairwise Python loop over tokens and task pairs."""
    pr, pn = space.range_basis @ space.range_basis.T, space.null_basis @ space.null_basis.T
    t, m, _ = grads.shape
    rc = nc = total = 0
    rcos, ncos = [], []
    for tok in range(m):
        for i, j in itertools.combinations(range(t), 2):
            gi, gj = grads[i, tok], grads[j, tok]
            ri, rj, ni, nj = pr @ gi, pr @ gj, pn @ gi, pn @ gj
            rc += float(ri @ rj) < 0
            nc += float(ni @ nj) < 0
            rcos.append(float(F.cosine_similarity(ri, rj, dim=0)))
            ncos.append(float(F.cosine_similarity(ni, nj, dim=0)))
            total += 1
    return rc / total, nc / total, sum(rcos) / total, sum(ncos) / total


@pytest.mark.parametrize("t, m, d, k", [(2, 5, 4, 2), (3, 17, 6, 1), (4, 9, 8, 5), (5, 3, 3, 3)])
def test_conflict_rates_equal_brute_force_pairwise_loop(t, m, d, k):
    grads = torch.randn(t, m, d, generator=torch.Generator().manual_seed(t * 100 + m), dtype=torch.float64)
    space = random_space(d, k, seed=d)
    expected = brute_force(grads, space)
    counts = conflict_counts(grads, space)
    assert counts.pairs == m * t * (t - 1) / 2
    assert conflict_rates(grads, space) == pytest.approx(expected[:2], abs=1e-12)
    if k < d:
        assert (counts.range_mean_cosine, counts.null_mean_cosine) == pytest.approx(expected[2:], abs=1e-9)
    else:  # empty null space: no null conflicts, and no defined null cosine
        assert counts.null_rate == 0.0 and counts.null_cos_count == 0


def test_float32_gradients_give_the_same_rates_as_float64():
    grads = torch.randn(3, 200, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    space = random_space(16, 6)
    assert conflict_rates(grads.float(), space) == pytest.approx(conflict_rates(grads, space), abs=0.01)


def test_null_space_conflict_only_counts_null():
    space = random_space(8, 3, seed=1)
    g = torch.Generator().manual_seed(5)
    coeffs = torch.randn(3, 50, 5, generator=g, dtype=torch.float64)
    grads = coeffs @ space.null_basis.T  # every task gradient lies in the null space
    range_rate, null_rate = conflict_rates(grads, space)
    assert range_rate == 0.0
    assert 0.3 < null_rate < 0.7
    assert conflict_rates(grads.float(), space)[0] == 0.0  # round-off is not a conflict


def test_range_space_conflict_only_counts_range():
    space = random_space(8, 3, seed=2)
    coeffs = torch.randn(3, 50, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grads = coeffs @ space.range_basis.T
    range_rate, null_rate = conflict_rates(grads, space)
    assert null_rate == 0.0 and 0.3 < range_rate < 0.7


def test_opposite_and_aligned_gradients_give_rates_one_and_zero():
    space = random_space(6, 2)
    g = torch.randn(1, 10, 6, dtype=torch.float64)
    assert conflict_rates(torch.cat([g, -g]), space) == (1.0, 1.0)
    assert conflict_rates(torch.cat([g, 2 * g]), space) == (0.0, 0.0)
    assert conflict_rates(torch.zeros(2, 4, 6), space) == (0.0, 0.0)  # zero inner product: no conflict


def planted_gradients(space, null_share, tasks=3, tokens=2000, seed=1):
    """Task gradients with unit range parts and null parts of norm `null_share`, and their true conflicts."""
    g = torch.Generator().manual_seed(seed)
    coeff_r = torch.randn(tasks, tokens, space.k, generator=g, dtype=torch.float64)
    coeff_n = torch.randn(tasks, tokens, space.dim - space.k, generator=g, dtype=torch.float64)
    coeff_r = coeff_r / coeff_r.norm(dim=-1, keepdim=True)
    coeff_n = null_share * coeff_n / coeff_n.norm(dim=-1, keepdim=True)
    grads = coeff_r @ space.range_basis.T + coeff_n @ space.null_basis.T
    i, j = torch.triu_indices(tasks, tasks, 1)
    true_rates = tuple(float(((c[i] * c[j]).sum(-1) < 0).double().mean()) for c in (coeff_r, coeff_n))
    return grads, coeff_r @ space.range_basis.T, true_rates


def test_null_space_carrying_1e_4_of_the_gradient_has_its_conflicts_counted():
    space = random_space(64, 48, seed=3)
    grads, _, (true_range, true_null) = planted_gradients(space, null_share=1e-4)
    assert 0.4 < true_null < 0.6
    # float64 gradients: exactly the planted conflicts
    assert conflict_rates(grads, space) == (true_range, true_null)
    # float32 gradients (as autograd gives them): only cosines below the float32 resolution of a
    # 1e-4 share (|cos| of order 1e-3) can be lost; a guard on the full norms counted none of them
    range32, null32 = conflict_rates(grads.float(), space)
    assert range32 == true_range
    assert null32 == pytest.approx(true_null, abs=0.005)
    counts = conflict_counts(grads.float(), space)
    assert counts.null_cos_count == counts.pairs  # every null projection is above round-off


def test_pure_range_gradient_has_no_null_conflict_from_round_off():
    space = random_space(64, 48, seed=3)
    _, pure_range, (true_range, _) = planted_gradients(space, null_share=1e-4)
    projected_null = pure_range @ space.null_basis
    assert projected_null.abs().max() > 0  # the float64 rotation leaves round-off in the null space
    for dtype in (torch.float64, torch.float32):
        counts = conflict_counts(pure_range.to(dtype), space)
        assert counts.null_rate == 0.0 and counts.null_cos_count == 0
        assert counts.range_rate == true_range


def test_exactly_orthogonal_task_gradients_do_not_conflict():
    space = random_space(16, 6, seed=4)
    g = torch.Generator().manual_seed(7)
    a = torch.randn(1, 300, 6, generator=g, dtype=torch.float64) @ space.range_basis.T
    b = torch.randn(1, 300, 10, generator=g, dtype=torch.float64) @ space.null_basis.T
    for dtype in (torch.float64, torch.float32):  # a lives in the range space, b in the null space
        assert conflict_rates(torch.cat([a, b]).to(dtype), space) == (0.0, 0.0)


def test_conflicts_are_counted_the_same_in_token_chunks(monkeypatch):
    import tokenmtl.dtme.conflicts as conflicts

    grads = torch.randn(3, 101, 8, generator=torch.Generator().manual_seed(9))
    space = random_space(8, 3)
    whole = conflict_counts(grads, space).values
    monkeypatch.setattr(conflicts, "_CHUNK_VALUES", 3 * 8 * 7)  # chunks of 7 tokens
    torch.testing.assert_close(conflict_counts(grads, space).values, whole, rtol=1e-12, atol=1e-9)


def test_conflict_input_errors_are_clear():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        conflict_rates(torch.randn(1, 3, 4), random_space(4, 2))
    with pytest.raises(ValueError, match="D=5"):
        conflict_rates(torch.randn(2, 3, 5), random_space(4, 2))


# --- analysis on a small timm ViT -------------------------------------------------------------


def tiny_model(seed=0, depth=3):
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=16,
        patch_size=4,
        depth=depth,
        embed_dim=16,
        num_heads=2,
    )
    return MultiTaskModel(TimmViTAdapter(vit), {t: DenseHead(16, c, 8) for t, c in TASKS.items()})


def tiny_batches(n=3, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(b, 3, 16, 16, generator=g),
            **{t: torch.randn(b, c, 16, 16, generator=g) for t, c in TASKS.items()},
        }
        for _ in range(n)
    ]


def loss_fn(outputs, batch):
    return {t: F.mse_loss(outputs[t], batch[t]) for t in outputs}


def batch_statistics_copy(model):
    """Reference of the analysis mode: a copy in eval mode whose BatchNorms use batch statistics."""
    import copy

    reference = copy.deepcopy(model).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.train()
    return reference


def per_task_block_input_grads(model, batch):
    """Reference: a separate forward and backward pass per task, block inputs captured by hooks."""
    grads = []
    for task in model.tasks:
        captured = []

        def keep(module, args):
            args[0].retain_grad()
            captured.append(args[0])

        hooks = [blk.register_forward_pre_hook(keep) for blk in model.encoder.blocks]
        out = model(batch["image"])
        for h in hooks:
            h.remove()
        loss_fn(out, batch)[task].backward()
        grads.append([x.grad.clone() for x in captured])
        model.zero_grad()
    return [torch.stack([grads[t][l] for t in range(len(model.tasks))]) for l in range(len(model.encoder.blocks))]


@pytest.mark.parametrize("batched", [True, False])
def test_analysis_gradients_equal_separate_per_task_backward_passes(batched):
    from tokenmtl.dtme.analysis import _CaptureTrunk

    model, batch = tiny_model(), tiny_batches(1)[0]
    model.eval()
    reference = per_task_block_input_grads(model, batch)
    capture = _CaptureTrunk(range(3))
    model.trunk, shared = capture, model.trunk
    out = model(batch["image"])
    losses = torch.stack([loss_fn(out, batch)[t] for t in model.tasks])
    grads = _task_gradients(losses, capture.captured, capture.output, batched=batched)
    model.trunk = shared
    for got, want in zip(grads, reference):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_analyze_equals_manual_covariance_split_and_brute_force_conflicts():
    model, batches = tiny_model(), tiny_batches(3)
    model.train()
    report = analyze(model, batches, loss_fn, num_batches=2, r=10.0, progress=False)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    # reference: dense covariance of block inputs over the first 2 batches, brute-force conflicts,
    # with the heads' BatchNorms on batch statistics (the analysis mode)
    model = batch_statistics_copy(model)
    inputs = {l: [] for l in range(3)}
    hooks = [
        blk.register_forward_pre_hook(lambda mod, args, l=l: inputs[l].append(args[0].detach()) and None)
        for l, blk in enumerate(model.encoder.blocks)
    ]
    with torch.no_grad():
        for b in batches[:2]:
            model(b["image"])
    for h in hooks:
        h.remove()
    grads = [per_task_block_input_grads(model, b) for b in batches[:2]]
    for l in range(3):
        x = torch.cat(inputs[l]).reshape(-1, 16).double()
        space = split_token_space(x.T @ x / x.shape[0], r=10.0)
        g = torch.cat([grads[0][l], grads[1][l]], dim=1).reshape(3, -1, 16).double()
        rr, nr, rcos, ncos = brute_force(g, space)
        lr = report.layer(l)
        assert lr.k == space.k and lr.dim == 16
        assert lr.pairs_counted == 2 * 4 * 17 * 3  # batches * B * tokens (16 patches + cls) * pairs
        assert lr.range_conflict_rate == pytest.approx(rr, abs=2e-3)
        assert lr.null_conflict_rate == pytest.approx(nr, abs=2e-3)
        assert lr.range_mean_cosine == pytest.approx(rcos, abs=1e-3)
        assert lr.eigenvalues == pytest.approx(space.eigenvalues.tolist(), rel=1e-6, abs=1e-9)
    assert report.num_batches == 2 and report.num_tokens == 2 * 4 * 17
    assert set(report.timings) >= {"covariance_s", "eigh_s", "conflicts_s", "conflicts_per_batch_s"}


def test_analyze_options_layers_prefix_and_reduce():
    model, batches = tiny_model(), tiny_batches(2)
    reduced = []
    report = analyze(
        model,
        batches,
        loss_fn,
        layers=[1, 2],
        exclude_prefix=True,
        progress=False,
        reduce=lambda t: reduced.append(t.clone()) or t.mul_(2),
    )
    assert [lr.layer for lr in report.layers] == [1, 2]
    assert report.layer(1).pairs_counted == 2 * (2 * 4 * 16 * 3)  # prefix excluded, sums doubled by reduce
    # batch-count agreement (2), covariance sum and count per layer, then counts per layer
    assert len(reduced) == 2 + 2 * 2 + 2
    with pytest.raises(ValueError, match="block indices in 0..2"):
        analyze(model, batches, loss_fn, layers=[3], progress=False)
    with pytest.raises(TypeError, match="re-iterable"):
        analyze(model, iter(batches), loss_fn, progress=False)


def test_report_json_round_trip(tmp_path):
    report = analyze(tiny_model(), tiny_batches(1), loss_fn, progress=False)
    path = tmp_path / "conflicts.json"
    report.to_json(path)
    again = ConflictReport.from_json(path)
    assert again == report
    assert ConflictReport.from_json(report.to_json()) == report


def test_plots_are_written(tmp_path):
    from tokenmtl.report.dtme_plots import plot_conflicts, plot_spectra

    report = analyze(tiny_model(), tiny_batches(1), loss_fn, progress=False)
    plan = make_plan(report, ratio=0.34)
    a = plot_conflicts(report, plan, tmp_path / "conflicts.png")
    b = plot_spectra(report, tmp_path / "spectra.png")
    assert a.stat().st_size > 5000 and b.stat().st_size > 5000
