"""The model-edit seam, optimizer groups across an edit, logged signals and results bookkeeping."""

import csv
import json

import pytest
import torch
from torch import nn

from tokenmtl.config import load_config
from tokenmtl.engine.callbacks import Callback
from tokenmtl.engine.edits import EditResult, ModelEdit
from tokenmtl.engine.optimizer import add_group, build_optimizer
from tokenmtl.engine.results import settings_hash_of
from tokenmtl.engine.run import build_run
from tokenmtl.engine.trainer import Trainer


class ExtraBias(ModelEdit):
    """A custom edit: at `step`, add a learnable per-task output offset to the first task's head."""

    name = "extra_bias"

    def __init__(self, step):
        self.step, self.watched, self.applied_at = step, 0, None

    def watch(self, model, driver):
        self.watched += 1

    def apply(self, ctx):
        head = ctx.model.heads[ctx.model.tasks[0]]
        head.register_parameter("offset", nn.Parameter(torch.zeros(())))
        head.predict.register_forward_hook(lambda module, inputs, output: output + head.offset)
        self.applied_at = self.step
        return EditResult(added=[head.offset], lr_mult=2.0, weight_decay=0.0, scalars={"added": 1.0})

    def record(self):
        return {"added": 1}

    @classmethod
    def added_count(cls, model):
        return sum(p.numel() for head in model.heads.values() for n, p in head.named_parameters() if n == "offset")


class AdamMoments(Callback):
    """Copies the Adam moments of every parameter at the end of step `before` and start of `before + 1`."""

    def __init__(self, trainer_ref, before):
        self.ref, self.before, self.snapshots = trainer_ref, before, []

    def _snapshot(self):
        optimizer = self.ref[0].optimizer
        return {
            id(p): optimizer.state[p]["exp_avg"].clone()
            for g in optimizer.param_groups
            for p in g["params"]
            if p in optimizer.state
        }

    def on_step_end(self, event, run, driver):
        if event.step == self.before:
            self.snapshots.append(self._snapshot())

    def on_step_start(self, step, run):
        if step == self.before + 1:
            self.snapshots.append(self._snapshot())


def test_a_custom_edit_applies_at_its_step_and_trains_in_its_own_group(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets + ["train.iterations=4"])
    edit = ExtraBias(step=2)
    trainer = Trainer(cfg, tmp_path / "run", edits=[edit])
    assert trainer.schedule.expand_step == 2 and trainer.schedule.total == 4  # no restart: the same budget
    ref = [trainer]
    moments = AdamMoments(ref, before=1)
    trainer.callbacks.append(moments)
    results = trainer.run()
    assert results["params"]["added_by_extra_bias"] == 1 and results["extra_bias"] == {"added": 1, "step": 2}
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    head = trainer.model.heads[trainer.tasks[0]]
    assert groups["extra_bias"]["params"] == [head.offset]
    assert groups["extra_bias"]["base_lr"] == pytest.approx(2.0 * cfg.train.lr)
    assert float(head.offset.detach()) != 0.0  # it trained
    assert edit.watched == 2  # the first driver, and the one rebuilt after the edit
    before, after = moments.snapshots
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    log = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert {r["key"] for r in log if r["phase"] == "extra_bias"} == {"added"}


def test_dtme_expansion_keeps_the_adam_moments_of_existing_parameters(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets + ["dtme.enabled=true", "dtme.expand_at=0.34", "dtme.num_batches=1"])
    ref = []
    moments = AdamMoments(ref, before=1)  # expansion happens before step 2
    trainer = Trainer(cfg, tmp_path / "run", callbacks=[moments])
    ref.append(trainer)
    results = trainer.run()
    before, after = moments.snapshots
    assert len(before) > 10 and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert results["dtme"]["expand_step"] == 2 and results["iterations"] == 6  # post_iterations: remaining
    assert results["timing"]["iterations"] == 6
    log = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    norms = {r["key"] for r in log if r["phase"] == "train" and r["key"].startswith("dtme/added_norm/")}
    assert norms == {f"dtme/added_norm/{t}" for t in trainer.tasks}
    assert not any(r["key"].startswith("dtme/") for r in log if r["phase"] == "train" and int(r["step"]) <= 2)


