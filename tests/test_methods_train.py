"""Every balancing method trains on the scenes config without NaN, alone and with DTME."""

import math

import pytest

from tokenmtl import balancing
from tokenmtl.config import load_config
from tokenmtl.engine.callbacks import Callback
from tokenmtl.engine.trainer import Trainer


class RecordLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_step_end(self, event, run, driver):
        self.losses.append(event.losses)


@pytest.mark.parametrize("method", balancing.available())
def test_every_method_trains_a_few_steps_with_finite_losses(tmp_path, tiny_sets, method):
    sets = tiny_sets + [f"method.name={method}", "train.iterations=4", "train.eval_every=4", "train.checkpoint_every=4"]
    if method == "recon":
        sets += ["method.window=2", "method.top_k=2"]
    recorder = RecordLosses()
    trainer = Trainer(load_config("demo", overrides=sets), tmp_path / method, callbacks=[recorder])
    results = trainer.run()
    losses = recorder.losses
    assert len(losses) == 4
    assert all(math.isfinite(v) for step in losses for v in step.values())
    assert all(math.isfinite(v) for metrics in results["tasks"].values() for v in metrics.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.encoder.parameters())


@pytest.mark.parametrize("method", ["dbmtl", "pcgrad", "famo", "uw", "nashmtl"])
def test_methods_combine_with_dtme(tmp_path, tiny_sets, method):
    sets = tiny_sets + [
        f"method.name={method}",
        "dtme.enabled=true",
        "dtme.expand_at=0.34",
        "dtme.num_batches=1",
        "train.iterations=3",
    ]
    trainer = Trainer(load_config("demo", overrides=sets), tmp_path / method)
    results = trainer.run()
    assert results["dtme"] is not None and results["params"]["added_by_dtme"] > 0
    added = [p for p in trainer.model.trunk.parameters()]
    assert all(p.grad is not None and math.isfinite(float(p.grad.abs().sum())) for p in added)
