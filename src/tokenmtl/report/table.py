"""Comparison tables: one row per setting (its seeds averaged), delta-m against single-task runs.

Rows are settings (resolved configs equal except seed, name, output and log keys: see
`report/settings.py`), so ablations never average together. Runs with different budgets,
models or benchmarks are refused unless `allow_mixed` (`report/compatibility.py`). Each seed's
delta-m is computed against the single-task run of the same seed when there is one (paired),
else against the seed-mean single-task metrics; the caption says which.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenmtl.metrics.delta_m import delta_m
from tokenmtl.report.compatibility import check_protocols, protocol_difference
from tokenmtl.report.grouping import Setting, assign_labels, group_settings
from tokenmtl.report.runs import RunRecord

Primary = dict[str, tuple[str, bool]]


@dataclass
class Row:
    """One table row: a multi-task setting over its seeds, or the single-task reference models."""

    label: str
    kind: str  # "ST" or "MT"
    seeds: list[int]
    iterations: list[int]  # distinct iterations run by its runs
    metrics: dict[str, tuple[float, float]]  # task -> (mean, std) of the primary metric
    delta_m: tuple[float, float] | None  # (mean, std) over seeds of per-seed delta-m
    delta_m_per_seed: list[float] = field(default_factory=list)
    task_change: dict[str, float] = field(default_factory=dict)  # mean % change vs ST (positive = better)
    pairing: str | None = None  # "paired", "seed-mean" or "partly paired"
    params: int = 0
    added_by_dtme: int = 0
    added_by_recon: int = 0
    wall_seconds: tuple[float, float] = (0.0, 0.0)  # per run (ST row: the ST models summed)
    dirs: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """Rows, the task columns, each task's primary (metric, lower_is_better), and mixed-run notes."""

    rows: list[Row]
    tasks: list[str]
    primary: Primary
    notes: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return to_markdown(self.rows, self.tasks, self.primary, self.notes)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def primary_of(runs: list[RunRecord]) -> Primary:
    """Primary (metric, lower_is_better) per task, as the runs recorded it."""
    primary: Primary = {}
    for run in runs:
        for task, (metric, lower) in run.results.get("primary", {}).items():
            primary.setdefault(task, (metric, bool(lower)))
    missing = sorted({t for r in runs for t in r.tasks} - set(primary))
    if missing:
        raise ValueError(f"no run records the primary metric of task(s) {missing} (results.json 'primary')")
    return primary


def _reference_settings(row: Setting, single: list[Setting]) -> dict[str, Setting]:
    """Per task of `row`, the single-task setting it is measured against (one per task, or an error)."""
    chosen: dict[str, Setting] = {}
    for task in row.tasks:
        candidates = [s for s in single if s.tasks == [task]]
        if len(candidates) > 1:  # prefer the references of the same budget, model and benchmark
            same = [s for s in candidates if protocol_difference(s.first, row.first) is None]
            candidates = same or candidates
        if len(candidates) > 1:
            raise ValueError(
                f"{len(candidates)} different single-task settings for task {task!r} "
                f"({'; '.join(s.label for s in candidates)}); pass only one as the reference"
            )
        if candidates:
            chosen[task] = candidates[0]
    return chosen


def _seed_mean(setting: Setting, task: str, metric: str) -> float:
    return statistics.fmean(r.metric(task, metric) for r in setting.runs)


def _multi_task_row(setting: Setting, single: list[Setting], primary: Primary) -> Row:
    refs = _reference_settings(setting, single)
    tasks = setting.tasks
    complete = set(refs) == set(tasks)
    per_seed: list[float] = []
    changes: dict[str, list[float]] = {t: [] for t in refs}
    paired = 0
    for run in setting.runs:
        twins = {t: refs[t].run_of_seed(run.seed) for t in refs}
        is_paired = complete and all(twins.values())
        reference = {
            t: (
                {primary[t][0]: twins[t].metric(t, primary[t][0])}
                if is_paired
                else {primary[t][0]: _seed_mean(refs[t], t, primary[t][0])}
            )
            for t in refs
        }
        paired += is_paired
        for t in refs:
            changes[t].append(delta_m(run.results["tasks"], reference, {t: primary[t]}))
        if complete:
            per_seed.append(delta_m(run.results["tasks"], reference, {t: primary[t] for t in tasks}))
    pairing = None
    if complete:
        pairing = "paired" if paired == len(setting.runs) else "seed-mean" if paired == 0 else "partly paired"
    first = setting.first
    return Row(
        label=setting.label,
        kind="MT",
        seeds=setting.seeds,
        iterations=sorted({r.iterations for r in setting.runs}),
        metrics={t: mean_std([r.metric(t, primary[t][0]) for r in setting.runs]) for t in tasks},
        delta_m=mean_std(per_seed) if per_seed else None,
        delta_m_per_seed=per_seed,
        task_change={t: statistics.fmean(v) for t, v in changes.items()},
        pairing=pairing,
        params=first.param("total"),
        added_by_dtme=first.param("added_by_dtme"),
        added_by_recon=first.param("added_by_recon"),
        wall_seconds=mean_std([r.wall_seconds for r in setting.runs]),
        dirs=[str(r.dir) for r in setting.runs],
    )


