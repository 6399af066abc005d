"""Hostile inputs (issue 6): each fails with a clear message or is handled; none hangs or
corrupts a run folder.

Most cases call the CLI in-process (typer's CliRunner) or the Python API; a few subprocess
calls check the real command prints one error line and no traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from fixtures_real import write_nyud
from tokenmtl.cli import app
from tokenmtl.config import ConfigError, load_config
from tokenmtl.engine.checkpoint import read_manifest
from tokenmtl.engine.trainer import Trainer, TrainingError

SRC = Path(__file__).parents[1] / "src"
SHORT = [
    "train.iterations=3",
    "train.eval_every=3",
    "train.checkpoint_every=3",
    "benchmark.train_size=16",
    "benchmark.val_size=8",
    "benchmark.test_size=8",
    "eval.batch_size=8",
]


def _args(sets: list[str]) -> list[str]:
    out: list[str] = []
    for item in sets:
        out += ["--set", item]
    return out


def _invoke(args: list[str]):
    """Run the CLI in-process; a non-SystemExit exception (a traceback) fails the test."""
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _error_lines(stderr: str) -> list[str]:
    """stderr without progress bars (scenes generation draws one while it builds a cache)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "img/s" not in line]


def _assert_user_error(result, *fragments: str, one_line: bool = False) -> None:
    """Exit code 2 and a message starting `error: ` that holds every fragment (and is a single
    line when `one_line`)."""
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.stderr)
    assert lines and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    if one_line:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in "\n".join(lines), (fragment, result.stderr)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------ configs
BAD_SETS = [
    pytest.param(["train.iterations=abc"], ["'train.iterations' must be int", "'abc'"], id="wrong-type-int"),
    pytest.param(["train.lr=[1, 2]"], ["'train.lr' must be float"], id="wrong-type-list"),
    pytest.param(["dtme.enabled=maybe"], ["'dtme.enabled' must be bool"], id="wrong-type-bool"),
    pytest.param(["tasks=semseg"], ["tasks must be a non-empty list"], id="tasks-not-a-list"),
    pytest.param(
        ["train.iteration=5"], ["unknown config key 'train.iteration'", "did you mean 'iterations'"], id="unknown-key"
    ),
    pytest.param(["optimiser=adam"], ["unknown config key 'optimiser'"], id="unknown-section"),
    pytest.param(["train=5"], ["'train' must be a mapping"], id="section-not-mapping"),
    pytest.param(["train.batch_size=-1"], ["train.batch_size must be > 0", "-1"], id="negative-batch"),
    pytest.param(["train.iterations=0"], ["train.iterations must be > 0"], id="zero-iterations"),
    pytest.param(["train.lr=-0.1"], ["train.lr must be >= 0"], id="negative-lr"),
    pytest.param(["dtme.ratio=1.5"], ["dtme.ratio must be in (0, 1]"], id="ratio-out-of-range"),
    pytest.param(["train.optimizer=lbfgs"], ["train.optimizer must be one of adam, adamw, sgd"], id="bad-choice"),
    pytest.param(["method.name=nope"], ["nope"], id="unknown-method"),
    pytest.param(["method.name=dbmtl", "method.beta=2"], ["beta must be in [0, 1]"], id="bad-method-option"),
    pytest.param(["train.iterations"], ["--set expects key=value"], id="set-without-value"),
    pytest.param(["train.lr=[unclosed"], ["cannot parse the value of 'train.lr'"], id="unparsable-value"),
    pytest.param(["benchmark.name=imagenet"], ["imagenet"], id="unknown-benchmark"),
]


@pytest.mark.parametrize("sets, fragments", BAD_SETS)
def test_broken_config_override_fails_with_a_clear_message(tmp_path, tiny_sets, sets, fragments):
    result = _invoke(["train", "demo", "--out", str(tmp_path / "run"), "--no-progress", *_args(tiny_sets + sets)])
    _assert_user_error(result, *fragments)
    assert not (tmp_path / "run" / "checkpoints").exists()


NEGATIVE_MODEL_SIZES = [
    pytest.param("benchmark.train_size=-3", id="negative-train-size"),
    pytest.param("model.depth=-1", id="negative-depth"),
    pytest.param("model.embed_dim=0", id="zero-embed-dim"),
    pytest.param("benchmark.image_size=-32", id="negative-image-size"),
]


@pytest.mark.parametrize("item", NEGATIVE_MODEL_SIZES)
def test_negative_sizes_in_open_sections_fail_with_a_message_naming_the_key(tmp_path, tiny_sets, item):
    result = _invoke(["train", "demo", "--out", str(tmp_path / "run"), "--no-progress", *_args(tiny_sets + [item])])
    key = item.split("=")[0].split(".")[-1]
    _assert_user_error(result, key)


