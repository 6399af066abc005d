"""Paired differences of Δm between run variants, seed by seed (test split, results.json).

Each variant folder holds `seed<k>/results.json`; Δm of a run is taken against the single-task
runs of the same seed (`--st` folders holding `st-<task>/seed<k>`). A difference A − B is computed
per seed and then averaged, so the seed-to-seed spread that A and B share (data order, head
initialisation) cancels; the table gives the mean, the sample std and every seed's value.

    python benchmarks/paired_delta_m.py --st runs/ev --pair TMTE-EW=runs/ev-lr30/mt-ew-tmte:runs/ev/mt-ew
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tokenmtl.metrics import delta_m


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def seed_delta_m(run: Path, st_root: Path, seed: int) -> float:
    """Δm (%) of one run against the ST runs of its seed."""
    results = _results(run)
    primary = {t: tuple(v) for t, v in results["primary"].items()}
    reference = {t: _results(st_root / f"st-{t}" / f"seed{seed}")["tasks"][t] for t in primary}
    return delta_m(results["tasks"], reference, primary)


def paired(a: Path, b: Path, st_root: Path) -> dict[int, float]:
    """{seed: Δm(a) − Δm(b)} over the seeds both variants ran."""
    seeds = sorted(
        int(p.name[4:])
        for p in a.glob("seed*")
        if (p / "results.json").is_file() and (b / p.name / "results.json").is_file()
    )
    return {s: seed_delta_m(a / f"seed{s}", st_root, s) - seed_delta_m(b / f"seed{s}", st_root, s) for s in seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--st", type=Path, required=True, help="folder holding st-<task>/seed<k> runs")
    parser.add_argument("--pair", action="append", required=True, help="LABEL=VARIANT_A:VARIANT_B (repeatable)")
    args = parser.parse_args()
    print("| difference | seeds | mean | std | per seed |\n|---|---|---|---|---|")
    for item in args.pair:
        label, folders = item.split("=", 1)
        a, b = (Path(f) for f in folders.split(":"))
        diffs = paired(a, b, args.st)
        if not diffs:
            raise SystemExit(f"{label}: no seed ran in both {a} and {b}")
        values = list(diffs.values())
        std = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-"
        per_seed = ", ".join(f"s{s}: {v:+.2f}" for s, v in diffs.items())
        print(f"| {label} | {len(values)} | {statistics.fmean(values):+.2f} | {std} | {per_seed} |")


if __name__ == "__main__":
    main()
