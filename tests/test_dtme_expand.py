"""Plans (DTME-MTL paper, layer selection), expansion with Token Modulation / Expansion, Recon's split layers."""

import json
import runpy
from pathlib import Path

import pytest
import timm
import torch

from tokenmtl.dtme import (
    ConflictReport,
    ExpandedTrunk,
    LayerReport,
    Plan,
    added_parameters,
    count_added_parameters,
    expand,
    make_plan,
    plan_of,
)
from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter
from tokenmtl.recon import split_layers

TASKS = {"seg": 3, "depth": 1, "normals": 2}
D = 16


def tiny_model(seed=0, depth=4):
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=16,
        patch_size=4,
        depth=depth,
        embed_dim=D,
        num_heads=2,
    )
    return MultiTaskModel(TimmViTAdapter(vit), {t: DenseHead(D, c, 8) for t, c in TASKS.items()}).eval()


def images(seed=0, b=3):
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def plan(**kw):
    return Plan(tasks=list(TASKS), **kw)


def hand_report(range_rates, null_rates):
    layers = [
        LayerReport(
            layer=i,
            dim=4,
            k=2,
            range_conflict_rate=r,
            null_conflict_rate=n,
            range_mean_cosine=0.0,
            null_mean_cosine=0.0,
            pairs_counted=1.0,
            eigenvalues=[1.0] * 4,
        )
        for i, (r, n) in enumerate(zip(range_rates, null_rates))
    ]
    return ConflictReport(
        tasks=["a", "b"],
        num_blocks=len(layers),
        layers=layers,
        r=100.0,
        energy_fraction=None,
        num_batches=1,
        num_tokens=1.0,
        exclude_prefix=False,
    )


REPORT = hand_report([0.1, 0.5, 0.3, 0.6, 0.2, 0.4], [0.6, 0.1, 0.5, 0.2, 0.4, 0.3])


@pytest.mark.parametrize(
    "strategy, tm, te",
    [
        ("conflict", [1, 3, 5], [0, 2, 4]),
        ("reverse", [0, 2, 4], [1, 3, 5]),
        ("swap", [0, 2, 4], [1, 3, 5]),
    ],
)
def test_strategies_pick_the_right_layers(strategy, tm, te):
    p = make_plan(REPORT, ratio=0.5, strategy=strategy)
    assert (p.tm, p.te) == (tm, te)
    assert p.tasks == ["a", "b"] and p.strategy == strategy and not hasattr(p, "split")


def test_ratio_rounds_half_up_and_modes_keep_one_kind():
    assert make_plan(REPORT, ratio=0.25).tm == [1, 3]  # round(1.5) = 2
    assert make_plan(REPORT, ratio=1 / 6).tm == [3]
    assert make_plan(REPORT, ratio=0.0).is_empty
    control = make_plan(REPORT, mode="none")  # the empty-plan control run
    assert control.tm == [] and control.te == [] and control.is_empty
    only_tm = make_plan(REPORT, mode="tm")
    assert only_tm.tm == [1, 3, 5] and only_tm.te == []
    assert make_plan(REPORT, mode="te").tm == []


def test_random_strategy_is_reproducible_with_the_same_counts():
    a, b = make_plan(REPORT, strategy="random", seed=3), make_plan(REPORT, strategy="random", seed=3)
    assert (a.tm, a.te) == (b.tm, b.te)
    assert len(a.tm) == len(a.te) == 3
    others = {tuple(make_plan(REPORT, strategy="random", seed=s).tm) for s in range(10)}
    assert len(others) > 1


def test_invalid_plan_options_list_allowed_values():
    with pytest.raises(ValueError, match=r"unknown strategy 'best'.*conflict.*random.*reverse.*swap"):
        make_plan(REPORT, strategy="best")
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]; got 1.5"):
        make_plan(REPORT, ratio=1.5)
    with pytest.raises(ValueError, match="affine"):
        make_plan(REPORT, modulator="layernorm")
    with pytest.raises(ValueError, match="unknown plan keys"):
        Plan.from_dict({"tm": [], "bogus": 1})


def test_plan_json_round_trip(tmp_path):
    p = make_plan(REPORT, strategy="swap", num_tokens=4, modulator="batchnorm")
    p.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert {"tm", "te", "num_tokens", "modulator", "tasks", "strategy", "ratio"} <= set(data)
    assert Plan.load(tmp_path / "plan.json") == p


