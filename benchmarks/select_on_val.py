"""Choose a hyperparameter on the validation split: Δm of each candidate run against ST runs, on val.

Training logs the validation metrics at every `train.eval_every` step in `metrics.csv` (phase
`val`); this reads the last logged validation row of each run, computes Δm against the ST runs'
last validation rows (same seed), and prints a table, best first. The test split (results.json)
is not read, so the choice is made without looking at the numbers that are reported.

    python benchmarks/select_on_val.py --st runs/ev/st-*/seed0 --runs lr1=runs/a lr10=runs/b lr30=runs/c
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from tokenmtl.metrics import delta_m


def last_val_metrics(run: Path) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the last `val` row group in the run's metrics.csv."""
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["phase"] == "val"]
    if not rows:
        raise ValueError(f"{run}/metrics.csv has no validation rows (is train.eval_every <= iterations?)")
    last = max(int(r["step"]) for r in rows)
    metrics: dict[str, dict[str, float]] = {}
    for row in rows:
        if int(row["step"]) == last:
            task, metric = row["key"].split("/", 1)
            metrics.setdefault(task, {})[metric] = float(row["value"])
    return metrics


def val_delta_m(run: Path, st_runs: list[Path]) -> float:
    """Δm (%) of `run` on val against the union of the ST runs' val metrics."""
    primary = {t: tuple(v) for t, v in json.loads((run / "results.json").read_text())["primary"].items()}
    reference: dict[str, dict[str, float]] = {}
    for st in st_runs:
        reference.update(last_val_metrics(st))
    missing = sorted(set(primary) - set(reference))
    if missing:
        raise ValueError(f"no ST validation metrics for task(s) {missing}")
    return delta_m(last_val_metrics(run), reference, primary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--st", nargs="+", type=Path, required=True, help="ST run folders (one per task)")
    parser.add_argument("--runs", nargs="+", required=True, help="LABEL=FOLDER candidates")
    args = parser.parse_args()
    scores = []
    for item in args.runs:
        label, folder = item.split("=", 1)
        scores.append((val_delta_m(Path(folder), args.st), label, folder))
    print("| candidate | val Δm % | run |\n|---|---|---|")
    for score, label, folder in sorted(scores, reverse=True):
        print(f"| {label} | {score:+.2f} | {folder} |")


if __name__ == "__main__":
    main()
