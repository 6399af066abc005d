"""Single-task runs from a pretrained backbone against the same runs from scratch, seed by seed.

Each argument is a glob of finished single-task run folders (results.json names the task, the
primary metric, its direction and the seed). Runs of the two groups are paired by (task, seed);
the table gives both means ± std, the mean paired gain of the pretrained runs (positive = better,
in the metric's units) with its std, and on how many seeds pretrained was better.

    python benchmarks/pretrained_vs_scratch.py --scratch 'runs/sc500/scratch-*' \
        --pretrained 'runs/sc500/mim_geo10k-*' > benchmarks/results/scenes_pretrained_st.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from st_convergence import StRun, collect  # noqa: E402


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
    parser.add_argument("--scratch", nargs="+", required=True, help="glob(s) of the from-scratch runs")
    parser.add_argument("--pretrained", nargs="+", required=True, help="glob(s) of the pretrained runs")
    args = parser.parse_args(argv)
    scratch, pretrained = collect(args.scratch), collect(args.pretrained)
    if not scratch or not pretrained:
        print("error: no finished run matched --scratch or --pretrained", file=sys.stderr)
        return 2
    sys.stdout.write(report(scratch, pretrained))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