def _single_task_rows(single: list[Setting], tasks: list[str], primary: Primary) -> list[Row]:
    """One row per group of single-task settings sharing budget, model and benchmark (usually one)."""
    groups: list[list[Setting]] = []
    for setting in single:
        group = next((g for g in groups if protocol_difference(g[0].first, setting.first) is None), None)
        if group is None:
            groups.append([setting])
        else:
            group.append(setting)
    rows = []
    for group in groups:
        by_task: dict[str, Setting] = {}
        for setting in group:
            task = setting.tasks[0]
            if task in by_task:
                raise ValueError(
                    f"2 different single-task settings for task {task!r} with the same budget "
                    f"({by_task[task].label}; {setting.label}); pass only one as the reference"
                )
            by_task[task] = setting
        label = "ST" if len(groups) == 1 else f"ST ({group[0].first.iterations} it)"
        walls = [mean_std([r.wall_seconds for r in s.runs]) for s in by_task.values()]
        rows.append(
            Row(
                label=label,
                kind="ST",
                seeds=sorted({seed for s in group for seed in s.seeds}),
                iterations=sorted({r.iterations for s in group for r in s.runs}),
                metrics={t: mean_std([r.metric(t, primary[t][0]) for r in s.runs]) for t, s in by_task.items()},
                delta_m=(0.0, 0.0) if set(tasks) <= set(by_task) else None,
                params=sum(round(statistics.fmean(r.param("total") for r in s.runs)) for s in by_task.values()),
                wall_seconds=(sum(w[0] for w in walls), math.sqrt(sum(w[1] ** 2 for w in walls))),
                dirs=[str(r.dir) for s in group for r in s.runs],
            )
        )
    return rows


def build_comparison(runs: list[RunRecord], allow_mixed: bool = False) -> Comparison:
    """The comparison of `runs`: ST row(s) first, then one row per multi-task setting (first seen first).

    Raises MixedComparisonError when budgets, models or benchmarks differ and not `allow_mixed`.
    """
    if not runs:
        raise ValueError("no runs to compare")
    primary = primary_of(runs)
    settings = group_settings(runs)
    assign_labels(settings)
    multi = [s for s in settings if not s.is_single_task]
    single = [s for s in settings if s.is_single_task]
    notes = check_protocols([r for s in multi for r in s.runs], [r for s in single for r in s.runs], allow_mixed)
    tasks = list(dict.fromkeys(t for s in (multi or single) for t in s.tasks))
    rows = _single_task_rows(single, tasks, primary) + [_multi_task_row(s, single, primary) for s in multi]
    return Comparison(rows, tasks, primary, notes)


def _fmt(value: tuple[float, float], seeds: int, digits: int = 4) -> str:
    mean, std = value
    return f"{mean:.{digits}g} ± {std:.2g}" if seeds > 1 else f"{mean:.{digits}g}"


def _delta_text(row: Row) -> str:
    if row.delta_m is None:
        return "-"
    mean, std = row.delta_m
    return f"{mean:+.2f} ± {std:.2f}" if len(row.delta_m_per_seed) > 1 else f"{mean:+.2f}"


def caption(rows: list[Row], notes: Sequence[str] = ()) -> str:
    """What the numbers are: rows = settings, mean ± std over seeds, and how delta-m was paired."""
    lines = [
        (
            "Rows are settings (resolved configs equal except train.seed, name, output and log keys); "
            "cells are mean ± sample std over seeds."
        )
    ]
    by_pairing: dict[str, list[str]] = {}
    for row in rows:
        if row.kind == "MT" and row.pairing:
            by_pairing.setdefault(row.pairing, []).append(row.label)
    texts = {
        "paired": "against the single-task run of the same seed (paired)",
        "seed-mean": "against the seed-mean of the single-task runs (no single-task run of that seed)",
        "partly paired": "paired where a single-task run of the same seed exists, else against the ST seed-mean",
    }
    if len(by_pairing) == 1:
        ((kind, _),) = by_pairing.items()
        lines.append(f"Δm of each seed {texts[kind]}, then mean ± std over seeds.")
    else:
        for kind, labels in by_pairing.items():
            lines.append(f"Δm of each seed {texts[kind]}: {', '.join(labels)}.")
    if any(r.kind == "ST" for r in rows):
        lines.append(
            "ST row: the single-task models together (params and wall time summed over tasks). "
            "Wall time = train + DTME/Recon edit + final evaluation seconds per run."
        )
    if notes:
        lines.append(
            "MIXED (allow_mixed): these runs differ in budget, model or benchmark, so their Δm are "
            "not comparable: " + "; ".join(notes) + "."
        )
    return "\n".join(lines)


def to_markdown(rows: list[Row], tasks: list[str], primary: Primary, notes: Sequence[str] = ()) -> str:
    """Markdown table (arrow = better direction of each task's primary metric) and its caption."""
    header = (
        ["run", "seeds", "iterations"]
        + [f"{t} {primary[t][0]} {'↓' if primary[t][1] else '↑'}" for t in tasks]
        + ["Δm % ↑", "params", "+DTME params", "+Recon params", "wall s/run"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        n = len(row.seeds)
        cells = [row.label, str(len(row.seeds)), "/".join(map(str, row.iterations))]
        cells += [_fmt(row.metrics[t], n) if t in row.metrics else "-" for t in tasks]
        cells.append(_delta_text(row))
        cells += [
            f"{row.params:,}",
            f"{row.added_by_dtme:,}" if row.added_by_dtme else "-",
            f"{row.added_by_recon:,}" if row.added_by_recon else "-",
            _fmt(row.wall_seconds, n, 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + caption(rows, notes) + "\n"
