"""Fault tolerance (issue 6): killed, stopped and corrupted runs resume to the uninterrupted result.

Runs that must die from outside are `python -m tokenmtl train` subprocesses whose training step
is slowed by a small harness (so a signal lands mid-run, not after the end); everything else runs
in this process. Every reference run uses one intra-op thread, like the subprocesses, so that the
float arithmetic is the same and results can be compared exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_SETS
from tokenmtl.cli import app
from tokenmtl.config import load_config
from tokenmtl.engine.callbacks import Callback
from tokenmtl.engine.checkpoint import latest_good_checkpoint, load_checkpoint, read_manifest
from tokenmtl.engine.trainer import Trainer

SRC = Path(__file__).parents[1] / "src"
RUN = [
    "train.iterations=9",
    "train.checkpoint_every=3",
    "train.eval_every=9",
    "train.keep_checkpoints=2",
    "benchmark.train_size=24",
    "benchmark.val_size=8",
    "benchmark.test_size=8",
    "eval.batch_size=8",
]

# `python -c` harness: `tokenmtl train` as the CLI runs it (errors and signals reported the same way),
# with a callback that slows every training step by TOKENMTL_TEST_STEP_DELAY seconds.
SLOW_CLI = """
import os, sys, time
from tokenmtl.cli import run_guarded
from tokenmtl.config import load_config
from tokenmtl.engine.callbacks import Callback
from tokenmtl.engine.trainer import Trainer

class Slow(Callback):
    def on_step_start(self, step, run):
        time.sleep(float(os.environ["TOKENMTL_TEST_STEP_DELAY"]))

out, sets = sys.argv[1], sys.argv[2:]
cfg = load_config("demo", overrides=sets + ["log.progress=false"])
try:
    run_guarded(lambda: Trainer(cfg, out, callbacks=[Slow()]).run())
except SystemExit:
    raise
except Exception as stop:  # typer.Exit: the exit code the command line would give
    sys.exit(getattr(stop, "exit_code", 1))
