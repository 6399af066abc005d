"""Conflict analysis of an expanded model (docs/method.md, "Conflicts in an expanded model"): the
paper's Table 14 question, after training, on the model that TM/TE changed."""

import copy
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tokenmtl.cli import app
from tokenmtl.dtme import ConflictReport, Plan, analyze, conflict_counts, expand, split_token_space
from tokenmtl.dtme.token_space import TokenCovariance
from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter
from tokenmtl.recon import split_layers

TASKS = {"seg": 3, "depth": 1, "normals": 2}
D, B, N, DEPTH = 16, 4, 16, 3  # 16x16 images, 4x4 patches: 16 patch tokens + the class token


def tiny_model(seed=0):
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=16,
        patch_size=4,
        depth=DEPTH,
        embed_dim=D,
        num_heads=2,
    )
    return MultiTaskModel(TimmViTAdapter(vit), {t: DenseHead(D, c, 8) for t, c in TASKS.items()}).double()


def tiny_batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(B, 3, 16, 16, generator=g, dtype=torch.float64),
            **{t: torch.randn(B, c, 16, 16, generator=g, dtype=torch.float64) for t, c in TASKS.items()},
        }
        for _ in range(n)
    ]


def loss_fn(outputs, batch):
    return {t: F.mse_loss(outputs[t], batch[t]) for t in outputs}


def expanded(tm=(), te=(), seed=0):
    model = tiny_model(seed)
    expand(model, Plan(tasks=list(TASKS), tm=list(tm), te=list(te)))
    return model


