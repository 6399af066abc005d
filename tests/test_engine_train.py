"""The training loop end to end on a tiny config: resume equivalence, NaN stop, DTME protocol."""

import json

import pytest
import torch

from tokenmtl.config import load_config
from tokenmtl.engine.callbacks import Callback
from tokenmtl.engine.edits import build_edits
from tokenmtl.engine.run import loss_weights_for
from tokenmtl.engine.schedule import Schedule
from tokenmtl.engine.trainer import Trainer, TrainingError


def _params(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


class CrashAt(Callback):
    """Raises KeyboardInterrupt when step `step` is about to run (a crash mid-run)."""

    def __init__(self, step):
        self.step = step

    def on_step_start(self, step, run):
        if step == self.step:
            raise KeyboardInterrupt


class PoisonLossWeight(Callback):
    """From step `step` on, task `task`'s loss is multiplied by `value` (NaN or Inf)."""

    def __init__(self, step, task, value):
        self.step, self.task, self.value = step, task, value

    def on_step_start(self, step, run):
        if step == self.step:
            run.loss_weights[self.task] = self.value


def interrupted_then_resumed(cfg, folder, crash_step):
    """Run until `crash_step` raises KeyboardInterrupt, then resume in the same folder."""
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, folder, callbacks=[CrashAt(crash_step)]).run()
    resumed = Trainer(cfg, folder, resume=True)
    return resumed, resumed.run()


def schedule_of(cfg):
    return Schedule.from_edits(cfg.train.iterations, build_edits(cfg, balancer=None))


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets)
    full = Trainer(cfg, tmp_path / "full")
    full_results = full.run()

    resumed, resumed_results = interrupted_then_resumed(cfg, tmp_path / "cut", crash_step=4)

    assert resumed_results["tasks"] == full_results["tasks"]
    for key, value in _params(full).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    full_log = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert full_log == cut_log


def test_same_seed_same_result_and_other_seed_differs(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets + ["train.iterations=3"])
    a = Trainer(cfg, tmp_path / "a").run()
    b = Trainer(cfg, tmp_path / "b").run()
    c = Trainer(load_config("demo", overrides=tiny_sets + ["train.iterations=3", "train.seed=1"]), tmp_path / "c").run()
    assert a["tasks"] == b["tasks"]
    assert a["tasks"] != c["tasks"]


def test_non_finite_loss_stops_naming_task_and_iteration(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets)
    run = Trainer(cfg, tmp_path / "nan", callbacks=[PoisonLossWeight(4, "depth", float("nan"))])
    with pytest.raises(TrainingError, match=r"loss of task 'depth' became nan at iteration 4"):
        run.run()
    manifest = json.loads((tmp_path / "nan" / "checkpoints" / "checkpoints.json").read_text())
    assert [e["step"] for e in manifest["checkpoints"]] == [3]
    assert not (tmp_path / "nan" / "results.json").exists()


def test_results_json_has_the_design_format(tmp_path, tiny_sets):
    cfg = load_config("demo", overrides=tiny_sets + ["train.iterations=2"])
    results = Trainer(cfg, tmp_path / "r").run()
    on_disk = json.loads((tmp_path / "r" / "results.json").read_text())
    assert on_disk == results
    assert set(results) >= {"tasks", "delta_m", "params", "method", "dtme", "timing"}
    assert set(results["tasks"]) == {"semseg", "depth", "normals", "edge"}
    assert results["params"]["total"] == sum(p.numel() for p in Trainer(cfg, tmp_path / "x").model.parameters())
    assert results["params"]["added_by_dtme"] == 0 and results["dtme"] is None


def test_dtme_schedule_equal_post_expansion_iterations():
    cfg = load_config("demo", overrides=["train.iterations=100", "dtme.enabled=true", "dtme.expand_at=0.25"])
    cfg["dtme"]["post_iterations"] = "full"
    schedule = schedule_of(cfg)
    assert (schedule.expand_step, schedule.total) == (25, 125)
    assert schedule.lr_position(10) == (10, 100)
    assert schedule.lr_position(25) == (0, 100)  # the LR schedule restarts after expansion
    assert schedule.lr_position(124) == (99, 100)
    cfg["dtme"]["post_iterations"] = "remaining"
    remaining = schedule_of(cfg)
    assert remaining.total == 100 and remaining.lr_position(60) == (60, 100)


def test_loss_weights_invpt_scheme_and_overrides():
    cfg = load_config(
        "demo", overrides=["benchmark.name=nyud", "loss_weights.scheme=invpt", "loss_weights.weights={depth: 2.0}"]
    )
    weights = loss_weights_for(cfg, ["semseg", "depth", "normals", "edge"])
    assert weights == {"semseg": 1.0, "depth": 2.0, "normals": 10.0, "edge": 50.0}
    with pytest.raises(TrainingError, match="no InvPT loss weights for benchmark 'scenes'"):
        loss_weights_for(load_config("demo", overrides=["loss_weights.scheme=invpt"]), ["depth"])


def test_dtme_run_expands_once_and_resumes_after_expansion(tmp_path, tiny_sets):
    sets = tiny_sets + [
        "dtme.enabled=true",
        "dtme.expand_at=0.34",
        "dtme.num_batches=2",
        "dtme.lr_mult=5.0",
        "dtme.post_iterations=full",
    ]
    cfg = load_config("demo", overrides=sets)
    full = Trainer(cfg, tmp_path / "full")
    results = full.run()
    assert results["timing"]["iterations"] == 2 + 6  # 2 warm-up steps, then the full 6 (paper protocol)
    assert results["dtme"]["expand_step"] == 2
    assert len(results["dtme"]["tm"]) == 1 and len(results["dtme"]["te"]) == 1
    assert results["params"]["added_by_dtme"] > 0
    for name in ("conflicts.json", "plan.json", "conflicts.png", "spectra.png"):
        assert (tmp_path / "full" / name).is_file(), name
    groups = {g["name"]: g for g in full.optimizer.param_groups}
    assert groups["dtme"]["base_lr"] == pytest.approx(5.0 * cfg["train"]["lr"])
    dtme_params = {id(p) for p in groups["dtme"]["params"]}
    assert all(id(p) in dtme_params for p in full.model.trunk.parameters())
    assert groups["dtme"]["weight_decay"] == 0.0 and groups["shared"]["weight_decay"] == cfg["train"]["weight_decay"]

    resumed, resumed_results = interrupted_then_resumed(cfg, tmp_path / "cut", crash_step=5)
    assert resumed_results["tasks"] == results["tasks"]
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_freeze_backbone_trains_only_heads_and_added_parameters(tmp_path, tiny_sets):
    cfg = load_config(
        "demo",
        overrides=tiny_sets
        + [
            "dtme.enabled=true",
            "dtme.expand_at=0.34",
            "dtme.num_batches=1",
            "dtme.freeze_backbone=true",
            "train.iterations=3",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "frozen")
    trainer.run()
    before = Trainer(cfg, tmp_path / "x")  # same seed: the encoder after warm-up is what the frozen run kept
    assert all(not p.requires_grad for p in trainer.model.encoder.parameters())
    assert any(p.requires_grad for p in trainer.model.trunk.parameters())
    assert not torch.equal(trainer.model.encoder.vit.pos_embed, before.model.encoder.vit.pos_embed)
