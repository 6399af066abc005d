"""PASCAL-Context multi-task benchmark in the ASTMT/ATRC/InvPT layout.

```
PASCALContext/JPEGImages/<id>.jpg
PASCALContext/ImageSets/Context/{train,val}.txt           ids (4,998 train / 5,105 val)
PASCALContext/semseg/VOC12/<id>.png  (else semseg/pascal-context/<id>.png)   21 classes, 255 ignore
PASCALContext/human_parts/<id>.mat                        PASCAL-Part `anno` struct (below)
PASCALContext/sal_distill/<id>.png                        / 255 > 0.5 -> {0, 1}
PASCALContext/normals_distill/<id>.png                    2 * x / 255 - 1, kept on NYU-like classes
PASCALContext/pascal-context/trainval/<id>.mat            `LabelMap` (459 context classes)
```
Edges are the thinned non-zero 4-neighbour Laplacian of `LabelMap` (OpenCV's ksize=1 kernel with
reflect-101 borders, then `bwmorph 'thin'` thinning from `tokenmtl.metrics.thinning`, the same
as the edge metric's). Human parts: `anno[0, 0]["objects"]` is a struct array with fields
`class`, `class_ind` (15 = person), `mask`, `parts`; `parts` is a struct array with
`part_name` (e.g. "head", "luarm") and `mask`. Person parts are merged into 6 classes
(+ background 0) as ASTMT's `HUMAN_PART[6]`; an image with no annotated person parts is ignored
entirely (255) for that task, as ATRC's AddIgnoreRegions does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from tokenmtl.data.errors import (
    DataError,
    SampleDataset,
    check_shape,
    check_values,
    missing_files,
    read_ids,
    read_image,
    read_mat,
    read_png,
    require_dir,
    resolve_root,
)
from tokenmtl.data.nyud import check_tasks
from tokenmtl.data.transforms import EvalTransform, TrainTransform
from tokenmtl.metrics.thinning import thin

PERSON_CLASS = 15
# ASTMT HUMAN_PART[6]: PASCAL-Part person part name -> one of 6 parts (0 = background).
HUMAN_PARTS_6 = {
    "hair": 1,
    "head": 1,
    "lear": 1,
    "lebrow": 1,
    "leye": 1,
    "mouth": 1,
    "nose": 1,
    "rear": 1,
    "rebrow": 1,
    "reye": 1,
    "neck": 2,
    "torso": 2,
    "luarm": 3,
    "ruarm": 3,
    "lhand": 4,
    "llarm": 4,
    "rhand": 4,
    "rlarm": 4,
    "luleg": 5,
    "ruleg": 5,
    "lfoot": 6,
    "llleg": 6,
    "rfoot": 6,
    "rlleg": 6,
}
# LabelMap ids (PASCAL-Context, 459 classes) whose class name is also an NYU class (minus
# "unknown"), plus tvmonitor (427): where the distilled normals are kept. Derived from ASTMT's
# db_info/context_classes.json and nyu_classes.json exactly as ASTMT/ATRC/InvPT do.
NORMALS_VALID_CLASSES = frozenset(
    (
        3,
        4,
        6,
        9,
        10,
        11,
        13,
        15,
        17,
        18,
        22,
        23,
        29,
        30,
        33,
        34,
        36,
        37,
        38,
        39,
        41,
        43,
        46,
        49,
        50,
        51,
        53,
        55,
        56,
        59,
        61,
        62,
        65,
        66,
        68,
        69,
        72,
        73,
        78,
        83,
        84,
        85,
        87,
        88,
        95,
        96,
        101,
        104,
        105,
        107,
        111,
        113,
        115,
        122,
        124,
        135,
        141,
        142,
        143,
        146,
        150,
        154,
        157,
        158,
        159,
        165,
        172,
        174,
        181,
        183,
        184,
        191,
        193,
        195,
        197,
        199,
        202,
        213,
        215,
        216,
        219,
        220,
        223,
        225,
        228,
        230,
        232,
        233,
        238,
        239,
        242,
        243,
        246,
        250,
        251,
        252,
        255,
        260,
        261,
        263,
        269,
        272,
        273,
        275,
        281,
        283,
        284,
        285,
        286,
        287,
        288,
        290,
        291,
        292,
        293,
        295,
        304,
        307,
        309,
        310,
        314,
        315,
        319,
        323,
        329,
        330,
        331,
        336,
        342,
        345,
        349,
        350,
        351,
        352,
        355,
        357,
        368,
        370,
        371,
        374,
        379,
        380,
        383,
        384,
        397,
        401,
        403,
        405,
        407,
        408,
        411,
        412,
        413,
        414,
        417,
        419,
        421,
        423,
        429,
        430,
        432,
        440,
        441,
        442,
        443,
        444,
        446,
        454,
        457,
        427,
    )
)
LABELMAP_DIR = ("pascal-context", "trainval")


def edges_from_labelmap(label_map: np.ndarray) -> np.ndarray:
    """ASTMT edges: thin(|Laplacian(LabelMap)| > 0), OpenCV ksize=1 kernel, reflect-101 borders."""
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    lap = ndimage.convolve(label_map.astype(np.float64), kernel, mode="mirror")
    return thin(np.abs(lap) > 0).astype(np.float32)


def human_parts_from_mat(path: Path, hw: tuple[int, int], task: str = "human_parts") -> np.ndarray:
    """7-class person-part map (0 background, 1..6 parts); all 255 when no person parts exist."""
    anno = read_mat(path, task, "anno")
    try:
        objects = anno[0, 0]["objects"]
        target = None
        for obj in objects.flat:
            parts = obj["parts"]
            if int(np.asarray(obj["class_ind"]).flat[0]) != PERSON_CLASS or parts.size == 0:
                continue
            if target is None:
                target = np.zeros(np.asarray(obj["mask"]).shape, dtype=np.float32)
            for part in parts.flat:
                name = str(np.asarray(part["part_name"]).flat[0])
                if name not in HUMAN_PARTS_6:
                    raise DataError(f"unknown person part name {name!r}", path=path, task=task)
                target[np.asarray(part["mask"]).astype(bool)] = HUMAN_PARTS_6[name]
    except DataError:
        raise
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise DataError(
            f"unexpected PASCAL-Part .mat structure ({type(exc).__name__}: {exc}); "
            "expected anno.objects(i).{class_ind, mask, parts(j).{part_name, mask}}",
            path=path,
            task=task,
        ) from None
    if target is None or not target.any():
        return np.full(hw, 255.0, dtype=np.float32)
    check_shape(target, hw, path, task)
    return target


def has_person(path: Path) -> bool:
    """Whether a PASCAL-Part annotation holds a person object (ASTMT's has_human_parts)."""
    anno = read_mat(path, "human_parts", "anno")
    try:
        return any(
            int(np.asarray(o["class_ind"]).flat[0]) == PERSON_CLASS and np.asarray(o["mask"]).any()
            for o in anno[0, 0]["objects"].flat
        )
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise DataError(f"unexpected PASCAL-Part .mat structure ({exc})", path=path, task="human_parts") from None


def _maybe_person(path: Path) -> bool:
    """has_person, but a missing or broken file counts as a person: loading it reports the error."""
    try:
        return has_person(path)
    except DataError:
        return True


def _to_chw(array: np.ndarray) -> torch.Tensor:
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def _semseg_path(root: Path, image_id: str) -> Path:
    voc = root / "semseg" / "VOC12" / f"{image_id}.png"
    return voc if voc.is_file() else root / "semseg" / "pascal-context" / f"{image_id}.png"


@dataclass(frozen=True)
class PascalLoader:
    """Reads raw sample `index` (picklable for DataLoader workers)."""

    paths: list[dict[str, Path]]
    tasks: tuple[str, ...]

    def __call__(self, index: int) -> dict:
        files = self.paths[index]
        image = read_image(files["image"])
        hw = image.shape[:2]
        sample = {"image": _to_chw(image)}
        label_map = None
        if "edge" in self.tasks or "normals" in self.tasks:
            label_map = np.asarray(read_mat(files["labelmap"], "edge", "LabelMap"))
            check_shape(label_map, hw, files["labelmap"], "edge")
        for task in self.tasks:
            path = files[task]
            if task == "edge":
                sample[task] = _to_chw(edges_from_labelmap(label_map))
            elif task == "human_parts":
                sample[task] = _to_chw(human_parts_from_mat(path, hw))
            elif task == "semseg":
                raw = read_png(path, task)
                raw = raw[:, :, 0] if raw.ndim == 3 else raw
                check_shape(raw, hw, path, task)
                check_values(raw, 20, path, task, extra=(255,))
                sample[task] = _to_chw(raw)
            elif task == "saliency":
                raw = read_png(path, task)
                raw = raw[:, :, 0] if raw.ndim == 3 else raw
                check_shape(raw, hw, path, task)
                sample[task] = _to_chw((raw / 255.0 > 0.5).astype(np.float32))
            elif task == "normals":
                raw = read_png(path, task)
                if raw.ndim != 3 or raw.shape[2] != 3:
                    raise DataError(f"normals must be an RGB PNG, got shape {raw.shape}", path=path, task=task)
                check_shape(raw, hw, path, task)
                keep = np.isin(label_map, list(NORMALS_VALID_CLASSES))[:, :, None]
                sample[task] = _to_chw(np.where(keep, 2.0 * raw / 255.0 - 1.0, 0.0))
        return sample


class PascalContextBenchmark:
    """PASCAL-Context (ASTMT layout): 4,998 train / 5,105 val; `root` is `PASCALContext/` or its
    parent. Training on human_parts alone keeps only images with a person, as ASTMT does."""

    name = "pascal"
    available_tasks = ("semseg", "human_parts", "saliency", "normals", "edge")
    default_tasks = available_tasks
    folder = "PASCALContext"
    splits = {"train": "train", "val": "val", "test": "val"}
    edge_tolerance = 0.0075
    task_dirs = {
        "image": ("JPEGImages", ".jpg"),
        "human_parts": ("human_parts", ".mat"),
        "saliency": ("sal_distill", ".png"),
        "normals": ("normals_distill", ".png"),
        "labelmap": ("pascal-context/trainval", ".mat"),
    }

    def __init__(
        self,
        root: str | Path | None,
        image_size: Sequence[int] = (512, 512),
        tasks: Sequence[str] | None = None,
        skip_bad: bool = False,
        scale: Sequence[float] = (0.5, 2.0),
    ):
        self.root = resolve_root(root, self.folder, "ImageSets", self.name)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.tasks = check_tasks(self, tasks)
        self.skip_bad = skip_bad
        self.scale = (float(scale[0]), float(scale[1]))

    def task_spec(self, task: str) -> Any:
        """TaskSpec of `task`: 21-class semseg, 7-class parts, saliency, normals, edge (0.0075)."""
        from tokenmtl import tasks as t

        check_tasks(self, [task])
        factories = {
            "semseg": lambda: t.semseg_task(21),
            "human_parts": lambda: t.human_parts_task(7),
            "saliency": t.saliency_task,
            "normals": t.normals_task,
            "edge": lambda: t.edge_task(self.edge_tolerance, pos_weight=0.95),
        }
        return factories[task]()

    def dataset(self, split: str, train: bool, tasks: Sequence[str] | None = None) -> SampleDataset:
        """Samples of `split` (train/val/test; test = val) with train or eval transforms."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for pascal; available: {', '.join(self.splits)}")
        tasks = check_tasks(self, tasks) if tasks is not None else self.tasks
        ids = read_ids(self.root / "ImageSets" / "Context" / f"{self.splits[split]}.txt", f"pascal {split}")
        keys = ["image", *[t for t in tasks if t != "edge"]]
        if "edge" in tasks or "normals" in tasks:
            keys.append("labelmap")
        for key in keys:
            if key in self.task_dirs:
                require_dir(self.root / self.task_dirs[key][0], f"pascal {key}")
        paths = [{key: self._path(key, i) for key in keys} for i in ids]
        if "edge" in tasks:
            for files in paths:
                files["edge"] = files["labelmap"]
        if tuple(tasks) == ("human_parts",):
            ids, paths = self._with_person(ids, paths, split)
        known_bad = missing_files(paths, self.skip_bad)
        transform = TrainTransform(self.image_size, self.scale) if train else EvalTransform(self.image_size)
        return SampleDataset(
            f"pascal/{split}", ids, PascalLoader(paths, tuple(tasks)), transform, self.skip_bad, known_bad
        )

    def _path(self, key: str, image_id: str) -> Path:
        if key == "semseg":
            return _semseg_path(self.root, image_id)
        folder, ext = self.task_dirs[key]
        return self.root / folder / f"{image_id}{ext}"

    def _with_person(
        self, ids: list[str], paths: list[dict[str, Path]], split: str
    ) -> tuple[list[str], list[dict[str, Path]]]:
        """Only images with a person: from ASTMT's cache `ImageSets/Parts/<split>.txt` (JSON
        id -> object categories) when present, else by reading each annotation."""
        cache = self.root / "ImageSets" / "Parts" / f"{self.splits[split]}.txt"
        if cache.is_file():
            try:
                categories = json.loads(cache.read_text())
                keep = [PERSON_CLASS in categories.get(i, []) for i in ids]
            except (ValueError, AttributeError) as exc:
                raise DataError(f"unreadable human-parts cache ({exc})", path=cache) from None
        else:
            keep = [_maybe_person(p["human_parts"]) for p in paths]
        return ([i for i, k in zip(ids, keep) if k], [p for p, k in zip(paths, keep) if k])