def test_dtme_parameters_get_no_weight_decay_under_adamw(tiny_sets):
    from tokenmtl.engine.dtme_edit import DTMEEdit

    cfg = load_config("demo", overrides=tiny_sets + ["train.optimizer=adamw", "train.weight_decay=0.1"])
    run = build_run(cfg)
    optimizer = build_optimizer(run.model, run.tasks, None, cfg.train)
    plan = {"tm": [0], "te": [], "tasks": run.tasks, "num_tokens": 2}
    result = DTMEEdit.restore(run.model, plan, cfg)
    add_group(optimizer, "dtme", result.added, cfg.train.lr, result.weight_decay)
    scale = run.model.trunk.tm["0"].weight[run.tasks[0]]
    shared = next(run.model.encoder.parameters())
    shared_before = shared.detach().clone()
    for _ in range(3):
        for p in run.model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    assert torch.equal(scale.detach(), torch.ones_like(scale))  # exactly 1: no decay on added parameters
    torch.testing.assert_close(shared.detach(), shared_before * (1 - cfg.train.lr * 0.1) ** 3)  # decay applies


def test_balancer_task_weights_are_logged_every_step(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets + ["train.iterations=2", "method.name=dbmtl"])
    Trainer(cfg, tmp_path / "run").run()
    log = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    weights = [r for r in log if r["phase"] == "train" and r["key"].startswith("weight/")]
    if not weights:
        pytest.skip("this GradDriver reports no task weights")
    assert {r["step"] for r in weights} == {"1", "2"}
    assert {r["key"] for r in weights} == {f"weight/{t}" for t in cfg.tasks}


def test_settings_hash_ignores_seed_and_name_but_not_the_method(tiny_sets):
    base = load_config("demo", overrides=tiny_sets)
    other_seed = load_config("demo", overrides=tiny_sets + ["train.seed=3", "name=x", "log.progress=true"])
    other_method = load_config("demo", overrides=tiny_sets + ["method.name=dbmtl"])
    hashes = [settings_hash_of(build_run(c)) for c in (base, other_seed, other_method)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_checkpoint_records_edits_and_evaluate_rebuilds_them(tmp_path, tiny_sets):
    import tokenmtl

    cfg = load_config("demo", overrides=tiny_sets + ["dtme.enabled=true", "dtme.expand_at=0.34", "dtme.num_batches=1"])
    trained = Trainer(cfg, tmp_path / "run").run()
    evaluated = tokenmtl.evaluate(tmp_path / "run", split="test")
    assert evaluated["tasks"] == trained["tasks"]
    assert evaluated["dtme"] == trained["dtme"] and evaluated["params"] == trained["params"]
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert evaluated["dtme"]["tm"] == plan["tm"]


def _train_losses(run_dir):
    rows = csv.DictReader(open(run_dir / "metrics.csv"))
    return [(int(r["step"]), r["key"], float(r["value"])) for r in rows if r["key"].startswith("loss/")]


def test_empty_plan_control_repeats_plain_training_exactly_under_drop_path(tmp_path, tiny_sets):
    """Drop path draws from the global RNG every step: the analysis must not shift those draws."""
    sets = tiny_sets + ["model.drop_path_rate=0.5", "dtme.expand_at=0.34", "dtme.num_batches=2"]
    plain = Trainer(load_config("demo", overrides=sets), tmp_path / "ew")
    plain.run()
    control = Trainer(load_config("demo", overrides=sets + ["dtme.enabled=true", "dtme.mode=none"]), tmp_path / "ctl")
    results = control.run()
    assert results["dtme"]["expand_step"] == 2 and results["dtme"]["tm"] == [] and results["dtme"]["te"] == []
    ew_losses, control_losses = _train_losses(tmp_path / "ew"), _train_losses(tmp_path / "ctl")
    assert len(ew_losses) == 6 * len(plain.tasks) and ew_losses == control_losses
    ew_state, control_state = plain.model.state_dict(), control.model.state_dict()
    assert ew_state.keys() == control_state.keys()
    assert all(torch.equal(ew_state[k], control_state[k]) for k in ew_state)
    # the drop path is live: without it the losses differ from step 1 on
    Trainer(load_config("demo", overrides=sets + ["model.drop_path_rate=0"]), tmp_path / "no-drop").run()
    assert _train_losses(tmp_path / "no-drop")[0] != ew_losses[0]