def test_empty_plan_reproduces_the_baseline_bit_for_bit():
    model, x = tiny_model(), images()
    base = model(x)
    expand(model, plan())
    out = model(x)
    assert isinstance(model.trunk, ExpandedTrunk) and count_added_parameters(model) == 0
    assert all(torch.equal(out[t], base[t]) for t in TASKS)


def test_token_modulation_at_init_leaves_every_task_output_unchanged():
    model, x = tiny_model(), images()
    base = model(x)
    expand(model, plan(tm=[1, 3]))
    out = model(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], base[t], rtol=1e-5, atol=1e-6)
    # and it is not a no-op once trained: modulating one task changes only that task
    with torch.no_grad():
        model.trunk.tm["1"].weight["depth"].mul_(1.5)
    changed = model(x)
    assert not torch.allclose(changed["depth"], base["depth"], atol=1e-3)
    assert torch.equal(changed["seg"], out["seg"]) and torch.equal(changed["normals"], out["normals"])


def test_token_expansion_changes_only_its_own_task():
    model, x = tiny_model(), images()
    expand(model, plan(te=[2], num_tokens=5))
    assert model.trunk.te["2"].tokens["seg"].shape == (5, D)
    before = model(x)
    with torch.no_grad():
        model.trunk.te["2"].tokens["normals"].normal_(0, 1.0)  # (a constant shift would vanish in LayerNorm)
    after = model(x)
    assert not torch.allclose(after["normals"], before["normals"], atol=1e-4)
    assert torch.equal(after["seg"], before["seg"]) and torch.equal(after["depth"], before["depth"])
    assert after["seg"].shape == (3, 3, 16, 16)  # appended tokens dropped: heads see the patch grid


def test_expansion_tokens_get_gradients_only_from_their_task_loss():
    model, x = tiny_model(), images()
    expand(model, plan(tm=[1], te=[1, 3]))
    model(x)["depth"].square().mean().backward()
    for layer in ("1", "3"):
        grads = {t: model.trunk.te[layer].tokens[t].grad for t in TASKS}
        assert grads["depth"] is not None and grads["depth"].abs().sum() > 0
        assert all(grads[t] is None or grads[t].abs().sum() == 0 for t in ("seg", "normals"))
    assert model.trunk.tm["1"].weight["depth"].grad.abs().sum() > 0
    assert model.trunk.tm["1"].weight["seg"].grad is None or model.trunk.tm["1"].weight["seg"].grad.abs().sum() == 0


def test_added_parameters_are_counted_named_and_owned_by_their_task():
    model = tiny_model()
    shared_before = sum(p.numel() for p in model.shared_parameters())
    expand(model, plan(tm=[1, 2], te=[0, 1], num_tokens=6))
    # TM: 2 layers * 3 tasks * (W, b) * D ; TE: 2 layers * 3 tasks * 6 tokens * D
    assert count_added_parameters(model) == 2 * 3 * 2 * D + 2 * 3 * 6 * D
    names = {n for n, p in model.named_parameters() if any(p is q for q in added_parameters(model))}
    assert names and all(n.startswith("trunk.") for n in names)
    seg = model.task_parameters("seg")
    trunk_seg = [p for p in seg if any(p is q for q in added_parameters(model))]
    assert len(trunk_seg) == 2 * 2 + 2  # W, b at 2 layers + tokens at 2 layers
    assert sum(p.numel() for p in model.shared_parameters()) == shared_before
    assert plan_of(model).tm == [1, 2] and plan_of(tiny_model()) is None


def test_batchnorm_modulator_option():
    model, x = tiny_model(), images()
    expand(model, plan(tm=[2], modulator="batchnorm"))
    model.train()
    out = model(x)
    assert model.trunk.tm["2"].norm["seg"].num_batches_tracked == 1
    assert out["seg"].shape == (3, 3, 16, 16)


