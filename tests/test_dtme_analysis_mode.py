"""The analysis runs in analysis mode (batch statistics, no dropout) on the same batches in both passes.

docs/method.md, "Analysis mode": the heads' BatchNorms use the statistics of the batch (as in
training, not the running statistics, which are still the initial ones at `expand_at: 0`),
dropout and drop path are off, and the model leaves the analysis exactly as it entered it.
"""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from tokenmtl.dtme import analyze, split_token_space
from tokenmtl.dtme.analysis import analysis_mode, common_batch_count, fixed_order
from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter

TASKS = {"seg": 3, "depth": 1}
DIM = 16


def model_with_batchnorm_and_dropout(seed=0):
    """A 3-block ViT with heavy dropout and drop path, DenseHeads with BatchNorm, trained-looking running stats."""
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=16,
        patch_size=4,
        depth=3,
        embed_dim=DIM,
        num_heads=2,
        proj_drop_rate=0.5,
        attn_drop_rate=0.5,
        drop_path_rate=0.5,
    )
    model = MultiTaskModel(TimmViTAdapter(vit), {t: DenseHead(DIM, c, 8) for t, c in TASKS.items()})
    g = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # running statistics far from any batch's
            module.running_mean.copy_(3 * torch.randn(module.num_features, generator=g))
            module.running_var.copy_(torch.rand(module.num_features, generator=g) * 0.1 + 0.01)
            module.num_batches_tracked.fill_(7)
    return model


def samples(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(3, 16, 16, generator=g),
            **{t: torch.randn(c, 16, 16, generator=g) for t, c in TASKS.items()},
        }
        for _ in range(n)
    ]


def batches(n=2, b=4, seed=0):
    items = samples(n * b, seed)
    return [torch.utils.data.default_collate(items[k * b : (k + 1) * b]) for k in range(n)]


def loss_fn(outputs, batch):
    return {t: F.mse_loss(outputs[t], batch[t]) for t in outputs}


def modes(model):
    return {name: module.training for name, module in model.named_modules()}


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def reference_copy(model, batch_statistics):
    """Independent of analysis_mode: a copy in eval mode, BatchNorms switched to batch statistics or not."""
    ref = copy.deepcopy(model).eval()
    for module in ref.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.train(batch_statistics)
    return ref


def reference_rates(model, data, r=10.0):
    """Per layer (range rate, null rate, range mean cosine): dense covariance, per-task backward, brute force."""
    blocks = model.encoder.blocks
    inputs, grads = {l: [] for l in range(len(blocks))}, {l: [] for l in range(len(blocks))}
    for batch in data:
        per_task = []
        for index, task in enumerate(model.tasks):
            captured = []

            def keep(module, args):
                args[0].retain_grad()
                captured.append(args[0])

            hooks = [blk.register_forward_pre_hook(keep) for blk in blocks]
            out = model(batch["image"])
            for h in hooks:
                h.remove()
            loss_fn(out, batch)[task].backward()
            per_task.append([x.grad.detach().reshape(-1, DIM).double() for x in captured])
            if index == 0:
                for l, x in enumerate(captured):
                    inputs[l].append(x.detach().reshape(-1, DIM).double())
            model.zero_grad()
        for l in range(len(blocks)):
            grads[l].append(torch.stack([per_task[t][l] for t in range(len(model.tasks))]))
    rates = {}
    for l in range(len(blocks)):
        x = torch.cat(inputs[l])
        space = split_token_space(x.T @ x / x.shape[0], r=r)
        g = torch.cat(grads[l], dim=1)
        gr, gn = g @ space.range_basis, g @ space.null_basis
        inner_r, inner_n = (gr[0] * gr[1]).sum(-1), (gn[0] * gn[1]).sum(-1)
        cos_r = inner_r / (gr[0].norm(dim=-1) * gr[1].norm(dim=-1))
        rates[l] = (float((inner_r < 0).double().mean()), float((inner_n < 0).double().mean()), float(cos_r.mean()))
    return rates


def rates_of(report):
    return {lr.layer: (lr.range_conflict_rate, lr.null_conflict_rate, lr.range_mean_cosine) for lr in report.layers}


def without_timings(report):
    data = report.to_dict()
    data.pop("timings")
    return data