def perturb_tm(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.trunk.tm.values():
            for t in TASKS:
                module.weight[t].copy_(1 + 0.5 * torch.randn(D, generator=g, dtype=torch.float64))
                module.bias[t].copy_(0.5 * torch.randn(D, generator=g, dtype=torch.float64))


def fields(report):
    return [
        (
            lr.layer,
            lr.k,
            lr.range_conflict_rate,
            lr.null_conflict_rate,
            lr.range_mean_cosine,
            lr.null_mean_cosine,
            lr.pairs_counted,
        )
        for lr in report.layers
    ]


@pytest.mark.parametrize("tm", [[1], [0, 2]])
def test_identity_token_modulation_gives_exactly_the_unexpanded_report(tm):
    batches = tiny_batches()
    before = analyze(tiny_model(), batches, loss_fn, r=10.0, progress=False)
    model = expanded(tm=tm)
    after = analyze(model, batches, loss_fn, r=10.0, progress=False)
    assert after.fork == tm[0] and after.plan["tm"] == tm and before.fork is None and before.plan is None
    assert [lr.streams for lr in after.layers] == [1 if l < tm[0] else 3 for l in range(DEPTH)]
    assert after.num_tokens == before.num_tokens == 2 * B * (N + 1)
    for got, want in zip(fields(after), fields(before)):
        assert got[:2] == want[:2] and got[-1] == want[-1]  # layer, k, pairs counted
        assert got[2:-1] == pytest.approx(want[2:-1], abs=1e-12)  # rates and mean cosines
    for got, want in zip(after.layers, before.layers):
        assert got.eigenvalues == pytest.approx(want.eigenvalues, rel=1e-12, abs=1e-15)
    assert 0 < sum(lr.range_conflict_rate for lr in after.layers)
    assert all(p.grad is None for p in model.parameters())


def test_perturbed_token_modulation_changes_the_report():
    batches = tiny_batches()
    model = expanded(tm=[1])
    identity = analyze(model, batches, loss_fn, r=10.0, progress=False)
    perturb_tm(model)
    moved = analyze(model, batches, loss_fn, r=10.0, progress=False)
    changed = [
        a.layer
        for a, b in zip(identity.layers, moved.layers)
        if (a.range_conflict_rate, a.null_conflict_rate, a.range_mean_cosine)
        != (b.range_conflict_rate, b.null_conflict_rate, b.range_mean_cosine)
    ]
    assert 1 in changed and 2 in changed
    assert moved.layers[1].eigenvalues != pytest.approx(identity.layers[1].eigenvalues, rel=1e-6)
    assert moved.layers[0].eigenvalues == pytest.approx(identity.layers[0].eigenvalues, rel=1e-12)  # before TM


def reference_report(model, batches, r):
    """The definition, by hand: hooks on the blocks' inputs, one backward pass per task and forward,
    task t's slice of dL_t/dX at folded layers, the first N tokens (TE tokens excluded)."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()  # analysis mode: batch statistics
    tasks, T = model.tasks, len(model.tasks)
    covs = [TokenCovariance(D) for _ in range(DEPTH)]
    grads = [[[] for _ in range(T)] for _ in range(DEPTH)]
    for batch in batches:
        for t, task in enumerate(tasks):
            inputs = []
            hooks = [
                block.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]) or None)
                for block in model.encoder.blocks
            ]
            out = model(batch["image"])
            for h in hooks:
                h.remove()
            for x in inputs:
                x.retain_grad()
            loss_fn(out, batch)[task].backward()
            for l, x in enumerate(inputs):
                rows = x.shape[0]
                if t == 0:
                    covs[l].update(x.detach()[:, : N + 1])
                g = x.grad[:, : N + 1]
                if rows == T * B:
                    g = g[t * B : (t + 1) * B]
                grads[l][t].append(g.reshape(-1, D))
            model.zero_grad()
    counts = []
    for l in range(DEPTH):
        space = split_token_space(covs[l], r=r)
        counts.append((space, conflict_counts(torch.stack([torch.cat(g) for g in grads[l]]), space)))
    return counts


def test_token_expansion_report_follows_the_definition_by_hand():
    batches = tiny_batches()
    model = expanded(tm=[2], te=[1, 2])
    perturb_tm(model)
    report = analyze(model, batches, loss_fn, r=10.0, progress=False, batched=True)
    looped = analyze(model, batches, loss_fn, r=10.0, progress=False, batched=False)
    for got, want in zip(fields(report), fields(looped)):  # T backward passes: the same report
        assert got == pytest.approx(want, abs=1e-12)
    assert report.fork == 1 and [lr.streams for lr in report.layers] == [1, 3, 3]
    assert report.num_tokens == 2 * B * (N + 1)
    assert all(lr.pairs_counted == 2 * B * (N + 1) * 3 for lr in report.layers)  # tokens x T(T-1)/2
    for lr, (space, counts) in zip(report.layers, reference_report(model, batches, 10.0)):
        assert lr.k == space.k
        assert lr.eigenvalues == pytest.approx(space.eigenvalues.tolist(), rel=1e-9, abs=1e-12)
        assert (lr.range_conflict_rate, lr.null_conflict_rate) == pytest.approx(
            (counts.range_rate, counts.null_rate), abs=1e-12
        )
        assert (lr.range_mean_cosine, lr.null_mean_cosine) == pytest.approx(
            (counts.range_mean_cosine, counts.null_mean_cosine), abs=1e-9
        )
    again = ConflictReport.from_json(report.to_json())
    assert again.layers[1].streams == 3 and again.plan == report.plan


def test_recon_split_model_is_analysed_on_its_streams():
    model = tiny_model()
    split_layers(model, ["1.mlp.fc2"])
    report = analyze(model, tiny_batches(1), loss_fn, r=10.0, progress=False)
    assert report.fork == 1 and report.plan is None
    assert [lr.streams for lr in report.layers] == [1, 3, 3]
    assert all(lr.pairs_counted == B * (N + 1) * 3 for lr in report.layers)


def test_cli_analyze_of_a_dtme_run_folder(tmp_path, tiny_sets):
    runner = CliRunner()
    sets = [
        a
        for s in tiny_sets
        + [
            "tasks=[depth,edge]",
            "dtme.num_batches=1",
            "dtme.expand_at=0.5",
            "train.iterations=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
        ]
        for a in ("--set", s)
    ]
    result = runner.invoke(
        app, ["train", "demo", "--out", str(tmp_path / "run"), "--dtme", *sets], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    run_plan = json.loads((tmp_path / "run" / "results.json").read_text())["dtme"]
    out = tmp_path / "after"
    result = runner.invoke(
        app, ["analyze", str(tmp_path / "run"), "--out", str(out), "--num-batches", "2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = ConflictReport.from_json(out / "conflicts.json")
    assert report.plan["tm"] == run_plan["tm"] and report.plan["te"] == run_plan["te"]
    fork = min(run_plan["tm"] + run_plan["te"])
    assert report.fork == fork and [lr.streams for lr in report.layers] == [1 if l < fork else 2 for l in range(2)]
    assert all(lr.pairs_counted > 0 for lr in report.layers)
    assert (out / "conflicts.png").stat().st_size > 1000 and not (out / "plan.json").exists()
    assert f"TM on layers {run_plan['tm']}" in result.output
