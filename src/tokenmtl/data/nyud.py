"""NYUD-v2 multi-task benchmark in the ATRC/InvPT/TaskPrompter layout (semseg, depth, normals, edge).

```
NYUDv2/images/<id>.png          RGB
NYUDv2/segmentation/<id>.png    uint8 labels 0..40; 0 = unlabelled -> 255, else x - 1 (40 classes)
NYUDv2/depth/<id>.npy           float depth in metres; 0 = invalid
NYUDv2/normals/<id>.png         RGB, decoded 2 * x / 255 - 1 (padding: all-zero = invalid)
NYUDv2/edge/<id>.png            edge map; / 255, then > 0.5 -> {0, 1}
NYUDv2/gt_sets/{train,val}.txt  ids (795 train, 654 val; val is the test set)
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenmtl.data.errors import (
    DataError,
    SampleDataset,
    check_shape,
    check_values,
    missing_files,
    read_ids,
    read_image,
    read_npy,
    read_png,
    require_dir,
    resolve_root,
)
from tokenmtl.data.transforms import EvalTransform, TrainTransform

# task -> (folder, file extension)
FILES = {
    "image": ("images", ".png"),
    "semseg": ("segmentation", ".png"),
    "depth": ("depth", ".npy"),
    "normals": ("normals", ".png"),
    "edge": ("edge", ".png"),
}


def _to_chw(array: np.ndarray) -> torch.Tensor:
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def load_nyud_target(task: str, path: Path, hw: tuple[int, int]) -> torch.Tensor:
    """One NYUD target as a float (C, H, W) tensor in the library's conventions (module docstring)."""
    if task == "depth":
        depth = read_npy(path, task)
        depth = depth[:, :, 0] if depth.ndim == 3 and depth.shape[2] == 1 else depth
        if depth.ndim != 2:
            raise DataError(f"depth must be (H, W), got {depth.shape}", path=path, task=task)
        check_shape(depth, hw, path, task)
        if not np.isfinite(depth).all() or (depth < 0).any():
            raise DataError("depth has negative or non-finite values", path=path, task=task)
        return _to_chw(depth)
    raw = read_png(path, task)
    if task == "normals":
        if raw.ndim != 3 or raw.shape[2] != 3:
            raise DataError(f"normals must be an RGB PNG, got shape {raw.shape}", path=path, task=task)
        check_shape(raw, hw, path, task)
        return _to_chw(2.0 * raw / 255.0 - 1.0)
    raw = raw[:, :, 0] if raw.ndim == 3 else raw
    check_shape(raw, hw, path, task)
    if task == "semseg":
        check_values(raw, 40, path, task)
        return _to_chw(np.where(raw == 0, 255.0, raw - 1.0))
    if task == "edge":
        check_values(raw, 255, path, task)
        return _to_chw((raw / 255.0 > 0.5).astype(np.float32))
    raise ValueError(f"unknown NYUD task {task!r}")


@dataclass(frozen=True)
class NYUDLoader:
    """Reads raw sample `index` (picklable, so DataLoader workers can use any start method)."""

    paths: list[dict[str, Path]]
    tasks: tuple[str, ...]

    def __call__(self, index: int) -> dict:
        image = read_image(self.paths[index]["image"])
        sample = {"image": _to_chw(image)}
        for task in self.tasks:
            sample[task] = load_nyud_target(task, self.paths[index][task], image.shape[:2])
        return sample


class NYUDBenchmark:
    """NYUD-v2 (ATRC layout): 795 train / 654 val images; `root` is `NYUDv2/` or its parent."""

    name = "nyud"
    available_tasks = ("semseg", "depth", "normals", "edge")
    default_tasks = available_tasks
    folder = "NYUDv2"
    splits = {"train": "train", "val": "val", "test": "val"}
    edge_tolerance = 0.011

    def __init__(
        self,
        root: str | Path | None,
        image_size: Sequence[int] = (448, 576),
        tasks: Sequence[str] | None = None,
        skip_bad: bool = False,
        scale: Sequence[float] = (0.5, 2.0),
    ):
        self.root = resolve_root(root, self.folder, "gt_sets", self.name)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.tasks = check_tasks(self, tasks)
        self.skip_bad = skip_bad
        self.scale = (float(scale[0]), float(scale[1]))

    def task_spec(self, task: str) -> Any:
        """The TaskSpec of `task` (40-class semseg, depth, normals, edge at tolerance 0.011)."""
        from tokenmtl import tasks as t

        factories = {
            "semseg": lambda: t.semseg_task(40),
            "depth": t.depth_task,
            "normals": t.normals_task,
            "edge": lambda: t.edge_task(self.edge_tolerance, pos_weight=0.95),
        }
        check_tasks(self, [task])
        return factories[task]()

    def dataset(self, split: str, train: bool, tasks: Sequence[str] | None = None) -> SampleDataset:
        """Samples of `split` (train/val/test; test = val) with train or eval transforms."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for nyud; available: {', '.join(self.splits)}")
        tasks = check_tasks(self, tasks) if tasks is not None else self.tasks
        ids = read_ids(self.root / "gt_sets" / f"{self.splits[split]}.txt", f"nyud {split}")
        dirs = {key: require_dir(self.root / FILES[key][0], f"nyud {key}") for key in ("image", *tasks)}
        paths = [{key: dirs[key] / f"{i}{FILES[key][1]}" for key in dirs} for i in ids]
        known_bad = missing_files(paths, self.skip_bad)
        transform = TrainTransform(self.image_size, self.scale) if train else EvalTransform(self.image_size)
        return SampleDataset(f"nyud/{split}", ids, NYUDLoader(paths, tasks), transform, self.skip_bad, known_bad)


def check_tasks(benchmark: Any, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """The benchmark's default tasks, or `tasks` after checking each is available."""
    if tasks is None:
        return tuple(benchmark.default_tasks)
    unknown = [t for t in tasks if t not in benchmark.available_tasks]
    if unknown:
        raise ValueError(
            f"unknown task(s) {unknown} for {benchmark.name}; available: {', '.join(benchmark.available_tasks)}"
        )
    return tuple(tasks)
