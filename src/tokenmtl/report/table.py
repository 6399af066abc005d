"""Comparison tables: per-task primary metrics and delta-m of several runs against single-task runs."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenmtl.metrics.delta_m import delta_m


@dataclass
class RunGroup:
    """Runs that differ only by seed: one row of the table."""

    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return list(self.runs[0]["tasks"])


def find_results(paths: list[str | Path]) -> list[Path]:
    """results.json files under the given run folders (a folder of run folders is searched too)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == "results.json":
            found.append(path)
        elif (path / "results.json").is_file():
            found.append(path / "results.json")
        elif path.is_dir():
            found.extend(sorted(path.glob("**/results.json")))
        else:
            raise FileNotFoundError(f"no run folder or results.json at {str(path)!r}")
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}")
    return found


def load_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every results.json under `paths`, each with its folder under key `dir`."""
    runs = []
    for path in find_results(paths):
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {str(path)!r}: {err}") from None
        run["dir"] = str(path.parent)
        runs.append(run)
    return runs


def run_label(run: dict[str, Any]) -> str:
    """A row label: the config's name, else method (+DTME mode), with ST runs as `ST`."""
    if len(run["tasks"]) == 1:
        return "ST"
    if run.get("name"):
        return str(run["name"])
    label = str(run.get("method", "ew")).upper()
    if run.get("dtme"):
        tm, te = run["dtme"].get("tm"), run["dtme"].get("te")
        parts = (["TM"] if tm else []) + (["TE"] if te else [])
        label += " + " + ("+".join(parts) if parts else "DTME(empty)")
    return label


def single_task_reference(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task, the seed-mean metrics of the single-task runs."""
    by_task: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        if len(run["tasks"]) == 1:
            (task, metrics), = run["tasks"].items()
            by_task.setdefault(task, []).append(metrics)
    return {task: {k: statistics.fmean(m[k] for m in ms) for k in ms[0]} for task, ms in by_task.items()}


def primary_of(runs: list[dict[str, Any]]) -> dict[str, tuple[str, bool]]:
    """Primary (metric, lower_is_better) per task, as the runs recorded it."""
    primary: dict[str, tuple[str, bool]] = {}
    for run in runs:
        for task, (metric, lower) in run.get("primary", {}).items():
            primary.setdefault(task, (metric, bool(lower)))
    return primary


@dataclass
class Row:
    label: str
    seeds: int
    metrics: dict[str, tuple[float, float]]  # task -> (mean, std) of the primary metric
    delta_m: tuple[float, float] | None
    params: int
    added: int


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def build_rows(runs: list[dict[str, Any]]) -> tuple[list[Row], list[str], dict[str, tuple[str, bool]]]:
    """Rows (ST first, then multi-task groups in first-seen order), the task list, primary metrics."""
    primary = primary_of(runs)
    reference = single_task_reference(runs)
    groups: dict[str, RunGroup] = {}
    for run in runs:
        if len(run["tasks"]) > 1:
            label = run_label(run)
            groups.setdefault(label, RunGroup(label)).runs.append(run)
    tasks = next((g.tasks for g in groups.values()), sorted(reference))
    rows: list[Row] = []
    st_runs = [r for r in runs if len(r["tasks"]) == 1]
    if st_runs:
        metrics = {}
        for task in tasks:
            values = [r["tasks"][task][primary[task][0]] for r in st_runs if task in r["tasks"]]
            if values:
                metrics[task] = mean_std(values)
        seeds = max((sum(1 for r in st_runs if task in r["tasks"]) for task in tasks), default=0)
        rows.append(Row("ST", seeds, metrics, (0.0, 0.0) if set(tasks) <= set(reference) else None,
                        sum(r["params"]["total"] for r in st_runs if next(iter(r["tasks"])) in tasks)
                        // max(seeds, 1), 0))
    for group in groups.values():
        metrics = {t: mean_std([r["tasks"][t][primary[t][0]] for r in group.runs]) for t in group.tasks}
        dm = None
        if set(group.tasks) <= set(reference):
            dm = mean_std([delta_m(r["tasks"], reference, {t: primary[t] for t in group.tasks}) for r in group.runs])
        rows.append(Row(group.label, len(group.runs), metrics, dm,
                        group.runs[0]["params"]["total"], group.runs[0]["params"].get("added_by_dtme", 0)))
    return rows, tasks, primary


def _fmt(value: tuple[float, float], seeds: int, digits: int = 4) -> str:
    mean, std = value
    return f"{mean:.{digits}g} ± {std:.2g}" if seeds > 1 else f"{mean:.{digits}g}"


def to_markdown(rows: list[Row], tasks: list[str], primary: dict[str, tuple[str, bool]]) -> str:
    """A markdown table: one column per task's primary metric (arrow = better direction), delta-m."""
    header = ["run", "seeds"] + [f"{t} {primary[t][0]} {'↓' if primary[t][1] else '↑'}" for t in tasks] + \
             ["Δm % ↑", "params", "+DTME params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label, str(row.seeds)]
        cells += [_fmt(row.metrics[t], row.seeds) if t in row.metrics else "-" for t in tasks]
        cells.append(f"{row.delta_m[0]:+.2f} ± {row.delta_m[1]:.2f}" if row.delta_m and row.seeds > 1
                     else f"{row.delta_m[0]:+.2f}" if row.delta_m else "-")
        cells += [f"{row.params:,}", f"{row.added:,}" if row.added else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