def test_one_task_alone_gives_that_task_stream():
    model, x = tiny_model(), images()
    expand(model, plan(tm=[1], te=[2]))
    with torch.no_grad():
        for p in added_parameters(model):
            p.add_(0.1 * torch.randn_like(p))
    tokens, ctx = model.encoder.embed(x)
    alone = model.trunk(model.encoder, tokens, ctx, ["depth"])["depth"]
    together = model.trunk(model.encoder, tokens, ctx, list(TASKS))["depth"]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)


def test_split_linear_copies_start_equal_and_diverge_per_task():
    model, x = tiny_model(), images()
    base = model(x)
    shared_weight = model.encoder.blocks[2].mlp.fc2.weight.detach().clone()
    split_layers(model, ["2.mlp.fc2"])
    assert plan_of(model) is None  # a Recon edit alone carries no DTME plan
    split = model.trunk.split["2__mlp__fc2"]
    assert all(torch.equal(split.weight[t], shared_weight) for t in TASKS)
    assert not any(n.startswith("encoder.vit.blocks.2.mlp.fc2") for n, _ in model.named_parameters())
    assert count_added_parameters(model) == 2 * shared_weight.numel() + 2 * D  # T-1 extra copies (W, b)
    out = model(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], base[t], rtol=1e-5, atol=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x)["seg"].square().mean().backward()
    opt.step()
    assert not torch.equal(split.weight["seg"], shared_weight)
    assert torch.equal(split.weight["depth"], shared_weight) and torch.equal(split.weight["normals"], shared_weight)


def test_checkpoint_round_trip_of_an_expanded_model(tmp_path):
    model, x = tiny_model(seed=0), images()
    expand(model, plan(tm=[1, 3], te=[0, 2]))
    split_layers(model, ["3.attn.proj"])
    with torch.no_grad():
        for p in added_parameters(model):
            p.add_(0.1 * torch.randn_like(p))
    torch.save(
        {"model": model.state_dict(), "dtme_plan": plan_of(model).to_dict(), "split": ["3.attn.proj"]},
        tmp_path / "ckpt.pt",
    )
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    fresh = tiny_model(seed=1)
    expand(fresh, Plan.from_dict(json.loads(json.dumps(ckpt["dtme_plan"]))))
    split_layers(fresh, ckpt["split"])
    fresh.load_state_dict(ckpt["model"])
    out, again = model(x), fresh(x)
    assert all(torch.equal(out[t], again[t]) for t in TASKS)


def test_expand_rejects_bad_plans_and_double_expansion():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"out of range; this encoder has blocks 0..3"):
        expand(model, plan(tm=[4]))
    with pytest.raises(ValueError, match="plan is for tasks"):
        expand(model, Plan(tasks=["seg", "depth"], tm=[1]))
    with pytest.raises(ValueError, match="must be an nn.Linear"):
        split_layers(model, ["1.mlp"])
    with pytest.raises(ValueError, match="does not exist"):
        split_layers(model, ["1.mlp.fc9"])
    with pytest.raises(ValueError, match="unknown plan keys"):
        Plan.from_dict({"tasks": list(TASKS), "split": ["1.mlp.fc1"]})  # Recon's layers are not a DTME plan field
    expand(model, plan(tm=[1]))
    with pytest.raises(ValueError, match="already expanded"):
        expand(model, plan(tm=[1]))


def test_bring_your_own_model_example_runs():
    path = Path(__file__).resolve().parents[1] / "examples" / "dtme_own_model.py"
    scope = runpy.run_path(str(path))
    assert plan_of(scope["model"]) is scope["plan"]
    assert count_added_parameters(scope["model"]) > 0


def test_model_forward_for_a_subset_of_tasks_matches_the_full_pass():
    """`model(x, tasks=[t])` runs only t's stream and gives the same prediction as the full pass."""
    import timm

    from tokenmtl.dtme import Plan, expand
    from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2
    )
    model = MultiTaskModel(TimmViTAdapter(vit), {"a": DenseHead(32, 2), "b": DenseHead(32, 1)}).eval()
    expand(model, Plan(tm=[1], te=[2], tasks=["a", "b"]))
    with torch.no_grad():
        for p in model.trunk.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 3, 32, 32)
        full = model(x)
        only_b = model(x, tasks=["b"])
    assert list(only_b) == ["b"]
    assert torch.allclose(only_b["b"], full["b"], atol=1e-5)
    with pytest.raises(KeyError, match="unknown task"):
        model(x, tasks=["c"])
