"""What `tokenmtl evaluate` and `tokenmtl analyze` do, as functions (also `tokenmtl.evaluate`,
`tokenmtl.analyze`): a checkpoint and its config in, results or a conflict report out.

Neither builds an optimizer; evaluation never builds the training split, and analysis reads only
the un-augmented training batches it analyses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenmtl.config import Config
from tokenmtl.engine.checkpoint import load_checkpoint
from tokenmtl.engine.evaluate import evaluate as evaluate_model
from tokenmtl.engine.results import build_results
from tokenmtl.engine.run import Run, build_run, load_weights, run_config
from tokenmtl.fileio import atomic_write_text


def checkpoint_and_config(
    target: str | Path | Mapping[str, Any], checkpoint: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[dict[str, Any] | None, Config]:
    """(checkpoint state or None, config) from a run folder (its newest good checkpoint, unless
    `checkpoint` names one, and the config it was trained with) or from a config + `checkpoint`."""
    from tokenmtl.config import load_config

    if not isinstance(target, Mapping) and Path(target).is_dir():
        path, state, cfg = run_config(target, overrides)
        if checkpoint is not None:
            state = load_checkpoint(checkpoint)
        return state, cfg
    cfg = target if isinstance(target, Config) and not overrides else load_config(target, overrides=overrides)
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    return state, cfg


def load_run(state: Mapping[str, Any] | None, cfg: Config, need_train: bool = False, progress: bool = False) -> Run:
    """The run of `cfg` with the checkpoint's tasks, edits and weights (none: a fresh model)."""
    if state is not None and state.get("tasks"):
        cfg.tasks = list(state["tasks"])
    run = build_run(cfg, need_train=need_train, progress=progress)
    if state is not None:
        run.restore_edits(state)
        load_weights(run.model, state["model"])
    return run


def evaluate_checkpoint(
    target: str | Path | Mapping[str, Any],
    checkpoint: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of a checkpoint on `split` as results.json content (written to `out`/results.json)."""
    state, cfg = checkpoint_and_config(target, checkpoint, overrides)
    if state is None:
        raise ValueError("evaluate needs a checkpoint: give a run folder, or a config and --checkpoint")
    run = load_run(state, cfg, progress=progress)
    metrics = evaluate_model(
        run.model, run.eval_loader(split), run.specs, run.device, progress=progress, desc=f"eval {split}"
    )
    results = build_results(run, metrics, split, {"iterations": int(state["step"])}, state.get("edit_step"))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "results.json", json.dumps(results, indent=1))
    return results


def analyze_checkpoint(
    target: str | Path | Mapping[str, Any],
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    num_batches: int | None = None,
    progress: bool = False,
) -> tuple[Any, Any]:
    """Token-space conflict report and DTME plan of a checkpoint (or a fresh model of the config);
    writes conflicts.json, plan.json and plots into `out`. Same function as training's analysis.

    A checkpoint from after an edit (a DTME run's final checkpoint, Recon) is analysed as the
    edited model it holds (docs/method.md, "Conflicts in an expanded model"): the run builder
    restores the edits, the report covers the per-task streams, and for a DTME checkpoint the plan
    returned and plotted is the run's own (no new plan.json is written)."""
    from tokenmtl.engine.dtme_edit import analyse_and_plan

    state, cfg = checkpoint_and_config(target, checkpoint, overrides)
    if state is not None and cfg.tasks is not None and state.get("tasks") not in (None, cfg.tasks):
        raise ValueError(f"checkpoint tasks {state.get('tasks')} differ from the config's {cfg.tasks}")
    run = load_run(state, cfg, progress=progress)
    return analyse_and_plan(
        run.model,
        run.analysis_loader(),
        run.loss_fn,
        cfg.dtme,
        device=run.device,
        out=Path(out) if out is not None else None,
        progress=progress,
        num_batches=num_batches,
    )
