"""Bar charts of a comparison: per-task change vs single-task, and delta-m per run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tokenmtl.report.table import Row  # noqa: E402


def plot_comparison(rows: list[Row], tasks: list[str], primary: dict[str, tuple[str, bool]], path: str | Path) -> None:
    """Left: each row's mean change of every task's primary metric vs its ST reference, % (positive =
    better); right: delta-m (mean ± std over seeds)."""
    others = [r for r in rows if r.kind != "ST"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(len(others), 1)
    for i, row in enumerate(others):
        values = [row.task_change.get(t, 0.0) for t in tasks]
        ax1.bar([j + i * width for j in range(len(tasks))], values, width, label=row.label)
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.set_xticks([j + width * (len(others) - 1) / 2 for j in range(len(tasks))])
    ax1.set_xticklabels([f"{t}\n({primary[t][0]})" for t in tasks])
    ax1.set_ylabel("change vs single-task, % (positive = better)")
    ax1.set_title("per-task transfer")
    if others:
        ax1.legend(fontsize=8)
    labels = [r.label for r in others if r.delta_m is not None]
    dms = [r.delta_m for r in others if r.delta_m is not None]
    colors = ["tab:green" if d[0] >= 0 else "tab:red" for d in dms]
    ax2.barh(labels, [d[0] for d in dms], xerr=[d[1] for d in dms], color=colors)
    ax2.axvline(0, color="black", linewidth=0.8)
    ax2.set_xlabel("Δm vs ST, % (positive = better)")
    ax2.set_title("multi-task performance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
