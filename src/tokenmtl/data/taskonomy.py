"""Taskonomy (tiny split) with the DTME paper's 11 dense tasks, as the DTME authors' code loads it.

Layout (the omnidata downloader's; the `taskonomy/` level is optional):
```
<root>/rgb/[taskonomy/]<building>/point_<P>_view_<V>_domain_rgb.png
<root>/<task>/[taskonomy/]<building>/point_<P>_view_<V>_domain_<task>.png     one folder per task
<root>/splits_taskonomy/train_val_test_tiny.csv     header, then `building,train,val,test` (0/1)
```
Samples are matched across tasks by building and `point_<P>_view_<V>`. Splits follow
sel-update-mtl: `train` = buildings flagged train or val, `val` = `test` = the remaining buildings.
Every sample is resized (bilinear) to `image_size`, then decoded as that code does: depth
log(1 + x) / log(2^16); principal curvature standardised (2 channels); edge_occlusion scaled to
[-1, 1] and Gaussian-blurred (sigma 4); the others clipped to their range and scaled to [-1, 1].
Training adds a horizontal flip. The image is scaled to [-1, 1] (mean = std = 0.5).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from tokenmtl.data.errors import DataError, SampleDataset, read_png, require_dir, resolve_root
from tokenmtl.data.nyud import check_tasks
from tokenmtl.data.transforms import coin, finalize, hflip, normalize, resize_to

# task -> (output channels, evaluation metric); the loss is L1 for all (DTME paper, App. B).
TASKS = {
    "depth_euclidean": (1, "l1"),
    "depth_zbuffer": (1, "l1"),
    "edge_occlusion": (1, "l1"),
    "edge_texture": (1, "l1"),
    "keypoints2d": (1, "l1"),
    "keypoints3d": (1, "l1"),
    "normal": (3, "l1"),
    "principal_curvature": (2, "rmse"),
    "reshading": (1, "l1"),
    "segment_unsup2d": (1, "l1"),
    "segment_unsup25d": (1, "l1"),
}
# Raw value range mapped to [-1, 1] (sel-update-mtl's `current_scale`).
VALUE_RANGE = {
    "edge_occlusion": (0.0, 0.00625 * 2**16),
    "edge_texture": (0.0, 0.08 * 2**16),
    "keypoints2d": (0.0, 0.005 * 2**16),
    "keypoints3d": (0.0, 1.0 * 2**16),
    "normal": (0.0, 255.0),
    "reshading": (0.0, 255.0),
    "segment_unsup2d": (0.0, 255.0),
    "segment_unsup25d": (0.0, 255.0),
}
CURVATURE_MEAN = (123.572, 120.1)
CURVATURE_STD = (31.922, 21.658)
SPLIT_FILE = Path("splits_taskonomy") / "train_val_test_tiny.csv"


def decode_target(task: str, raw: torch.Tensor) -> torch.Tensor:
    """Raw PNG values (C, H, W) -> the regression target of `task` (module docstring)."""
    if task.startswith("depth"):
        return torch.log1p(raw) / math.log(2.0**16)
    if task == "principal_curvature":
        mean = torch.tensor(CURVATURE_MEAN).view(2, 1, 1)
        std = torch.tensor(CURVATURE_STD).view(2, 1, 1)
        return (raw[:2] - mean) / std
    low, high = VALUE_RANGE[task]
    if task == "edge_occlusion":
        scaled = (raw - low) / (high - low) * 2.0 - 1.0
        blurred = ndimage.gaussian_filter(scaled.numpy().astype(np.float32), sigma=(0, 4, 4))
        return torch.from_numpy(blurred)
    return (raw.clamp(low, high) - low) / (high - low) * 2.0 - 1.0


class TaskonomyTransform:
    """Resize to `size`, decode targets, flip (training only), scale the image to [-1, 1]."""

    def __init__(self, size: Sequence[int], train: bool):
        self.size, self.train = (int(size[0]), int(size[1])), train

    def __call__(self, sample: dict) -> dict:
        sample = resize_to(sample, self.size)
        sample = {k: v if k == "image" else decode_target(k, v) for k, v in sample.items()}
        if self.train and coin():
            sample = hflip(sample)
        sample["image"] = normalize(sample["image"], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        return finalize(sample)


@dataclass(frozen=True)
class TaskonomyLoader:
    """Reads raw sample `index`: the RGB image and each task's PNG, checked against each other."""

    bases: dict[str, str]  # task (and "rgb") -> folder holding the building folders
    samples: list[tuple[str, str]]  # (building, "point_<P>_view_<V>")
    tasks: tuple[str, ...]

    def path(self, task: str, index: int) -> Path:
        building, key = self.samples[index]
        return Path(self.bases[task]) / building / f"{key}_domain_{task}.png"

    def __call__(self, index: int) -> dict:
        rgb_path = self.path("rgb", index)
        rgb = read_png(rgb_path, "image")
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise DataError(f"image must be RGB, got shape {rgb.shape}", path=rgb_path, task="image")
        sample = {"image": torch.from_numpy(np.ascontiguousarray(rgb[:, :, :3].transpose(2, 0, 1)))}
        for task in self.tasks:
            path = self.path(task, index)
            raw = read_png(path, task)
            raw = raw[:, :, None] if raw.ndim == 2 else raw
            channels = 3 if task in ("normal", "principal_curvature") else 1
            if raw.shape[:2] != rgb.shape[:2] or raw.shape[2] < channels:
                raise DataError(
                    f"label has shape {raw.shape}, the image is {rgb.shape[:2]} and {channels} channel(s) are needed",
                    path=path,
                    task=task,
                )
            chw = raw[:, :, :channels].transpose(2, 0, 1)
            sample[task] = torch.from_numpy(np.ascontiguousarray(chw))
        return sample


