"""`tokenmtl compare` as a function: load runs, build the fair table, write comparison.md and .png."""

from __future__ import annotations

from pathlib import Path

from tokenmtl.report.plots import plot_comparison
from tokenmtl.report.runs import load_runs
from tokenmtl.report.table import Comparison, build_comparison


def compare_runs(
    paths: list[str | Path], out_dir: str | Path | None = None, allow_mixed: bool = False, name: str = "comparison"
) -> Comparison:
    """Table of the runs under `paths`; writes `<out_dir>/<name>.md` and `<name>.png`.

    `out_dir` defaults to the first path (its folder when it is a file). Raises
    MixedComparisonError (a ValueError) for mixed budgets/models/benchmarks unless `allow_mixed`.
    """
    if not paths:
        raise ValueError("compare needs at least one run folder")
    comparison = build_comparison(load_runs(list(paths)), allow_mixed=allow_mixed)
    first = Path(paths[0])
    target = Path(out_dir) if out_dir is not None else (first if first.is_dir() else first.parent)
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{name}.md").write_text(comparison.markdown)
    plot_comparison(comparison.rows, comparison.tasks, comparison.primary, target / f"{name}.png")
    return comparison
