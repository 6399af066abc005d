"""Per-step hooks of the training loop: work a method needs after a step, and what is logged.

A callback sees the loop through `StepEvent` (the step, the batch, the losses and the driver's
result) and the `Run` (model, loss function); the trainer calls every callback in order at the
start and at the end of each optimisation step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepEvent:
    """One optimisation step: `step` is its 0-based index (the step count is `step + 1` after it)."""

    step: int
    batch: Mapping[str, Any]
    inputs: Any
    losses: dict[str, float]
    backward: Any = None  # what GradDriver.backward returned (task_weights when it has them)
    lr: float = 0.0


class Callback:
    """Base: override what you need. `run` is the trainer's `engine.run.Run`; `driver` its GradDriver."""

    def on_step_start(self, step: int, run: Any) -> None:
        """Before the batch of step `step` is forwarded."""

    def on_step_end(self, event: StepEvent, run: Any, driver: Any) -> None:
        """After the optimizer step of `event.step`."""

    def scalars(self, event: StepEvent, run: Any) -> dict[str, float]:
        """Scalars to log with the step's training losses (metrics.csv and TensorBoard)."""
        return {}


class ReevaluateLosses(Callback):
    """Methods that need the losses of the same batch after the update (FAMO) get them here."""

    def on_step_end(self, event: StepEvent, run: Any, driver: Any) -> None:
        if getattr(driver, "needs_reevaluation", False) and not getattr(event.backward, "skipped", False):
            # same precision as the step's own losses; a step the loss scaler skipped taught nothing
            autocast = getattr(run, "autocast", contextlib.nullcontext)
            with torch.no_grad(), autocast():
                after = run.loss_fn(run.model(event.inputs), event.batch)
            driver.after_step(after)


class TrainingSignals(Callback):
    """Logs the balancer's task weights (when the driver reports them) and the signals of every
    applied model edit (DTME: each task's added-parameter norm)."""

    def scalars(self, event: StepEvent, run: Any) -> dict[str, float]:
        values: dict[str, float] = {}
        weights = getattr(event.backward, "task_weights", None)
        if isinstance(weights, Mapping):
            values.update({f"weight/{t}": float(w) for t, w in weights.items()})
        for name, kind in run.edit_types.items():
            values.update({f"{name}/{k}": v for k, v in kind.signals(run.model).items()})
        return values


def default_callbacks() -> list[Callback]:
    """What every run uses: the re-evaluation hook, then the logged training signals."""
    return [ReevaluateLosses(), TrainingSignals()]
