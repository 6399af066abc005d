"""Gated (function-preserving) Token Expansion: `dtme.te_gate`, on a timm ViT and a Hugging Face BERT."""

import pytest
import torch

from test_dtme_expand import TASKS, hand_report, images, tiny_model
from tokenmtl.config import load_config
from tokenmtl.dtme import Plan, expand, make_plan
from tokenmtl.dtme.modules import TokenExpansion
from tokenmtl.models import MultiTaskModel


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


def test_gated_te_keeps_a_vit_outputs_exactly_while_plain_te_changes_them():
    x = images(b=4)
    base = _outputs(tiny_model(), x)
    plain = _outputs(expand(tiny_model(), Plan(tasks=list(TASKS), te=[1, 3], num_tokens=4)), x)
    gated = _outputs(expand(tiny_model(), Plan(tasks=list(TASKS), te=[1, 3], num_tokens=4, te_gate=True)), x)
    for t in TASKS:
        torch.testing.assert_close(gated[t], base[t], rtol=1e-6, atol=1e-6)  # folding changes BLAS order only
        assert (plain[t] - base[t]).abs().max() > 1e-4  # plain TE's tokens take attention at insertion


def _trunk_streams(model, x, tasks):
    """Each task's tokens after the last block (TE at the last block: no later block mixes them)."""
    tokens, ctx = model.encoder.embed(x)
    with torch.no_grad():
        return model.trunk(model.encoder, tokens, ctx, tasks)


def test_gate_one_equals_plain_te_gate_zero_the_plain_block_and_a_half_gate_interpolates():
    x, tasks = images(b=3), list(TASKS)
    plain_model = expand(tiny_model(), Plan(tasks=tasks, te=[3], num_tokens=3))
    gated_model = expand(tiny_model(), Plan(tasks=tasks, te=[3], num_tokens=3, te_gate=True))
    gated_model.trunk.te["3"].tokens.load_state_dict(plain_model.trunk.te["3"].tokens.state_dict())
    base_model = tiny_model()
    tokens, ctx = base_model.encoder.embed(x)
    with torch.no_grad():
        for i in range(base_model.encoder.num_blocks):
            tokens = base_model.encoder.run_block(i, tokens, ctx)
    plain = _trunk_streams(plain_model, x, tasks)
    with torch.no_grad():
        for t, g in {"seg": 1.0, "depth": 0.5, "normals": 0.0}.items():
            gated_model.trunk.te["3"].gate[t].fill_(g)
    gated = _trunk_streams(gated_model, x, tasks)
    torch.testing.assert_close(gated["seg"], plain["seg"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gated["normals"], tokens, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gated["depth"], 0.5 * (plain["depth"] + tokens), rtol=1e-5, atol=1e-6)
    assert (plain["depth"] - tokens).abs().max() > 1e-4  # the interpolation is not trivial


def test_at_init_only_the_gate_gets_a_gradient_then_the_tokens_follow():
    torch.manual_seed(0)
    model = expand(tiny_model(), Plan(tasks=list(TASKS), te=[1], num_tokens=2, te_gate=True)).train()
    te = model.trunk.te["1"]
    out = model(images(b=2))
    sum(o.pow(2).mean() for o in out.values()).backward()
    for t in TASKS:
        assert te.gate[t].grad is not None and te.gate[t].grad.abs() > 0
        assert te.tokens[t].grad is None or te.tokens[t].grad.abs().max() == 0
    model.zero_grad()
    with torch.no_grad():
        te.gate["seg"].fill_(0.1)
    out = model(images(b=2))
    out["seg"].pow(2).mean().backward()
    assert te.tokens["seg"].grad.abs().max() > 0
    assert te.tokens["depth"].grad is None or te.tokens["depth"].grad.abs().max() == 0


def test_gate_is_a_task_parameter_and_counts_as_added():
    te = TokenExpansion(["a", "b"], dim=8, num_tokens=3, gated=True)
    assert [p.shape for p in te.task_parameters("a")] == [torch.Size([3, 8]), torch.Size([])]
    assert sum(p.numel() for p in te.parameters()) == 2 * (3 * 8 + 1)
    assert TokenExpansion(["a"], dim=8, num_tokens=3).task_parameters("a")[0].shape == (3, 8)
    with pytest.raises(ValueError, match="gated"):
        TokenExpansion(["a"], dim=8).mix(torch.zeros(2, 3, 8), torch.zeros(2, 3, 8), ["a"])


def test_plan_and_config_carry_the_gate():
    report = hand_report([0.1, 0.5, 0.3, 0.2], [0.4, 0.1, 0.2, 0.3])
    plan = make_plan(report, ratio=0.5, te_gate=True)
    assert plan.te_gate is True and Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_dict({k: v for k, v in plan.to_dict().items() if k != "te_gate"}).te_gate is False
    assert load_config("demo")["dtme"]["te_gate"] is False
    assert load_config("demo", ["dtme.te_gate=true"])["dtme"]["te_gate"] is True


def test_gated_te_keeps_a_bert_outputs_exactly():
    pytest.importorskip("transformers")
    from test_hf import small_bert, text_batches

    batch = text_batches(1)[0]
    inputs = MultiTaskModel.inputs_from_batch(batch)
    base = _outputs(small_bert(), inputs)
    gated = _outputs(
        expand(small_bert(), Plan(tasks=["topic", "sentiment"], te=[0, 2], num_tokens=3, te_gate=True)), inputs
    )
    plain = _outputs(expand(small_bert(), Plan(tasks=["topic", "sentiment"], te=[0, 2], num_tokens=3)), inputs)
    for t in base:
        torch.testing.assert_close(gated[t], base[t], rtol=1e-6, atol=1e-6)  # folding changes BLAS order only
        assert (plain[t] - base[t]).abs().max() > 1e-5
