"""Tiny NYUD-v2, PASCAL-Context and Taskonomy datasets written in exactly their on-disk formats.

Each writer fills `root` with a few random samples per split and returns the dataset folder.
Reusable by any test (e.g. an end-to-end `tokenmtl train ... --data-root FIXTURE` run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _normals_png(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    vec = rng.normal(size=(h, w, 3))
    vec /= np.linalg.norm(vec, axis=2, keepdims=True)
    return np.round((vec + 1.0) * 255.0 / 2.0).astype(np.uint8)


def nyud_ids(n_train: int = 3, n_val: int = 2) -> tuple[list[str], list[str]]:
    """Ids the NYUD writer uses for its train and val splits."""
    return [f"{i:04d}" for i in range(n_train)], [f"{i:04d}" for i in range(n_train, n_train + n_val)]


def write_nyud(
    root: str | Path, n_train: int = 3, n_val: int = 2, size: tuple[int, int] = (32, 40), seed: int = 0
) -> Path:
    """`root/NYUDv2` in the ATRC layout: segmentation 0..40 (0 unlabelled), depth .npy with zeros."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "NYUDv2"
    for sub in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    h, w = size
    train, val = nyud_ids(n_train, n_val)
    for image_id in train + val:
        Image.fromarray(_rgb(rng, h, w)).save(base / "images" / f"{image_id}.png")
        seg = rng.integers(0, 41, size=(h, w), dtype=np.uint8)
        seg[0, :] = 0  # an unlabelled row
        Image.fromarray(seg).save(base / "segmentation" / f"{image_id}.png")
        depth = rng.uniform(0.5, 10.0, size=(h, w)).astype(np.float32)
        depth[:, 0] = 0.0  # an invalid column
        np.save(base / "depth" / f"{image_id}.npy", depth)
        Image.fromarray(_normals_png(rng, h, w)).save(base / "normals" / f"{image_id}.png")
        edge = np.where(rng.random((h, w)) < 0.1, 255, 0).astype(np.uint8)
        Image.fromarray(edge).save(base / "edge" / f"{image_id}.png")
    (base / "gt_sets" / "train.txt").write_text("\n".join(train) + "\n")
    (base / "gt_sets" / "val.txt").write_text("\n".join(val) + "\n")
    return base


def _struct(fields: list[str], rows: list[tuple]) -> np.ndarray:
    """A 1 x N MATLAB struct array for scipy.io.savemat."""
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        arr[0, i] = row
    return arr


def write_part_annotation(path: Path, image_id: str, objects: list[dict]) -> None:
    """A PASCAL-Part `anno` struct: objects(i).{class, class_ind, mask, parts(j).{part_name, mask}}."""
    rows = []
    for obj in objects:
        parts = obj.get("parts", {})
        part_arr = (
            _struct(["part_name", "mask"], [(n, m.astype(np.uint8)) for n, m in parts.items()])
            if parts
            else np.zeros((0, 0))
        )
        rows.append(
            (obj["class"], np.array([[obj["class_ind"]]], dtype=np.uint8), obj["mask"].astype(np.uint8), part_arr)
        )
    objects_arr = _struct(["class", "class_ind", "mask", "parts"], rows)
    anno = np.zeros((1, 1), dtype=[("imname", object), ("objects", object)])
    anno[0, 0] = (image_id, objects_arr)
    savemat(path, {"anno": anno})