def read_split_buildings(path: Path) -> dict[str, list[str]]:
    """Buildings per split from a Taskonomy split CSV (sel-update-mtl's train+val / test rule)."""
    if not path.is_file():
        raise DataError(
            f"Taskonomy split file not found; pass split_file= or put the tiny split CSV at <root>/{SPLIT_FILE}",
            path=path,
        )
    out: dict[str, list[str]] = {"train": [], "test": []}
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        if len(row) < 4:
            continue
        name, is_train, is_val = row[0].strip(), row[1].strip(), row[2].strip()
        out["train" if "1" in (is_train, is_val) else "test"].append(name)
    out["val"] = out["test"]
    return out


def _task_base(root: Path, task: str) -> Path:
    folder = require_dir(root / task, f"taskonomy {task}")
    return folder / "taskonomy" if (folder / "taskonomy").is_dir() else folder


def _keys(folder: Path, task: str) -> set[str]:
    suffix = f"_domain_{task}.png"
    try:
        names = os.listdir(folder)
    except OSError:
        return set()
    return {n[: -len(suffix)] for n in names if n.endswith(suffix)}


class TaskonomyBenchmark:
    """Taskonomy tiny split, 11 dense regression tasks (L1 loss; L1 metric, RMSE for curvature)."""

    name = "taskonomy"
    available_tasks = tuple(TASKS)
    default_tasks = available_tasks
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str | Path | None,
        image_size: Sequence[int] = (256, 256),
        tasks: Sequence[str] | None = None,
        skip_bad: bool = False,
        split_file: str | Path | None = None,
    ):
        self.root = resolve_root(root, "taskonomy", "rgb", self.name)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.tasks = check_tasks(self, tasks)
        self.skip_bad = skip_bad
        self.split_file = Path(split_file) if split_file else self.root / SPLIT_FILE

    def task_spec(self, task: str) -> Any:
        """`regression_task(task, channels, metric)`: L1 loss, L1 metric (RMSE for curvature)."""
        from tokenmtl import tasks as t

        check_tasks(self, [task])
        channels, metric = TASKS[task]
        return t.regression_task(task, channels, metric)

    def dataset(self, split: str, train: bool, tasks: Sequence[str] | None = None) -> SampleDataset:
        """Samples of the split's buildings; every task's file must exist for each RGB image."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for taskonomy; available: {', '.join(self.splits)}")
        tasks = check_tasks(self, tasks) if tasks is not None else self.tasks
        buildings = read_split_buildings(self.split_file)[split]
        bases = {task: _task_base(self.root, task) for task in ("rgb", *tasks)}
        samples: list[tuple[str, str]] = []
        known_bad: dict[int, Exception] = {}
        for building in buildings:
            keys = sorted(_keys(bases["rgb"] / building, "rgb"))
            present = {task: _keys(bases[task] / building, task) for task in tasks}
            for key in keys:
                missing = [task for task in tasks if key not in present[task]]
                if missing:
                    error = DataError(
                        "file missing for an RGB image",
                        task=missing[0],
                        path=bases[missing[0]] / building / f"{key}_domain_{missing[0]}.png",
                    )
                    if not self.skip_bad:
                        raise error
                    known_bad[len(samples)] = error
                samples.append((building, key))
        if not samples:
            raise DataError(f"no RGB images found for the {split} buildings {buildings[:5]}", path=bases["rgb"])
        loader = TaskonomyLoader({k: str(v) for k, v in bases.items()}, samples, tuple(tasks))
        ids = [f"{b}/{k}" for b, k in samples]
        return SampleDataset(
            f"taskonomy/{split}", ids, loader, TaskonomyTransform(self.image_size, train), self.skip_bad, known_bad
        )
