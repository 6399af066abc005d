"""PNG grid of dataset samples and their targets, to eyeball a benchmark."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SEG_COLORS = np.array(
    [
        [0.55, 0.45, 0.30],
        [0.80, 0.80, 0.80],
        [0.90, 0.10, 0.10],
        [0.60, 0.20, 0.80],
        [0.95, 0.60, 0.10],
        [0.15, 0.35, 0.90],
        [0.10, 0.80, 0.80],
        [0.95, 0.90, 0.15],
        [0.30, 0.75, 0.25],
        [0.90, 0.45, 0.70],
        [0.45, 0.30, 0.15],
        [0.50, 0.50, 0.10],
    ]
)
"""Fixed colour per class id (cycled beyond 12 classes); ignore (255) is black."""


def write_preview(
    benchmark: Any, path: str | os.PathLike, split: str = "train", n: int = 8, tasks: Sequence[str] | None = None
) -> Path:
    """Write a PNG: one row per sample (the first ``n`` of ``split``), image then each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(benchmark.default_tasks if tasks is None else tasks)
    dataset = benchmark.dataset(split, train=False)
    n = min(n, len(dataset))
    stats = _image_stats(benchmark, dataset)
    fig, axes = plt.subplots(n, len(tasks) + 1, figsize=(1.6 * (len(tasks) + 1), 1.6 * n), squeeze=False)
    for row in range(n):
        item = dataset[row]
        panels = [("image", _render_image(item["image"], stats))]
        panels += [(task, render_target(task, item[task])) for task in tasks]
        for col, (title, (picture, cmap)) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _image_stats(benchmark: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalisation constants to undo (``mean``/``std`` of the dataset or benchmark), if known."""
    for owner in (dataset, benchmark):
        mean, std = getattr(owner, "mean", None), getattr(owner, "std", None)
        if mean is not None and std is not None:
            return np.asarray(mean, np.float32).reshape(3, 1, 1), np.asarray(std, np.float32).reshape(3, 1, 1)
    return None


def _render_image(image: torch.Tensor, stats: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, None]:
    """Undo the normalisation; without known constants, stretch the image's range to [0, 1]."""
    rgb = image.numpy()
    if stats is None:
        rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-6)
    else:
        rgb = rgb * stats[1] + stats[0]
    return np.clip(rgb.transpose(1, 2, 0), 0, 1), None


def render_target(task: str, target: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """A target as (picture, matplotlib colormap or None for RGB), by the target's kind."""
    value = target.numpy()
    if task in ("semseg", "human_parts"):
        colors = SEG_COLORS[value % len(SEG_COLORS)]
        colors[value == 255] = 0.0
        return colors, None
    if task == "normals":
        return np.clip((value.transpose(1, 2, 0) + 1) / 2, 0, 1), None
    if value.ndim == 3 and value.shape[0] == 1:
        value = value[0]
    elif value.ndim == 3:
        value = np.linalg.norm(value, axis=0)
    if task == "depth":
        masked = np.ma.masked_where(value <= 0, value)
        return masked, "viridis_r"
    if "edge" in task or task == "saliency":
        return np.where(value == 255, 0.5, value), "gray"
    return value, "magma"
