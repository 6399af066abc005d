"""results.json: metrics, parameter counts, the edits applied, timing and the settings hash."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenmtl.engine.edits import EDIT_KINDS, edit_kind
from tokenmtl.engine.run import Run, count_parameters


def settings_hash_of(run: Run) -> str:
    """Hash of the resolved config minus seed, name, output and logging keys (`report.settings`),
    so `tokenmtl compare` groups runs by what they computed, not by their labels."""
    from tokenmtl.report.settings import settings_hash

    return settings_hash(run.cfg.to_dict(), run.tasks)


def build_results(
    run: Run, metrics: Mapping[str, Mapping[str, float]], split: str, timing: Mapping[str, Any], edit_step: int | None
) -> dict[str, Any]:
    """results.json (README format, plus what `compare` needs: primary metrics, settings hash)."""
    cfg = run.cfg
    results: dict[str, Any] = {
        "tasks": {t: dict(m) for t, m in metrics.items()},
        "delta_m": None,
        "params": {"total": count_parameters(run.model), **run.added_parameters()},
        "method": cfg.method.name,
    }
    for name in list(EDIT_KINDS) + [n for n in run.records if n not in EDIT_KINDS]:
        kind = run.edit_types.get(name) or edit_kind(name)
        results[name] = kind.describe(run.records.get(name), edit_step)
    results.update(
        {
            "timing": dict(timing),
            "iterations": timing.get("iterations"),
            "benchmark": cfg.benchmark.name,
            "split": split,
            "seed": int(cfg.train.seed),
            "primary": {t: [s.primary_metric, bool(s.lower_is_better)] for t, s in run.specs.items()},
            "loss_weights": dict(run.loss_weights),
            "name": cfg.name,
            "settings_hash": settings_hash_of(run),
        }
    )
    return results