CONFIG_FILES = [
    pytest.param("- a\n- b\n", "must be a mapping at top level, got list", id="yaml-list"),
    pytest.param("just a string\n", "must be a mapping at top level, got str", id="yaml-scalar"),
    pytest.param("train: [unclosed\n", "cannot read config", id="invalid-yaml"),
    pytest.param(b"\xff\xfe\x00garbage\x80", "cannot read config", id="binary-garbage"),
    pytest.param("train:\n  iterations: 1\n  bogus: 2\n", "unknown config key 'train.bogus'", id="unknown-key-in-file"),
]


@pytest.mark.parametrize("content, fragment", CONFIG_FILES)
def test_broken_config_file_fails_with_a_clear_message(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load_config(path)
    result = _invoke(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    _assert_user_error(result, fragment)


def test_missing_or_directory_config_names_the_packaged_configs(tmp_path):
    for target in (tmp_path / "absent.yaml", tmp_path):
        with pytest.raises(ConfigError, match="config file not found.*packaged configs: .*demo"):
            load_config(target)


# -------------------------------------------------------------------------------- checkpoints
def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _Foreign:
    """A pickled class: `weights_only` loading must refuse to run its code."""


BAD_CHECKPOINTS = [
    pytest.param(os.urandom(4096), "cannot be loaded", id="random-bytes"),
    pytest.param(b"", "cannot be loaded", id="empty-file"),
    pytest.param(_torch_bytes({"weights": torch.zeros(3)}), "is not a tokenmtl checkpoint", id="foreign-dict"),
    pytest.param(_torch_bytes(torch.zeros(3)), "is not a tokenmtl checkpoint", id="bare-tensor"),
    pytest.param(_torch_bytes([1, 2, 3]), "is not a tokenmtl checkpoint", id="list"),
    pytest.param(_torch_bytes({"obj": _Foreign()}), "cannot be loaded", id="pickled-class"),
]


@pytest.mark.parametrize("content, fragment", BAD_CHECKPOINTS)
def test_broken_checkpoint_file_fails_evaluate_with_a_clear_message(tmp_path, tiny_sets, content, fragment):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    result = _invoke(
        ["evaluate", "demo", "--checkpoint", str(path), "--out", str(tmp_path / "eval"), *_args(tiny_sets + SHORT)]
    )
    _assert_user_error(result, fragment, one_line=True)
    assert not (tmp_path / "eval" / "results.json").exists()


def test_missing_checkpoint_fails_evaluate_with_a_clear_message(tmp_path, tiny_sets):
    result = _invoke(
        ["evaluate", "demo", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "e"), *_args(tiny_sets)]
    )
    _assert_user_error(result, "checkpoint not found")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, scenes_cache) -> Path:
    """A finished 3-step run of the tiny config (checkpoint at step 3, results.json)."""
    from conftest import TINY_SETS

    out = tmp_path_factory.mktemp("finished") / "run"
    result = _invoke(
        [
            "train",
            "demo",
            "--out",
            str(out),
            "--no-progress",
            *_args(TINY_SETS + [f"benchmark.cache_dir={scenes_cache}"] + SHORT),
        ]
    )
    assert result.exit_code == 0, result.output
    return out


MISFITS = [
    pytest.param(["--tasks", "semseg,depth"], "was trained on tasks", id="other-task-set"),
    pytest.param(["--set", "model.embed_dim=48"], "does not fit this model", id="other-width"),
    pytest.param(["--set", "model.depth=3"], "does not fit this model", id="other-depth"),
]


@pytest.mark.parametrize("extra, fragment", MISFITS)
def test_resume_from_a_checkpoint_of_another_task_set_or_architecture_fails_and_leaves_the_folder_untouched(
    tmp_path, tiny_sets, finished_run, extra, fragment
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _hashes(run)
    result = _invoke(
        ["train", "demo", "--out", str(run), "--resume", "--no-progress", *_args(tiny_sets + SHORT), *extra]
    )
    _assert_user_error(result, fragment)
    assert _hashes(run) == before


@pytest.mark.parametrize("extra, fragment", MISFITS[1:])
def test_evaluate_a_checkpoint_of_another_architecture_fails_with_a_clear_message(
    tmp_path, tiny_sets, finished_run, extra, fragment
):
    checkpoint = finished_run / "checkpoints" / read_manifest(finished_run / "checkpoints")[-1]["file"]
    result = _invoke(
        [
            "evaluate",
            "demo",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "eval"),
            *_args(tiny_sets + SHORT),
            *extra,
        ]
    )
    _assert_user_error(result, fragment)