"""


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (as the OMP_NUM_THREADS=1 subprocesses do)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sets(tiny_sets: list[str], extra: Sequence[str] = ()) -> list[str]:
    return tiny_sets + RUN + list(extra)


def _train(sets: list[str], out: Path, resume: bool = False) -> dict[str, Any]:
    with one_thread():
        return Trainer(load_config("demo", overrides=sets), out, resume=resume).run()


def _start(sets: list[str], out: Path, delay: float = 0.15) -> subprocess.Popen:
    command = [sys.executable, "-c", SLOW_CLI, str(out), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC), "TOKENMTL_TEST_STEP_DELAY": str(delay)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, folder: Path, timeout: float = 60.0) -> int:
    """Poll the manifest until a first checkpoint is recorded; returns its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = read_manifest(folder / "checkpoints")  # replaced atomically: never half-written
        if entries:
            return int(entries[-1]["step"])
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, scenes_cache) -> dict[str, Any]:
    """The uninterrupted run that every interrupted run must reproduce once resumed."""
    return _train(_sets(TINY_SETS + [f"benchmark.cache_dir={scenes_cache}"]), tmp_path_factory.mktemp("full"))


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_metrics(tmp_path, tiny_sets, full_run):
    sets = _sets(tiny_sets)
    proc = _start(sets, tmp_path / "killed")
    first = _wait_for_checkpoint(proc, tmp_path / "killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "results.json").exists(), "the run finished before it was killed"
    assert first == 3
    resumed = _train(sets, tmp_path / "killed", resume=True)
    assert resumed["tasks"] == full_run["tasks"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_saves_the_step_reached_exits_130_and_resumes_to_the_same_metrics(
    tmp_path, tiny_sets, signum, full_run
):
    sets = _sets(tiny_sets)
    proc = _start(sets, tmp_path / "stopped")
    _wait_for_checkpoint(proc, tmp_path / "stopped")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    reached = re.search(rf"stopped by {signal.Signals(signum).name} at iteration (\d+)", stderr)
    assert reached, stderr[-2000:]
    entries = read_manifest(tmp_path / "stopped" / "checkpoints")
    assert entries[-1]["step"] == int(reached.group(1))
    assert 3 <= entries[-1]["step"] < 9
    resumed = _train(sets, tmp_path / "stopped", resume=True)
    assert resumed["tasks"] == full_run["tasks"]


def _newest(folder: Path) -> Path:
    return folder / "checkpoints" / read_manifest(folder / "checkpoints")[-1]["file"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_newest_checkpoint_is_detected_and_the_previous_good_one_resumes(
    tmp_path, tiny_sets, full_run, damage
):
    sets = _sets(tiny_sets)
    _train(sets, tmp_path / "run")
    newest = _newest(tmp_path / "run")
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"skipping a bad checkpoint: .*SHA-256 does not match"):
        path, state = latest_good_checkpoint(tmp_path / "run" / "checkpoints")
    assert state["step"] == 6 and path.name == "ckpt-00000006.pt"
    (tmp_path / "run" / "results.json").unlink()
    with pytest.warns(UserWarning, match="corrupted or truncated"):
        resumed = _train(sets, tmp_path / "run", resume=True)
    assert resumed["tasks"] == full_run["tasks"]


def test_evaluate_on_a_corrupted_checkpoint_fails_with_one_clear_line(tmp_path, tiny_sets):
    sets = _sets(tiny_sets, ["train.iterations=3"])
    _train(sets, tmp_path / "run")
    newest = _newest(tmp_path / "run")
    newest.write_bytes(newest.read_bytes()[:1000])
    args = ["evaluate", "demo", "--checkpoint", str(newest), "--out", str(tmp_path / "eval")]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint") and "corrupted or truncated" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "eval" / "results.json").exists()


def test_checkpoint_carries_optimizer_balancer_rng_step_and_dtme_plan(tmp_path, tiny_sets):
    """A DB-MTL + DTME run: expansion at step 2, checkpoint at step 3 (after expansion)."""
    sets = _sets(
        tiny_sets,
        [
            "method.name=dbmtl",
            "dtme.enabled=true",
            "dtme.expand_at=0.5",
            "dtme.num_batches=1",
            "train.iterations=4",
            "dtme.num_tokens=2",
        ],
    )
    _train(sets, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-00000003.pt")
    assert state["step"] == 3
    assert state["optimizer"]["state"], "Adam moments are saved"
    assert {g["name"] for g in state["optimizer"]["param_groups"]} >= {"shared", "task", "dtme"}
    extra = state["balancer"]["_extra_state"]
    assert extra["step"] == 3 and extra["buffer"].shape[0] == 4  # DB-MTL's EMA buffers, one row per task
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    plan = state["edits"]["dtme"]
    assert plan is not None and (plan["tm"] or plan["te"])
    assert plan == json.loads((tmp_path / "run" / "plan.json").read_text())


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_start(self, step: int, run: Any) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_resume_after_dtme_expansion_rebuilds_the_expanded_model(tmp_path, tiny_sets):
    sets = _sets(
        tiny_sets,
        [
            "method.name=dbmtl",
            "dtme.enabled=true",
            "dtme.expand_at=0.5",
            "dtme.num_batches=1",
            "train.iterations=4",
            "dtme.num_tokens=2",
            "dtme.post_iterations=full",
        ],
    )
    cfg = load_config("demo", overrides=sets)
    with one_thread():
        full = Trainer(cfg, tmp_path / "full")
        full_results = full.run()
        with pytest.raises(KeyboardInterrupt):  # a crash after the step-3 checkpoint, i.e. after expansion
            Trainer(cfg, tmp_path / "cut", callbacks=[CrashAt(4)]).run()
        resumed = Trainer(cfg, tmp_path / "cut", resume=True)
        assert resumed.plan is None  # built unexpanded; the checkpoint's plan expands it on resume
        resumed_results = resumed.run()
    assert resumed.plan is not None and resumed.plan.to_dict() == full.plan.to_dict()
    assert resumed_results["tasks"] == full_results["tasks"]
    assert resumed_results["params"] == full_results["params"]
    expected = full.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
