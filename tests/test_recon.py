"""Recon: per-layer S-conflict scores, the choice of layers, and branching inside a run."""

import itertools
import json

import pytest
import torch

from tokenmtl import balancing
from tokenmtl.config import load_config
from tokenmtl.engine.edits import build_edits
from tokenmtl.engine.trainer import Trainer, TrainingError
from tokenmtl.recon import Recon, layer_conflict_counts


def brute_force_counts(grads, spans, threshold):
    counts = []
    for start, stop in spans:
        count = 0
        for i, j in itertools.combinations(range(grads.shape[0]), 2):
            a, b = grads[i, start:stop].double(), grads[j, start:stop].double()
            if a.norm() > 0 and b.norm() > 0 and float(a @ b / (a.norm() * b.norm())) < threshold:
                count += 1
        counts.append(count)
    return counts


@pytest.mark.parametrize("seed", range(5))
def test_layer_conflict_counts_equal_a_pairwise_loop(seed):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(4, 30, generator=g)
    grads[2, 10:20] = 0.0  # a task with no gradient on one layer: never a conflict there
    spans = [(0, 10), (10, 20), (20, 30)]
    for threshold in (-0.5, -0.02, 0.0, 0.3):
        assert layer_conflict_counts(grads, spans, threshold).tolist() == brute_force_counts(grads, spans, threshold)


def test_scores_accumulate_over_the_window_and_rank_layers():
    recon = balancing.create("recon", 2, window=2, top_k=1)
    recon.bind([("0.attn.qkv", 2), ("0.attn.qkv", 1), (None, 2), ("1.mlp.fc1", 2)])
    assert recon.layers == ["0.attn.qkv", "1.mlp.fc1"] and recon.spans == [(0, 3), (5, 7)]
    conflicting_fc1 = torch.tensor([[1.0, 0, 0, 5, 5, 1, 0], [1.0, 0, 0, -5, -5, -1, 0]])
    for _ in range(3):  # the third step is past the window and not counted
        update = recon.aggregate(conflicting_fc1, torch.ones(2))
    assert torch.equal(update, conflicting_fc1.sum(0))  # base EW: the sum
    assert recon.conflict_scores() == {"0.attn.qkv": 0, "1.mlp.fc1": 2}
    assert recon.layers_to_split() == ["1.mlp.fc1"]


def test_recon_rejects_a_loss_weighting_base():
    with pytest.raises(ValueError, match="base method must be ew or a gradient method"):
        balancing.create("recon", 2, base="uw")


def test_recon_branches_the_top_layers_inside_a_run(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets + ["method.name=recon", "method.window=3", "method.top_k=2"])
    trainer = Trainer(cfg, tmp_path / "recon")
    results = trainer.run()
    scores = json.loads((tmp_path / "recon" / "recon_scores.json").read_text())
    ranked = sorted(scores["scores"].items(), key=lambda kv: -kv[1])
    assert results["recon"]["split"] == scores["split"] and len(scores["split"]) == 2
    assert min(scores["scores"][n] for n in scores["split"]) == ranked[1][1]
    assert scores["steps_scored"] == 3
    # each branched Linear of n parameters became T copies: (T - 1) * n parameters added
    fresh = dict(Trainer(cfg, tmp_path / "fresh").model.encoder.blocks.named_modules())
    sizes = [sum(p.numel() for p in fresh[name].parameters()) for name in scores["split"]]
    assert results["params"]["added_by_recon"] == 3 * sum(sizes)
    assert results["params"]["added_by_dtme"] == 0 and results["dtme"] is None
    assert trainer.plan is None  # Recon alone carries no DTME plan
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    in_model = {id(p) for p in trainer.model.parameters()}  # the replaced shared Linears left the optimizer
    assert all(id(p) in in_model for g in trainer.optimizer.param_groups for p in g["params"])
    assert {id(p) for p in groups["recon"]["params"]} == {id(p) for p in trainer.model.trunk.split.parameters()}


def test_recon_window_must_fit_the_run():
    cfg = load_config("demo", overrides=["method.name=recon", "method.window=5000"])
    with pytest.raises(TrainingError, match="method.window"):
        build_edits(cfg, balancing.create("recon", 4, window=5000))


def test_recon_is_still_a_balancing_method_by_name():
    """`--method recon` and `balancing.create("recon")` keep working; the class lives in tokenmtl.recon."""
    assert type(balancing.create("recon", 3)) is Recon and "recon" in balancing.available()
    assert Recon.__module__ == "tokenmtl.recon.balancer"


def test_recon_with_dtme_branches_at_the_expansion_step(tmp_path, tiny_sets):
    cfg = load_config(
        "demo",
        overrides=tiny_sets
        + ["method.name=recon", "method.top_k=1", "dtme.enabled=true", "dtme.expand_at=0.5", "dtme.num_batches=1"],
    )
    trainer = Trainer(cfg, tmp_path / "both")
    results = trainer.run()
    assert results["recon"]["split_step"] == 3 and results["dtme"]["expand_step"] == 3
    assert len(results["recon"]["split"]) == 1 and results["params"]["added_by_dtme"] > 0
    assert trainer.plan is not None and len(trainer.model.trunk.split) == 1
    zero = load_config("demo", overrides=tiny_sets + ["method.name=recon", "dtme.enabled=true", "dtme.expand_at=0"])
    with pytest.raises(TrainingError, match="dtme.expand_at > 0"):
        Trainer(zero, tmp_path / "zero")
