"""Learning-rate schedules stepped per iteration (the InvPT/DTME polynomial schedule by default),
and a run's schedule around a model edit (DTME's expansion, Recon's branching)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def lr_factor(kind: str, total: int, power: float = 0.9, warmup: int = 0) -> Callable[[int], float]:
    """Multiplier of the base LR at iteration `it` of `total`.

    poly: (1 - it/total)^power (InvPT `PolynomialLR`, min_lr 0); cosine: 0.5(1+cos(pi it/total));
    constant: 1. A linear warm-up over `warmup` iterations multiplies any of them.
    """
    if total <= 0:
        raise ValueError(f"a schedule needs total > 0 iterations, got {total}")

    def factor(it: int) -> float:
        frac = min(max(it, 0), total) / total
        if kind == "poly":
            value = (1.0 - frac) ** power
        elif kind == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * frac))
        elif kind == "constant":
            value = 1.0
        else:
            raise ValueError(f"unknown lr schedule {kind!r}; available: poly, cosine, constant")
        if warmup > 0 and it < warmup:
            value *= (it + 1) / warmup
        return value

    return factor


@dataclass
class Schedule:
    """Where a run is: iterations before the model edit (if any), then `post_iterations` after it."""

    iterations: int
    expand_step: int | None  # None: no edit
    post_iterations: int

    @classmethod
    def from_edits(cls, iterations: int, edits: Sequence[Any]) -> Schedule:
        """All edits apply at one step; one that restarts the schedule (DTME `post_iterations: full`,
        the paper's protocol) runs the whole schedule again after it, else the rest of it."""
        if not edits:
            return cls(iterations, None, 0)
        steps = sorted({int(e.step) for e in edits})
        if len(steps) > 1:
            names = ", ".join(f"{e.name} at {e.step}" for e in edits)
            raise ValueError(f"model edits must apply at one step; got {names}")
        restart = any(e.restarts_schedule for e in edits)
        return cls(iterations, steps[0], iterations if restart else iterations - steps[0])

    @property
    def total(self) -> int:
        """Iterations the run executes in all."""
        return self.iterations if self.expand_step is None else self.expand_step + self.post_iterations

    def lr_position(self, step: int) -> tuple[int, int]:
        """(iteration within the LR schedule, schedule length) at global `step`.

        Paper protocol (`post_iterations: full`): after the edit the schedule restarts and runs
        the full planned length; `remaining` continues the original schedule.
        """
        if self.expand_step is None or step < self.expand_step or self.post_iterations != self.iterations:
            return step, self.iterations
        return step - self.expand_step, self.post_iterations