def test_architecture_misfit_is_reported_in_one_line(tmp_path, tiny_sets, finished_run):
    checkpoint = finished_run / "checkpoints" / read_manifest(finished_run / "checkpoints")[-1]["file"]
    result = _invoke(
        [
            "evaluate",
            "demo",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "eval"),
            *_args(tiny_sets + SHORT),
            "--set",
            "model.embed_dim=48",
        ]
    )
    _assert_user_error(result, "does not fit this model", one_line=True)


def test_corrupted_checkpoint_on_resume_with_no_good_one_fails_and_leaves_the_folder_untouched(
    tmp_path, tiny_sets, finished_run
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for entry in read_manifest(run / "checkpoints"):
        path = run / "checkpoints" / entry["file"]
        path.write_bytes(path.read_bytes()[:-10])
    before = _hashes(run)
    result = _invoke(["train", "demo", "--out", str(run), "--resume", "--no-progress", *_args(tiny_sets + SHORT)])
    _assert_user_error(result, "no good checkpoint to resume from", "corrupted or truncated")
    assert _hashes(run) == before


def test_unreadable_manifest_fails_resume_with_a_clear_message(tmp_path, tiny_sets, finished_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "checkpoints" / "checkpoints.json").write_text("{not json")
    before = _hashes(run)
    result = _invoke(["train", "demo", "--out", str(run), "--resume", "--no-progress", *_args(tiny_sets + SHORT)])
    _assert_user_error(result, "checkpoint manifest", "is unreadable")
    assert _hashes(run) == before


# --------------------------------------------------------------------------------- DTME plans
def _tiny_model(tiny_sets: list[str]):
    trainer = Trainer(load_config("demo", overrides=tiny_sets + SHORT), "unused-never-written")
    return trainer.model


@pytest.mark.parametrize(
    "plan, fragment",
    [
        pytest.param({"tm": [7]}, r"plan layers \[7\] are out of range; this encoder has blocks 0..1", id="layer-high"),
        pytest.param({"te": [-1]}, "distinct indices >= 0", id="layer-negative"),
        pytest.param({"tm": [0, 0]}, "distinct indices >= 0", id="layer-twice"),
        pytest.param({"tm": [0], "tasks": ["semseg", "sky"]}, "the plan is for tasks", id="other-tasks"),
        pytest.param({"tm": [0], "bogus": 1}, "unknown plan keys", id="unknown-key"),
        pytest.param({"tm": [0], "split": ["9.mlp.fc2"]}, "unknown plan keys", id="split-is-not-a-plan-key"),
    ],
)
def test_dtme_plan_that_does_not_fit_the_model_is_rejected(tiny_sets, plan, fragment):
    from tokenmtl.dtme import Plan, expand

    model = _tiny_model(tiny_sets)
    data = {"tasks": list(model.tasks), "num_tokens": 2, **plan}
    with pytest.raises(ValueError, match=fragment):
        expand(model, Plan.from_dict(data))


def test_recon_split_of_a_missing_layer_is_rejected(tiny_sets):
    from tokenmtl.recon import split_layers

    with pytest.raises(ValueError, match="does not exist under encoder.blocks"):
        split_layers(_tiny_model(tiny_sets), ["9.mlp.fc2"])


def test_checkpoint_with_a_plan_that_does_not_fit_fails_evaluate_with_a_clear_message(
    tmp_path, tiny_sets, finished_run
):
    checkpoint = finished_run / "checkpoints" / read_manifest(finished_run / "checkpoints")[-1]["file"]
    state = torch.load(checkpoint, weights_only=True)
    state["dtme_plan"] = {"tm": [9], "te": [], "tasks": state["tasks"], "num_tokens": 2}
    bad = tmp_path / "bad-plan.pt"
    bad.write_bytes(_torch_bytes(state))
    result = _invoke(
        ["evaluate", "demo", "--checkpoint", str(bad), "--out", str(tmp_path / "eval"), *_args(tiny_sets + SHORT)]
    )
    _assert_user_error(result, "out of range")


# ------------------------------------------------------------------------------ NaN and Inf
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_tokens_are_rejected_by_the_token_covariance(value):
    from tokenmtl.dtme.token_space import TokenCovariance

    tokens = torch.randn(2, 5, 8)
    tokens[1, 3, 4] = value
    cov = TokenCovariance(8, name="3")
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        cov.update(tokens)
    assert cov.count == 0  # nothing half-added


@pytest.mark.parametrize("method", ["ew", "pcgrad", "dbmtl"])
def test_non_finite_loss_stops_the_run_keeping_the_last_good_checkpoint(tmp_path, tiny_sets, method):
    from tokenmtl.engine.callbacks import Callback

    class InfiniteNormalsWeight(Callback):  # from iteration 4 on, the normals loss is multiplied by inf
        def on_step_start(self, step, run):
            if step == 4:
                run.loss_weights["normals"] = float("inf")

    cfg = load_config("demo", overrides=tiny_sets + ["train.iterations=6", f"method.name={method}"])
    with pytest.raises(TrainingError, match=r"loss of task 'normals' became inf at iteration 4"):
        Trainer(cfg, tmp_path / "run", callbacks=[InfiniteNormalsWeight()]).run()
    entries = read_manifest(tmp_path / "run" / "checkpoints")
    assert [e["step"] for e in entries] == [3]
    assert not (tmp_path / "run" / "results.json").exists()


def test_non_finite_task_gradients_do_not_crash_the_aggregators_silently():
    """A gradient method given a NaN gradient matrix returns NaN (caught by the loss check next
    step) or raises; it never hangs (MGDA/Nash-MTL solve small problems)."""
    from tokenmtl import balancing

    grads = torch.randn(3, 20)
    grads[1, 4] = math.nan
    losses = torch.ones(3)
    for name in ("mgda", "pcgrad", "cagrad", "nashmtl", "dbmtl", "alignedmtl", "imtl"):
        balancer = balancing.create(name, 3)
        try:
            out = balancer.aggregate(grads.clone(), losses)
        except (ValueError, RuntimeError, ArithmeticError):
            continue
        assert out.shape == (20,)


# ---------------------------------------------------------------------------- empty datasets
def test_empty_scenes_training_split_fails_with_a_clear_message(tmp_path, tiny_sets):
    result = _invoke(
        [
            "train",
            "demo",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            *_args(tiny_sets + SHORT + ["benchmark.train_size=0"]),
        ]
    )
    _assert_user_error(result, "train")
    assert "empty" in result.stderr or "train_size" in result.stderr


def test_empty_evaluation_split_fails_with_a_clear_message(tmp_path, tiny_sets):
    result = _invoke(
        [
            "train",
            "demo",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            *_args(tiny_sets + SHORT + ["benchmark.val_size=0", "benchmark.test_size=0"]),
        ]
    )
    _assert_user_error(result)
    assert "empty" in result.stderr or "size" in result.stderr


def test_empty_nyud_split_file_fails_with_a_clear_message(tmp_path, tiny_sets):
    root = write_nyud(tmp_path / "data")
    (root / "gt_sets" / "train.txt").write_text("")
    config = tmp_path / "nyud.yaml"
    config.write_text(f"benchmark: {{name: nyud, root: {json.dumps(str(root))}, image_size: [32, 32]}}\n")
    sets = [s for s in tiny_sets if not s.startswith("benchmark.")] + SHORT[:3] + ["eval.batch_size=2"]
    result = _invoke(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress", *_args(sets)])
    _assert_user_error(result, "train")
    assert "empty" in result.stderr or "no samples" in result.stderr


# -------------------------------------------------------------------- one task, any method
@pytest.mark.parametrize(
    "method", ["mgda", "pcgrad", "cagrad", "nashmtl", "dbmtl", "alignedmtl", "imtl", "graddrop", "famo", "uw", "dwa"]
)
def test_one_task_run_with_a_balancing_method_trains_without_nan(tmp_path, tiny_sets, method):
    cfg = load_config(
        "demo",
        overrides=tiny_sets
        + ["train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2", f"method.name={method}"],
        extra={"tasks": ["depth"]},
    )
    trainer = Trainer(cfg, tmp_path / "run")
    results = trainer.run()
    assert set(results["tasks"]) == {"depth"}
    assert all(math.isfinite(v) for v in results["tasks"]["depth"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# --------------------------------------------------------------- the real command, no traceback
@pytest.mark.parametrize(
    "args, fragment",
    [
        pytest.param(["train", "demo", "--set", "train.iteration=5"], "unknown config key", id="bad-config"),
        pytest.param(["evaluate", "demo", "--checkpoint", "RANDOM"], "cannot be loaded", id="random-checkpoint"),
    ],
)
def test_command_line_prints_one_error_line_without_traceback(tmp_path, args, fragment):
    if "RANDOM" in args:
        random_file = tmp_path / "random.pt"
        random_file.write_bytes(os.urandom(2048))
        args = [str(random_file) if a == "RANDOM" else a for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    env.pop("TOKENMTL_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tokenmtl", *args, "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
