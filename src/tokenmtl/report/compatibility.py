"""Which runs may share one delta-m table: the same budget (iterations run), model and benchmark."""

from __future__ import annotations

from typing import Any

from tokenmtl.report.runs import RunRecord
from tokenmtl.report.settings import comparable_settings, differing_keys, flatten


class MixedComparisonError(ValueError):
    """Runs with different budgets, models or benchmarks were put in one delta-m table."""


ALLOW_HINT = (
    "compare runs of one budget, model and benchmark, or pass allow_mixed=True (tokenmtl compare --allow-mixed)"
)


def protocol_of(run: RunRecord) -> dict[str, Any]:
    """What a fair comparison must hold fixed: iterations run, the `model` and `benchmark` sections."""
    settings = comparable_settings(run.config)
    return {
        "iterations": run.iterations,
        "model": settings.get("model", {}),
        "benchmark": settings.get("benchmark", {}),
    }


def protocol_difference(a: RunRecord, b: RunRecord) -> str | None:
    """`None` when `a` and `b` share budget, model and benchmark; else e.g. 'iterations 600 vs 750'."""
    pa, pb = flatten(protocol_of(a)), flatten(protocol_of(b))
    keys = differing_keys([pa, pb])
    if not keys:
        return None
    return "; ".join(f"{k} {pa.get(k)!r} vs {pb.get(k)!r}" for k in keys)


def check_protocols(multi_task: list[RunRecord], single_task: list[RunRecord], allow_mixed: bool) -> list[str]:
    """Raise MixedComparisonError (one line) unless every run shares the first multi-task run's protocol.

    With `allow_mixed` nothing is raised; the differences are returned as notes for the caption.
    """
    runs = multi_task or single_task
    if not runs:
        return []
    anchor = runs[0]
    differing: dict[str, list[str]] = {}
    for run in multi_task[1:]:
        diff = protocol_difference(anchor, run)
        if diff is not None:
            if not allow_mixed:
                raise MixedComparisonError(
                    f"cannot put runs with different budgets, models or benchmarks in one Δm table: "
                    f"{diff} ({str(anchor.dir)!r} vs {str(run.dir)!r}); {ALLOW_HINT}"
                )
            differing.setdefault(diff, []).append(_short_name(run))
    for run in single_task if multi_task else single_task[1:]:
        diff = protocol_difference(anchor, run)
        if diff is None:
            continue
        if not allow_mixed:
            kind = "the single-task reference" if multi_task else "single-task runs"
            raise MixedComparisonError(
                f"{kind} {str(run.dir)!r} does not match the multi-task runs' budget, model or benchmark: "
                f"{diff} (vs {str(anchor.dir)!r}); {ALLOW_HINT}"
            )
        differing.setdefault(diff, []).append(_short_name(run))
    return [f"{diff} ({_short_name(anchor)} vs {', '.join(names)})" for diff, names in differing.items()]


def _short_name(run: RunRecord) -> str:
    """parent/name of the run folder: enough to tell `mt-ew/seed0` from `st-depth/seed0`."""
    return f"{run.dir.parent.name}/{run.dir.name}"
