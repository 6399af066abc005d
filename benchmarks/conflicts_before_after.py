"""Per-layer conflict rates at expansion and after training, for plain MT and a DTME run (paper Tab. 14).

The DTME run's own `conflicts.json` is the analysis at its expansion step, where its model still
equals plain MT's. After training, `tokenmtl analyze` is run on the MT run and on the DTME run
(into `<run>/after-analysis/`, skipped when it exists), and both are compared with the
expansion-time report layer by layer (`tokenmtl.report.conflict_change`). Writes
`<out>/conflicts_before_after.md` and one PNG per run.

    python benchmarks/conflicts_before_after.py --mt runs/pk4k/mt-ew/seed0 \
        --dtme runs/pk4k-lr30/mt-ew-tmte/seed0 --out benchmarks/results/packages_dtme_evidence_4k
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenmtl.report.conflict_change import conflict_change
from tokenmtl.report.dtme_plots import plot_conflict_change


def after_report(run: Path) -> Path:
    """`<run>/after-analysis/conflicts.json`, produced by `tokenmtl analyze` if missing."""
    target = run / "after-analysis" / "conflicts.json"
    if not target.is_file():
        from tokenmtl import analyze

        analyze(run, out=run / "after-analysis")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mt", type=Path, required=True, help="a finished plain multi-task run")
    parser.add_argument("--dtme", type=Path, required=True, help="a finished DTME run (same seed)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    before = args.dtme / "conflicts.json"
    if not before.is_file():
        print(f"error: {before} not found (is {args.dtme} a DTME run?)", file=sys.stderr)
        return 2
    plan_file = args.dtme / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    step = json.loads((args.dtme / "results.json").read_text())
    expand_step, total = (step.get("dtme") or {}).get("expand_step", "?"), step.get("iterations", "?")
    labels = (f"at expansion (step {expand_step})", f"after training (step {total})")
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, run, png in (
        ("EW (plain MT)", args.mt, "conflicts_before_after_mt.png"),
        ("EW + TM+TE", args.dtme, "conflicts_before_after_tmte.png"),
    ):
        change = conflict_change(before, after_report(run), plan=plan, labels=labels)
        plot_conflict_change(change, args.out / png)
        sections.append(f"### {name}\n\n{change.to_markdown()}")
    (args.out / "conflicts_before_after.md").write_text("\n".join(sections))
    print(args.out / "conflicts_before_after.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
