"""Single-task runs from a pretrained backbone against the same runs from scratch, seed by seed.

Each argument is a glob of finished single-task run folders (results.json names the task, the
primary metric, its direction and the seed). Runs of the two groups are paired by (task, seed);
the table gives both means ± std, the mean paired gain of the pretrained runs (positive = better,
in the metric's units) with its std, and on how many seeds pretrained was better.

Each side may instead list candidate fine-tuning recipes as `LABEL=GLOB` (a label may repeat to
join globs). Then each side's recipe is chosen per task on the validation split (best mean of the
primary metric at the run's last validation, over its seeds) before the test comparison, so that
neither side is compared with a recipe tuned on test; a second table lists the choices.

    python benchmarks/pretrained_vs_scratch.py --scratch 'runs/sc500/scratch-*' \
        --pretrained 'runs/sc500/mim_geo10k-*' > benchmarks/results/scenes_pretrained_st.md
    python benchmarks/pretrained_vs_scratch.py --scratch 'config=runs/s/seed*' 'low-lr=runs/s-lr/seed*' \
        --pretrained 'config=runs/p/seed*' 'low-lr=runs/p-lr/seed*'
"""

from __future__ import annotations

import argparse
import csv
import glob
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from st_convergence import StRun, collect, read_run  # noqa: E402


def last_val(folder: Path, task: str, metric: str) -> float:
    """The run's primary metric at its last validation (metrics.csv rows `step,val,task/metric,value`)."""
    value, step = None, -1
    with open(folder / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["phase"] == "val" and row["key"] == f"{task}/{metric}" and int(row["step"]) >= step:
                value, step = float(row["value"]), int(row["step"])
    if value is None:
        raise ValueError(f"{folder}: no validation of {task}/{metric} in metrics.csv")
    return value


def candidates(specs: list[str]) -> dict[str, list[Path]]:
    """`LABEL=GLOB` specs (a plain glob is its own label) -> finished run folders per label."""
    found: dict[str, list[Path]] = defaultdict(list)
    for spec in specs:
        label, _, pattern = spec.partition("=") if "=" in spec else (spec, "", spec)
        found[label].extend(Path(p) for p in sorted(glob.glob(pattern)) if (Path(p) / "results.json").is_file())
    return dict(found)


def choose_on_val(recipes: dict[str, list[Path]]) -> tuple[list[StRun], dict[str, tuple[str, float, int]]]:
    """Per task, the runs of the recipe with the best mean validation score, and (label, val mean, seeds)."""
    scores: dict[str, dict[str, list[tuple[StRun, float]]]] = defaultdict(lambda: defaultdict(list))
    for label, folders in recipes.items():
        for folder in folders:
            run = read_run(folder)
            scores[run.task][label].append((run, last_val(folder, run.task, run.metric)))
    chosen_runs: list[StRun] = []
    chosen: dict[str, tuple[str, float, int]] = {}
    for task, by_label in scores.items():
        lower = next(iter(by_label.values()))[0][0].lower_is_better
        means = {label: statistics.mean(v for _, v in runs) for label, runs in by_label.items()}
        best = min(means, key=means.get) if lower else max(means, key=means.get)
        chosen[task] = (best, means[best], len(by_label[best]))
        chosen_runs.extend(run for run, _ in by_label[best])
    return chosen_runs, chosen


def choices_table(scratch: dict[str, tuple[str, float, int]], pretrained: dict[str, tuple[str, float, int]]) -> str:
    """Markdown: per task, the recipe each side chose on val and its mean val score."""
    lines = [
        "| task | scratch recipe (val mean, seeds) | pretrained recipe (val mean, seeds) |",
        "|---|---|---|",
    ]
    for task in sorted(set(scratch) | set(pretrained)):
        cells = [f"{c[0]} ({c[1]:.3f}, {c[2]})" if c else "-" for c in (scratch.get(task), pretrained.get(task))]
        lines.append(f"| {task} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _gain(scratch: StRun, pretrained: StRun) -> float:
    """Positive when the pretrained run is better."""
    if scratch.lower_is_better:
        return scratch.value - pretrained.value
    return pretrained.value - scratch.value


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def report(scratch: list[StRun], pretrained: list[StRun]) -> str:
    """Markdown table, one row per task."""
    groups: dict[str, dict[str, dict[int, StRun]]] = defaultdict(lambda: {"scratch": {}, "pretrained": {}})
    for name, runs in (("scratch", scratch), ("pretrained", pretrained)):
        for run in runs:
            groups[run.task][name][run.seed] = run
    lines = [
        "| task | metric | seeds | scratch | pretrained | pretrained gain (paired) | pretrained better on |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in sorted(groups):
        pair = groups[task]
        seeds = sorted(set(pair["scratch"]) & set(pair["pretrained"]))
        if not seeds:
            continue
        first = pair["scratch"][seeds[0]]
        gains = [_gain(pair["scratch"][s], pair["pretrained"][s]) for s in seeds]
        arrow = "↓" if first.lower_is_better else "↑"
        lines.append(
            f"| {task} | {first.metric} {arrow} | {','.join(map(str, seeds))} "
            f"| {_mean_std([pair['scratch'][s].value for s in seeds])} "
            f"| {_mean_std([pair['pretrained'][s].value for s in seeds])} "
            f"| {_mean_std(gains)} | {sum(g > 0 for g in gains)}/{len(seeds)} seeds |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scratch", nargs="+", required=True, help="glob(s) or LABEL=GLOB recipes, from scratch")
    parser.add_argument("--pretrained", nargs="+", required=True, help="glob(s) or LABEL=GLOB recipes, pretrained")
    args = parser.parse_args(argv)
    if not any("=" in spec for spec in args.scratch + args.pretrained):
        scratch, pretrained = collect(args.scratch), collect(args.pretrained)
        if not scratch or not pretrained:
            print("error: no finished run matched --scratch or --pretrained", file=sys.stderr)
            return 2
        sys.stdout.write(report(scratch, pretrained))
        return 0
    scratch_recipes, pretrained_recipes = candidates(args.scratch), candidates(args.pretrained)
    if not any(scratch_recipes.values()) or not any(pretrained_recipes.values()):
        print("error: no finished run matched --scratch or --pretrained", file=sys.stderr)
        return 2
    scratch, scratch_choice = choose_on_val(scratch_recipes)
    pretrained, pretrained_choice = choose_on_val(pretrained_recipes)
    sys.stdout.write(report(scratch, pretrained) + "\n" + choices_table(scratch_choice, pretrained_choice))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
