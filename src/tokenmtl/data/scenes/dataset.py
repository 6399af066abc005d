"""The benchmark object (ScenesBenchmark) and the torch Dataset of a cached split."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tokenmtl.data.errors import DataError
from tokenmtl.data.scenes.cache import cache_key, default_cache_dir, load_arrays, save_arrays
from tokenmtl.data.scenes.distribution import CLASS_NAMES, NUM_CLASSES, SceneConfig
from tokenmtl.data.scenes.generation import STORAGE_DTYPES

IMAGE_MEAN: tuple[float, float, float] = (0.430, 0.384, 0.366)
"""Per-channel mean of default-config images in [0, 1] (2,000 train images, seed 0)."""
IMAGE_STD: tuple[float, float, float] = (0.188, 0.157, 0.154)
"""Per-channel standard deviation of default-config images in [0, 1]."""


MASKED_IMAGE = "masked_image"
"""Masked-patch reconstruction: a pretraining objective made from the image itself (no array)."""
MASK_IGNORE = 255.0
"""Target value of the pixels `masked_image` does not score (the visible ones)."""


class ScenesDataset(Dataset):
    """Items ``{"image": (3,H,W) normalised, task: target}`` read from a split's arrays.

    With the task ``masked_image`` in ``tasks``, a share ``mask_ratio`` of the image's
    ``mask_patch``-pixel squares is blanked (set to the mean colour, 0 after normalisation) in
    the input, and the target is the clean normalised image on those squares and `MASK_IGNORE`
    elsewhere, so the loss scores only the hidden pixels (masked-patch reconstruction). Training
    items draw a new mask each time; evaluation items a fixed one per index.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        tasks: Sequence[str],
        flip: bool = False,
        mask_ratio: float = 0.5,
        mask_patch: int = 8,
        random_masks: bool = False,
    ):
        self.arrays = arrays
        self.tasks = tuple(tasks)
        self.flip = flip
        self.mask_ratio, self.mask_patch, self.random_masks = mask_ratio, mask_patch, random_masks
        self.mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGE_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(self.arrays["image"][index]).float() / 255.0
        item = {"image": (image - self.mean) / self.std}
        for task in self.tasks:
            if task != MASKED_IMAGE:
                item[task] = _target_tensor(task, self.arrays[task][index])
        if MASKED_IMAGE in self.tasks:
            hidden = self._patch_mask(index, item["image"].shape[-2:])
            item[MASKED_IMAGE] = torch.where(hidden, item["image"], torch.full_like(item["image"], MASK_IGNORE))
            item["image"] = torch.where(hidden, torch.zeros_like(item["image"]), item["image"])
        if self.flip and torch.rand(()) < 0.5:
            item = _hflip(item)
        return item

    def _patch_mask(self, index: int, size: torch.Size) -> torch.Tensor:
        """(1, H, W) bool, True on the hidden squares: round(ratio x squares) of them, chosen at random."""
        rows, cols = -(-size[0] // self.mask_patch), -(-size[1] // self.mask_patch)
        generator = None if self.random_masks else torch.Generator().manual_seed(int(index))
        order = torch.randperm(rows * cols, generator=generator)
        hidden = torch.zeros(rows * cols, dtype=torch.bool)
        hidden[order[: round(self.mask_ratio * rows * cols)]] = True
        grid = hidden.view(rows, cols).repeat_interleave(self.mask_patch, 0).repeat_interleave(self.mask_patch, 1)
        return grid[: size[0], : size[1]].unsqueeze(0)


def _target_tensor(task: str, value: np.ndarray) -> torch.Tensor:
    """Storage array -> target tensor in the dtype internals.md fixes for the task."""
    if task == "semseg":
        return torch.from_numpy(value.astype(np.int64))
    value = value.astype(np.float32)
    if task == "normals":  # undo the float16 rounding of the length
        value /= np.maximum(np.sqrt(np.einsum("chw,chw->hw", value, value)), 1e-6)
    return torch.from_numpy(value)


def _hflip(item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror left-right; normals' x component changes sign.

    Edge marks move with their pixels, so on vertical boundaries they sit on the right side.
    """
    out = {key: value.flip(-1) for key, value in item.items()}
    if "normals" in out:
        out["normals"] = out["normals"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    return out


class ScenesBenchmark:
    """The embedded procedural benchmark: fixed splits generated once and cached on disk.

    ``scene``: a SceneConfig or a dict of its fields. ``cache_dir``: where split files go
    (default: ``root`` if given, else ``$TOKENMTL_CACHE``, else ``~/.cache/tokenmtl/scenes``).
    ``tasks``: which targets items carry (default: all available tasks). ``flip``: random
    horizontal flips on ``dataset(split, train=True)``. ``workers``: generation processes
    (None = automatic). ``mask_ratio``/``mask_patch``: share of squares and square size (pixels)
    hidden by the pretraining task ``masked_image`` (see ScenesDataset).
    """

    name = "scenes"
    available_tasks: tuple[str, ...] = (
        "semseg",
        "depth",
        "normals",
        "edge",
        "occlusion_edge",
        "reshading",
        "curvature",
        MASKED_IMAGE,
    )
    generated_tasks: tuple[str, ...] = tuple(t for t in available_tasks if t != MASKED_IMAGE)
    """The tasks stored in the split arrays (`masked_image` is made from the image on the fly)."""
    default_tasks: tuple[str, ...] = ("semseg", "depth", "normals", "edge")
    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES
    edge_tolerance = 0.011
    """Edge matching tolerance as a fraction of the image diagonal, as NYUD-v2 uses (about 1 px at 64x64)."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        image_size: int | Sequence[int] = 64,
        seed: int = 0,
        train_size: int = 2000,
        val_size: int = 500,
        test_size: int = 500,
        scene: SceneConfig | Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        tasks: Sequence[str] | None = None,
        flip: bool = False,
        workers: int | None = None,
        progress: bool = True,
        mask_ratio: float = 0.5,
        mask_patch: int = 8,
    ):
        self.image_size = _as_size(image_size)
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"benchmark.mask_ratio must be in (0, 1), got {mask_ratio!r}")
        if isinstance(mask_patch, bool) or int(mask_patch) != mask_patch or mask_patch < 1:
            raise ValueError(f"benchmark.mask_patch must be an integer >= 1, got {mask_patch!r}")
        self.mask_ratio, self.mask_patch = float(mask_ratio), int(mask_patch)
        self.seed = int(seed)
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        for split, count in self.sizes.items():
            if count < 1:
                raise ValueError(f"{split}_size must be >= 1, got {count}")
        self.scene = _as_scene_config(scene)
        if cache_dir is not None:
            self.cache_dir = Path(cache_dir)
        else:
            self.cache_dir = Path(root) if root is not None else default_cache_dir()
        self.tasks = tuple(self.generated_tasks if tasks is None else tasks)
        for task in self.tasks:
            self._check_task(task)
        self.flip = flip
        self.workers = workers
        self.progress = progress
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def _check_task(self, task: str) -> None:
        if task not in self.available_tasks:
            raise ValueError(f"unknown scenes task {task!r}; valid tasks: {list(self.available_tasks)}")

    def task_spec(self, task: str) -> Any:
        """TaskSpec of ``task`` (factories in tokenmtl.tasks, imported here on first use)."""
        self._check_task(task)
        from tokenmtl import tasks as factories

        if task == "semseg":
            return factories.semseg_task(self.num_classes)
        if task == "depth":
            return factories.depth_task()
        if task == "normals":
            return factories.normals_task()
        if task == "edge":
            return factories.edge_task(tolerance=self.edge_tolerance, pos_weight=0.95)
        if task == MASKED_IMAGE:
            return factories.regression_task(task, 3, metric="l1", loss="mse", ignore_value=MASK_IGNORE)
        channels = {"occlusion_edge": 1, "reshading": 1, "curvature": 2}[task]
        return factories.regression_task(task, channels, metric="l1")

    def cache_path(self, split: str) -> Path:
        """File holding ``split``; its name carries the hash of every setting that shapes it."""
        count = self.sizes[split]
        key = cache_key(self.scene, self.image_size, self.seed, split, count)
        height, width = self.image_size
        return self.cache_dir / f"scenes-{split}-{count}-{height}x{width}-seed{self.seed}-{key}.npz"

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """Storage arrays of ``split``: from memory, else from the cache file, else generated."""
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(self.sizes)}")
        if split not in self._arrays:
            self._arrays[split] = self._load_or_generate(split)
        return self._arrays[split]

    def _load_or_generate(self, split: str) -> dict[str, np.ndarray]:
        path = self.cache_path(split)
        if path.exists():
            try:
                arrays = load_arrays(path, tuple(STORAGE_DTYPES))
                if len(arrays["image"]) == self.sizes[split]:
                    return arrays
                warnings.warn(f"scenes cache file {path} has the wrong length; regenerating it", stacklevel=3)
            except DataError as exc:
                warnings.warn(f"{exc}; regenerating it", stacklevel=3)
        from tokenmtl.data import scenes  # the package's generate_split, so patching it there takes effect

        arrays = scenes.generate_split(
            self.scene,
            self.image_size,
            self.seed,
            split,
            self.sizes[split],
            workers=self.workers,
            progress=self.progress,
        )
        save_arrays(path, arrays)
        return arrays

    def dataset(self, split: str, train: bool, tasks: Sequence[str] | None = None) -> ScenesDataset:
        """Torch dataset of ``split`` ("train", "val" or "test"); ``train`` enables flips if set.

        ``tasks``: the targets items carry (default: the benchmark's ``tasks``).
        """
        tasks = self.tasks if tasks is None else tuple(tasks)
        for task in tasks:
            self._check_task(task)
        return ScenesDataset(
            self.arrays(split),
            tasks,
            flip=self.flip and train,
            mask_ratio=self.mask_ratio,
            mask_patch=self.mask_patch,
            random_masks=train,
        )


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if np.isscalar(image_size):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 4:
        raise ValueError(f"image_size must be an int or (height, width) of at least 4 pixels, got {image_size!r}")
    return size  # type: ignore[return-value]


def _as_scene_config(scene: SceneConfig | Mapping[str, Any] | None) -> SceneConfig:
    if scene is None:
        return SceneConfig()
    if isinstance(scene, SceneConfig):
        return scene
    if isinstance(scene, Mapping):
        return SceneConfig.from_dict(scene)
    raise TypeError(f"scene must be a SceneConfig, a dict of its fields or None, got {type(scene).__name__}")