def write_pascal(
    root: str | Path, n_train: int = 3, n_val: int = 2, size: tuple[int, int] = (24, 32), seed: int = 0
) -> Path:
    """`root/PASCALContext` in the ASTMT layout. The first image of each split has a person with
    head (part 1) and torso (part 2); the others only a dog. LabelMap: left half class 3 (normals
    kept), right half class 1 (normals dropped)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "PASCALContext"
    dirs = [
        "JPEGImages",
        "ImageSets/Context",
        "semseg/VOC12",
        "pascal-context/trainval",
        "human_parts",
        "normals_distill",
        "sal_distill",
    ]
    for sub in dirs:
        (base / sub).mkdir(parents=True, exist_ok=True)
    h, w = size
    train = [f"2008_{i:06d}" for i in range(n_train)]
    val = [f"2009_{i:06d}" for i in range(n_val)]
    for split_ids in (train, val):
        for k, image_id in enumerate(split_ids):
            Image.fromarray(_rgb(rng, h, w)).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            seg = rng.integers(0, 21, size=(h, w), dtype=np.uint8)
            seg[-1, :] = 255  # VOC boundary/ignore
            Image.fromarray(seg).save(base / "semseg" / "VOC12" / f"{image_id}.png")
            label_map = np.ones((h, w), dtype=np.uint16)
            label_map[:, : w // 2] = 3
            savemat(base / "pascal-context" / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})
            body = np.zeros((h, w), dtype=bool)
            body[2:12, 2:10] = True
            if k == 0:
                head = np.zeros_like(body)
                head[2:5, 2:10] = True
                torso = body & ~head
                objects = [{"class": "person", "class_ind": 15, "mask": body, "parts": {"head": head, "torso": torso}}]
            else:
                objects = [{"class": "dog", "class_ind": 12, "mask": body}]
            write_part_annotation(base / "human_parts" / f"{image_id}.mat", image_id, objects)
            Image.fromarray(_normals_png(rng, h, w)).save(base / "normals_distill" / f"{image_id}.png")
            sal = np.where(rng.random((h, w)) < 0.3, 255, 0).astype(np.uint8)
            Image.fromarray(sal).save(base / "sal_distill" / f"{image_id}.png")
    (base / "ImageSets" / "Context" / "train.txt").write_text("\n".join(train) + "\n")
    (base / "ImageSets" / "Context" / "val.txt").write_text("\n".join(val) + "\n")
    return base


# 16-bit tasks and the top of their raw value range (Taskonomy's encodings).
TASKONOMY_16BIT = {
    "depth_euclidean": 2**16,
    "depth_zbuffer": 2**16,
    "edge_occlusion": 410,
    "edge_texture": 5243,
    "keypoints2d": 328,
    "keypoints3d": 2**16,
}
TASKONOMY_RGB = ("normal", "principal_curvature")
TASKONOMY_GREY = ("reshading", "segment_unsup2d", "segment_unsup25d")


def write_taskonomy(
    root: str | Path,
    buildings: dict[str, str] | None = None,
    views: int = 2,
    size: tuple[int, int] = (24, 24),
    seed: int = 0,
    omnidata_level: bool = True,
) -> Path:
    """`root/taskonomy`: rgb + the 11 task folders (16-bit PNGs where Taskonomy has them) and the
    split CSV. `buildings` maps building -> "train" | "val" | "test" (default one of each)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "taskonomy"
    buildings = buildings or {"allensville": "train", "beechwood": "val", "collierville": "test"}
    h, w = size
    for building in buildings:
        for view in range(views):
            key = f"point_{view}_view_{view % 2}"
            for task in ("rgb", *TASKONOMY_16BIT, *TASKONOMY_RGB, *TASKONOMY_GREY):
                folder = base / task / ("taskonomy" if omnidata_level else "") / building
                folder.mkdir(parents=True, exist_ok=True)
                if task in TASKONOMY_16BIT:
                    top = TASKONOMY_16BIT[task]
                    img = Image.fromarray(rng.integers(0, top, size=(h, w), dtype=np.uint16))
                elif task in TASKONOMY_GREY:
                    img = Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8))
                else:
                    img = Image.fromarray(_rgb(rng, h, w))
                img.save(folder / f"{key}_domain_{task}.png")
    rows = ["id,train,val,test"]
    for building, split in buildings.items():
        rows.append(f"{building},{int(split == 'train')},{int(split == 'val')},{int(split == 'test')}")
    (base / "splits_taskonomy").mkdir(exist_ok=True)
    (base / "splits_taskonomy" / "train_val_test_tiny.csv").write_text("\n".join(rows) + "\n")
    return base
