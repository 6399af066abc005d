"""Per-task series over training steps from metrics.csv: balancer task weights and DTME norms.

The trainer logs `weight/<task>` (the balancer's weight of each task) at every log step and,
after DTME expansion, `dtme/added_norm/<task>` (norm of each task's added parameters; the name
`dtme_norm/<task>` is read too). metrics.csv is long (`step, phase, key, value` rows, `engine/run_log.py`); a wide
CSV with a `step` column and one column per key is read too.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Series = dict[str, tuple[list[int], list[float]]]
PANELS = {
    "weight": "balancer task weight",
    "dtme/added_norm": "norm of the DTME-added parameters",
    "dtme_norm": "norm of the DTME-added parameters",
}
DEFAULT_PREFIXES = ("weight", "dtme/added_norm", "dtme_norm")


def _metrics_csv(path: str | Path) -> Path:
    path = Path(path)
    found = path / "metrics.csv" if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(f"no metrics.csv at {str(found)!r}")
    return found


def read_task_series(path: str | Path, prefix: str) -> Series:
    """`{task: (steps, values)}` of the keys `<prefix>/<task>` in a run's metrics.csv, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(_metrics_csv(path), newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        long_format = {"step", "key", "value"} <= set(fields)
        if "step" not in fields:
            raise ValueError(f"{str(path)!r}: metrics.csv has no 'step' column; columns: {fields}")
        for row in reader:
            items = [(row["key"], row["value"])] if long_format else [(k, v) for k, v in row.items() if k != "step"]
            for key, value in items:
                if key and key.startswith(prefix + "/") and value not in (None, ""):
                    series.setdefault(key[len(prefix) + 1 :], []).append((int(float(row["step"])), float(value)))
    return {task: ([s for s, _ in sorted(points)], [v for _, v in sorted(points)]) for task, points in series.items()}


def plot_task_series(
    runs: Mapping[str, str | Path] | Sequence[str | Path], path: str | Path, prefixes: Sequence[str] = DEFAULT_PREFIXES
) -> Path:
    """One panel per prefix with data, one line per (run, task): colour = task, line style = run.

    `runs` maps labels to run folders (or metrics.csv files); a plain list is labelled by folder name.
    """
    labelled = dict(runs) if isinstance(runs, Mapping) else {_label(p): p for p in runs}
    if not labelled:
        raise ValueError("plot_task_series needs at least one run")
    data = {prefix: {label: read_task_series(p, prefix) for label, p in labelled.items()} for prefix in prefixes}
    panels = [prefix for prefix in prefixes if any(data[prefix].values())]
    if not panels:
        keys = ", ".join(f"{p}/<task>" for p in prefixes)
        raise ValueError(f"no {keys} values in the metrics.csv of {', '.join(map(str, labelled.values()))}")
    tasks = sorted({t for prefix in panels for s in data[prefix].values() for t in s})
    colors = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, prefix in zip(axes[0], panels):
        for i, (label, series) in enumerate(data[prefix].items()):
            for task, (steps, values) in series.items():
                name = f"{task} ({label})" if len(labelled) > 1 else task
                ax.plot(steps, values, styles[i % len(styles)], color=colors[task], label=name, linewidth=1.3)
        ax.set_xlabel("iteration")
        ax.set_ylabel(PANELS.get(prefix, prefix))
        ax.set_title(f"{PANELS.get(prefix, prefix)} over training ({prefix}/<task>)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(path: str | Path) -> str:
    path = Path(path)
    folder = path.parent if path.name == "metrics.csv" else path
    return folder.name if folder.parent.name in ("", ".") else f"{folder.parent.name}/{folder.name}"
