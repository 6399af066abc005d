"""DTME report plots: per-layer conflict rates with the chosen layers, and token-space spectra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_conflicts(report: Any, plan: Any | None, path: str | Path) -> Path:
    """Range and null conflict rates per layer (bars); TM layers marked 'M', TE layers marked 'E'."""
    layers = [lr.layer for lr in report.layers]
    range_rates = [lr.range_conflict_rate for lr in report.layers]
    null_rates = [lr.null_conflict_rate for lr in report.layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(layers) + 2), 4))
    width = 0.4
    ax.bar([x - width / 2 for x in layers], range_rates, width, label="range space", color="tab:blue")
    ax.bar([x + width / 2 for x in layers], null_rates, width, label="null space", color="tab:orange")
    top = max(range_rates + null_rates + [0.0])
    if plan is not None:
        for x in plan.tm:
            ax.annotate("M", (x - width / 2, top * 1.04), ha="center", color="tab:blue", fontweight="bold")
        for x in plan.te:
            ax.annotate("E", (x + width / 2, top * 1.04), ha="center", color="tab:orange", fontweight="bold")
        ax.set_title(
            f"token-space conflicts (M = TM layer, E = TE layer; strategy {plan.strategy}, ratio {plan.ratio:g})",
            fontsize=9,
        )
    else:
        ax.set_title("token-space conflicts per layer", fontsize=9)
    low = min(range_rates + null_rates + [top])
    ax.set_ylim(max(0.0, low - 0.1), min(1.0, top * 1.12) if top > 0 else 1.0)
    ax.set_xticks(layers)
    ax.set_xlabel("layer (tokens entering block)")
    ax.set_ylabel("conflict rate (token, task pair)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_spectra(report: Any, path: str | Path) -> Path:
    """Eigenvalue spectrum of each layer's token covariance (log scale), the split point k marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    count = max(len(report.layers) - 1, 1)
    for i, lr in enumerate(report.layers):
        values = [max(v, 1e-12) for v in lr.eigenvalues]
        color = cmap(i / count)
        ax.plot(
            range(1, len(values) + 1), values, color=color, linewidth=1.2, label=f"layer {lr.layer} (k={lr.k}/{lr.dim})"
        )
        if 0 < lr.k <= len(values):
            ax.plot([lr.k], [values[lr.k - 1]], marker="o", color=color, markersize=6, markeredgecolor="black")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue of token covariance (floor 1e-12)")
    ratio = f"energy fraction {report.energy_fraction:g}" if report.energy_fraction else f"r = {report.r:g}"
    ax.set_title(f"token-space spectra (dot = range/null split, {ratio})", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_conflict_change(change: Any, path: str | Path) -> Path:
    """Range (left) and null (right) conflict rate per layer, before vs after training (paper Table 14).

    `change` is a `report.conflict_change.ConflictChange`; TM layers are marked 'M', TE layers 'E'.
    """
    layers = [lc.layer for lc in change.layers]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.0 * len(layers) + 4), 4), sharey=True)
    width = 0.4
    for ax, space, marked, mark in ((axes[0], "range", change.tm, "M"), (axes[1], "null", change.te, "E")):
        before = [getattr(lc, f"{space}_before") for lc in change.layers]
        after = [getattr(lc, f"{space}_after") for lc in change.layers]
        ax.bar([x - width / 2 for x in layers], before, width, label=change.labels[0], color="tab:gray")
        ax.bar(
            [x + width / 2 for x in layers],
            after,
            width,
            label=change.labels[1],
            color="tab:blue" if space == "range" else "tab:orange",
        )
        top = max(before + after + [0.0])
        for x in marked:
            ax.annotate(mark, (x, top * 1.03), ha="center", fontweight="bold")
        ax.set_ylim(0.0, min(1.0, top * 1.12) if top > 0 else 1.0)
        ax.set_xticks(layers)
        ax.set_xlabel("layer (tokens entering block)")
        ax.set_title(
            f"{space}-space conflicts: mean {change.mean(space, 'before'):.3f} -> {change.mean(space, 'after'):.3f}",
            fontsize=9,
        )
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("conflict rate (token, task pair)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