def test_analysis_mode_uses_batch_statistics_without_dropout_and_restores_everything():
    model = model_with_batchnorm_and_dropout()
    model.train()
    model.heads["depth"].eval()  # a mixed mode must come back as it was
    before_state, before_modes = snapshot(model), modes(model)
    image = batches(1)[0]["image"]
    with analysis_mode(model):
        first, second = model(image), model(image)
        assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert not any(m.training for m in model.modules() if not isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        want = reference_copy(model, batch_statistics=True)(image)
        running = reference_copy(model, batch_statistics=False)(image)
    for task in TASKS:
        assert torch.equal(first[task], second[task])  # no dropout, no drop path
        torch.testing.assert_close(first[task], want[task])  # batch statistics ...
        assert (first[task] - running[task]).abs().max() > 0.1  # ... not the running ones
    assert_same_state(model, before_state)  # running mean/var and num_batches_tracked included
    assert modes(model) == before_modes


def test_analysis_mode_restores_modes_and_statistics_after_an_error():
    model = model_with_batchnorm_and_dropout()
    before_state, before_modes = snapshot(model), modes(model)
    with pytest.raises(RuntimeError, match="inside"):
        with analysis_mode(model):
            model(batches(1)[0]["image"])
            raise RuntimeError("inside")
    assert_same_state(model, before_state)
    assert modes(model) == before_modes


def test_analyze_is_deterministic_equals_batch_statistics_reference_and_leaves_the_model_unchanged():
    model = model_with_batchnorm_and_dropout()
    model.train()
    data = batches(2)
    before_state, before_modes = snapshot(model), modes(model)
    first = analyze(model, data, loss_fn, r=10.0, progress=False)
    second = analyze(model, data, loss_fn, r=10.0, progress=False)
    assert without_timings(first) == without_timings(second)
    assert_same_state(model, before_state)
    assert modes(model) == before_modes
    assert all(p.grad is None for p in model.parameters())

    want = reference_rates(reference_copy(model, batch_statistics=True), data)
    running = reference_rates(reference_copy(model, batch_statistics=False), data)
    got = rates_of(first)
    for layer, (range_rate, null_rate, range_cos) in want.items():
        assert got[layer][0] == pytest.approx(range_rate, abs=1e-9)
        assert got[layer][1] == pytest.approx(null_rate, abs=1e-9)
        assert got[layer][2] == pytest.approx(range_cos, abs=1e-5)
    # the running statistics would have given other gradients (this test can tell the two apart)
    assert max(abs(got[l][2] - running[l][2]) for l in got) > 1e-3


def test_a_shuffling_dataloader_gives_both_passes_the_same_batches():
    data = samples(12)

    def loader():
        return torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))

    fresh = loader()
    first_pass, second_pass = list(fresh), list(fresh)
    assert not torch.equal(first_pass[0]["image"], second_pass[0]["image"])  # the hazard: a new order per pass
    frozen = fixed_order(loader(), num_batches=2)
    order = frozen.batch_sampler  # the index lists drawn once from a fresh loader's sampler
    assert len(order) == 2 and all(len(ids) == 4 for ids in order)
    for a, b in zip(list(frozen), list(frozen)):
        assert torch.equal(a["image"], b["image"])
    model = model_with_batchnorm_and_dropout()
    report = analyze(model, loader(), loss_fn, num_batches=2, r=10.0, progress=False)
    same = [torch.utils.data.default_collate([data[i] for i in ids]) for ids in order]
    expected = analyze(model, same, loss_fn, r=10.0, progress=False)
    assert report.num_batches == 2
    assert without_timings(report) == without_timings(expected)


class ChangingLoader:
    """Re-iterable, but every pass yields new random batches (like random augmentation)."""

    def __init__(self):
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(batches(2, seed=self.passes))


def test_a_loader_that_changes_between_passes_is_an_error():
    with pytest.raises(ValueError, match="different batch 0 in the conflict pass"):
        analyze(model_with_batchnorm_and_dropout(), ChangingLoader(), loss_fn, progress=False)


def other_process(counts):
    """A SUM all-reduce as seen by this process when the other processes analyse `counts` batches."""
    calls = []

    def reduce(t):
        calls.append(t.numel())
        if len(calls) == 1:
            t += sum(counts)
        elif len(calls) == 2:
            for c in counts:
                t[c] += 1
        return t

    return reduce


@pytest.mark.parametrize("mine, others, expected", [(3, [2], 2), (2, [3, 5], 2), (4, [4], 4), (0, [3], 0)])
def test_common_batch_count_is_the_smallest_over_processes(mine, others, expected):
    assert common_batch_count(mine, other_process(others)) == expected


def test_distributed_analysis_runs_the_smallest_batch_count_of_all_processes():
    model = model_with_batchnorm_and_dropout()
    data = batches(3)
    report = analyze(model, data, loss_fn, progress=False, reduce=other_process([2]))
    alone = analyze(model, data[:2], loss_fn, progress=False)
    assert report.num_batches == 2
    assert [lr.pairs_counted for lr in report.layers] == [lr.pairs_counted for lr in alone.layers]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nyud_vit_t", None),
        ("nyud_vit_s", None),
        ("nyud_vit_b", None),
        ("pascal_vit_t", None),
        ("pascal_vit_s", None),
        ("pascal_vit_b", None),
        ("taskonomy_vit_b", 100),
    ],
)
def test_paper_configs_analyse_the_whole_training_set_or_100_taskonomy_batches(name, expected):
    from tokenmtl.config import load_config

    assert load_config(name)["dtme"]["num_batches"] == expected
