"""Have single-task runs converged? Compare runs at a budget against longer runs of the same task.

A task counts as converged at the short budget when the longer run improves on the short run of
the same seed by less than the short runs' seed standard deviation (the test issue 9 sets).
Every run is a finished single-task run folder (its `results.json` names the task, the primary
metric and its direction, the seed and the iterations run).

    python benchmarks/st_convergence.py --short 'runs/pk4k/st-*/seed*' \
        --long 'runs/probe/ts4000-*-1200' > benchmarks/results/packages_convergence.md
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StRun:
    """The test score of one finished single-task run."""

    task: str
    metric: str
    lower_is_better: bool
    seed: int
    iterations: int
    value: float


def read_run(folder: Path) -> StRun:
    """The run's task, primary metric, direction, seed, iterations and test value."""
    results = json.loads((folder / "results.json").read_text())
    if len(results["tasks"]) != 1:
        raise ValueError(f"{folder}: not a single-task run (tasks {sorted(results['tasks'])})")
    ((task, metrics),) = results["tasks"].items()
    metric, lower = results["primary"][task]
    return StRun(task, metric, bool(lower), int(results["seed"]), int(results["iterations"]), float(metrics[metric]))


def collect(patterns: list[str]) -> list[StRun]:
    """Every finished run matched by the glob patterns (folders without results.json are skipped)."""
    folders = sorted({Path(p) for pattern in patterns for p in glob.glob(pattern)})
    return [read_run(f) for f in folders if (f / "results.json").is_file()]


def report(short: list[StRun], long: list[StRun]) -> str:
    """Markdown table: per task, short-budget mean ± std, longer runs, gain per seed, verdict."""
    by_task: dict[str, list[StRun]] = defaultdict(list)
    for run in short:
        by_task[run.task].append(run)
    longer: dict[str, list[StRun]] = defaultdict(list)
    for run in long:
        longer[run.task].append(run)
    lines = [
        "| task | metric | short budget: its, seeds | mean ± std | longer: its, seed, value "
        "| gain over the same seed | converged? |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in sorted(by_task):
        runs = sorted(by_task[task], key=lambda r: r.seed)
        values = [r.value for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        for other in sorted(longer.get(task, []), key=lambda r: (r.iterations, r.seed)):
            same = next((r for r in runs if r.seed == other.seed), None)
            gain = float("nan") if same is None else _gain(same, other)
            verdict = "n/a" if same is None or std != std else ("yes" if gain < std else "no")
            arrow = "↓" if runs[0].lower_is_better else "↑"
            lines.append(
                f"| {task} | {runs[0].metric} {arrow} | {runs[0].iterations}, {','.join(str(r.seed) for r in runs)} "
                f"| {statistics.mean(values):.3f} ± {std:.3f} | {other.iterations}, {other.seed}, {other.value:.3f} "
                f"| {gain:+.3f} | {verdict} |"
            )
    lines.append("")
    lines.append(
        "Gain: how much better the longer run scores than the short run of the same seed (in the "
        "metric's units; negative = worse). Converged: the gain is below the short runs' seed std."
    )
    return "\n".join(lines) + "\n"


def _gain(short: StRun, long: StRun) -> float:
    """Positive when the longer run is better than the short run."""
    return short.value - long.value if short.lower_is_better else long.value - short.value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", nargs="+", required=True, help="glob(s) of the runs at the budget checked")
    parser.add_argument("--long", nargs="+", required=True, help="glob(s) of the longer runs")
    args = parser.parse_args(argv)
    short, long = collect(args.short), collect(args.long)
    if not short or not long:
        print("error: no finished run matched --short or --long", file=sys.stderr)
        return 2
    sys.stdout.write(report(short, long))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
