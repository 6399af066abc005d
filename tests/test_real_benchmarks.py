"""NYUD-v2, PASCAL-Context and Taskonomy loaders on tiny fixtures in their exact on-disk formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fixtures_real import nyud_ids, write_nyud, write_part_annotation, write_pascal, write_taskonomy
from tokenmtl.config import load_config
from tokenmtl.data.errors import DataError
from tokenmtl.data.nyud import NYUDBenchmark
from tokenmtl.data.pascal import PascalContextBenchmark, edges_from_labelmap, thin
from tokenmtl.data.taskonomy import TASKS, TaskonomyBenchmark
from tokenmtl.data.transforms import (
    EvalTransform,
    TrainTransform,
    hflip,
    hsv_to_rgb,
    pad_to,
    photometric_distortion,
    rgb_to_hsv,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = (40, 48)  # larger than the 32x40 NYUD fixture: eval pads


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory) -> Path:
    return write_nyud(tmp_path_factory.mktemp("nyud"))


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory) -> Path:
    return write_pascal(tmp_path_factory.mktemp("pascal"))


def raw_nyud(root: Path, image_id: str) -> dict[str, np.ndarray]:
    return {
        "seg": np.asarray(Image.open(root / "segmentation" / f"{image_id}.png")),
        "depth": np.load(root / "depth" / f"{image_id}.npy"),
        "edge": np.asarray(Image.open(root / "edge" / f"{image_id}.png")),
    }


# ---------------------------------------------------------------- NYUD-v2
def test_nyud_eval_sample_has_library_conventions(nyud_root):
    bench = NYUDBenchmark(nyud_root, image_size=SIZE)
    sample = bench.dataset("val", train=False)[0]
    assert sample["image"].shape == (3, *SIZE) and sample["image"].dtype == torch.float32
    assert sample["semseg"].shape == SIZE and sample["semseg"].dtype == torch.int64
    assert sample["depth"].shape == (1, *SIZE) and sample["normals"].shape == (3, *SIZE)
    assert sample["edge"].shape == (1, *SIZE)
    raw = raw_nyud(nyud_root, nyud_ids()[1][0])
    top, left = (SIZE[0] - 32) // 2, (SIZE[1] - 40) // 2
    inner = (slice(top, top + 32), slice(left, left + 40))
    seg = sample["semseg"][inner].numpy()
    assert (seg[raw["seg"] == 0] == 255).all()  # label 0 is ignored
    assert (seg[raw["seg"] > 0] == raw["seg"][raw["seg"] > 0] - 1).all()  # others x - 1
    depth = sample["depth"][0][inner].numpy()
    np.testing.assert_allclose(depth, raw["depth"], rtol=1e-6)  # metres, 0 stays invalid
    assert (depth[:, 0] == 0).all()
    assert set(np.unique(sample["edge"][0][inner].numpy())) <= {0.0, 1.0}
    np.testing.assert_array_equal(sample["edge"][0][inner].numpy(), raw["edge"] / 255.0)
    norms = sample["normals"][:, inner[0], inner[1]].norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=0.02)


def test_nyud_padding_uses_each_targets_ignore_value(nyud_root):
    sample = NYUDBenchmark(nyud_root, image_size=SIZE).dataset("val", train=False)[0]
    assert (sample["semseg"][:4] == 255).all() and (sample["edge"][:, :4] == 255).all()
    assert (sample["depth"][:, :4] == 0).all() and (sample["normals"][:, :4] == 0).all()
    assert (sample["image"][:, :4] == 0).all()


def test_nyud_splits_and_task_specs(nyud_root):
    bench = NYUDBenchmark(nyud_root.parent, image_size=SIZE)  # the parent of NYUDv2/ works too
    assert len(bench.dataset("train", True)) == 3 and len(bench.dataset("test", False)) == 2
    specs = {t: bench.task_spec(t) for t in bench.available_tasks}
    assert specs["semseg"].out_channels == 40 and specs["normals"].out_channels == 3
    assert specs["depth"].out_channels == 1 and specs["edge"].primary_metric == "odsF"
    only_depth = bench.dataset("val", False, tasks=["depth"])[0]
    assert set(only_depth) == {"image", "depth"}
    with pytest.raises(ValueError, match="available"):
        bench.task_spec("saliency")


def test_eval_transform_is_deterministic(nyud_root):
    ds = NYUDBenchmark(nyud_root, image_size=SIZE).dataset("val", train=False)
    torch.manual_seed(1)
    a = ds[1]
    torch.manual_seed(2)
    b = ds[1]
    for key in a:
        assert torch.equal(a[key], b[key])


def test_train_transform_reproducible_with_seed_and_varies_across_seeds(nyud_root):
    ds = NYUDBenchmark(nyud_root, image_size=(24, 24)).dataset("train", train=True)
    torch.manual_seed(5)
    a = ds[0]
    torch.manual_seed(5)
    b = ds[0]
    torch.manual_seed(6)
    c = ds[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (3, 24, 24) and a["semseg"].shape == (24, 24)
    values = set(torch.unique(a["semseg"]).tolist())
    assert values <= set(range(40)) | {255}


def test_random_scaling_divides_depth_by_the_scale_factor():
    sample = {"image": torch.zeros(3, 10, 10), "depth": torch.full((1, 10, 10), 4.0)}
    torch.manual_seed(0)
    out = TrainTransform((10, 10), scale=(2.0, 2.0), cat_max_ratio=1.0)(sample)
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 2.0))


def test_hflip_mirrors_and_negates_normals_x():
    normals = torch.randn(3, 4, 5)
    sample = hflip({"image": torch.arange(20.0).view(1, 4, 5).expand(3, 4, 5), "normals": normals})
    assert torch.equal(sample["image"][0, 0], torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    assert torch.equal(sample["normals"][0], -normals[0].flip(-1))
    assert torch.equal(sample["normals"][1:], normals[1:].flip(-1))


def test_pad_to_centres_and_fills_per_task():
    sample = {"image": torch.ones(3, 2, 2), "semseg": torch.zeros(1, 2, 2), "depth": torch.ones(1, 2, 2)}
    out = pad_to(sample, (4, 5))
    assert out["semseg"].shape == (1, 4, 5)
    assert out["semseg"][0, 0, 0] == 255 and out["depth"][0, 0, 0] == 0 and out["image"][0, 0, 0] == 0
    assert torch.equal(out["depth"][0, 1:3, 1:3], torch.ones(2, 2))


def test_hsv_round_trip_is_identity():
    img = torch.rand(3, 6, 7) * 255
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(img)), img, atol=1e-3)


def test_photometric_distortion_keeps_uint8_range():
    torch.manual_seed(0)
    img = torch.rand(3, 8, 8) * 255
    for _ in range(20):
        out = photometric_distortion(img)
        assert out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())


def test_eval_transform_crops_larger_images_to_size():
    out = EvalTransform((4, 4))({"image": torch.zeros(3, 6, 8), "edge": torch.zeros(1, 6, 8)})
    assert out["image"].shape == (3, 4, 4) and out["edge"].shape == (1, 4, 4)


# ---------------------------------------------------------------- bad data
def test_missing_root_says_how_to_point_at_the_data(tmp_path):
    with pytest.raises(DataError, match="--data-root"):
        NYUDBenchmark(None)
    with pytest.raises(DataError, match="gt_sets"):
        NYUDBenchmark(tmp_path / "nowhere")


def test_missing_task_folder_is_named(tmp_path):
    root = write_nyud(tmp_path)
    (root / "edge").rename(root / "edges_old")
    with pytest.raises(DataError, match="edge"):
        NYUDBenchmark(root).dataset("train", True)


def test_missing_listed_file_names_file_and_task_or_is_skipped(tmp_path):
    root = write_nyud(tmp_path)
    (root / "depth" / "0001.npy").unlink()
    with pytest.raises(DataError) as err:
        NYUDBenchmark(root, image_size=SIZE).dataset("train", False)
    assert "0001.npy" in str(err.value) and "'depth'" in str(err.value)
    ds = NYUDBenchmark(root, image_size=SIZE, skip_bad=True).dataset("train", False)
    assert ds.bad_samples.count == 1 and ds.bad_samples.bad_ids() == ["0001"]
    assert torch.equal(ds[1]["image"], ds[2]["image"])  # the next good sample is served
    assert "skipped 1 of 3" in ds.bad_samples.summary()


@pytest.mark.parametrize(
    "corrupt, message", [("shape", "shape"), ("range", "out of range"), ("unreadable", "unreadable image")]
)
def test_bad_files_raise_naming_file_and_task(tmp_path, corrupt, message):
    root = write_nyud(tmp_path)
    if corrupt == "shape":
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "segmentation" / "0000.png")
        bad_file, task = "segmentation/0000.png", "semseg"
    elif corrupt == "range":
        Image.fromarray(np.full((32, 40), 77, np.uint8)).save(root / "segmentation" / "0000.png")
        bad_file, task = "segmentation/0000.png", "semseg"
    else:
        (root / "images" / "0000.png").write_bytes(b"not a png")
        bad_file, task = "images/0000.png", "image"
    ds = NYUDBenchmark(root, image_size=SIZE).dataset("train", False)
    with pytest.raises(DataError, match=message) as err:
        ds[0]
    assert bad_file in str(err.value) and f"'{task}'" in str(err.value)


def test_skip_bad_counts_samples_found_bad_in_dataloader_workers(tmp_path):
    root = write_nyud(tmp_path, n_train=4)
    (root / "images" / "0002.png").write_bytes(b"broken")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "edge" / "0003.png")
    ds = NYUDBenchmark(root, image_size=SIZE, skip_bad=True).dataset("train", False)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert sum(len(b["image"]) for b in batches) == 4
    assert ds.bad_samples.count == 2 and sorted(ds.bad_samples.bad_ids()) == ["0002", "0003"]


# ---------------------------------------------------------------- PASCAL-Context
def test_pascal_sample_shapes_and_targets(pascal_root):
    bench = PascalContextBenchmark(pascal_root, image_size=(32, 32))
    ds = bench.dataset("val", train=False)
    person, dog = ds[0], ds[1]
    assert person["image"].shape == (3, 32, 32)
    assert person["semseg"].dtype == torch.int64 and person["human_parts"].dtype == torch.int64
    inner = (slice(4, 28), slice(0, 32))  # 24x32 fixture padded to 32x32
    parts = person["human_parts"][inner]
    assert set(torch.unique(parts).tolist()) == {0, 1, 2}  # background, head, torso
    assert (parts[2:5, 2:10] == 1).all() and (parts[5:12, 2:10] == 2).all()
    assert (dog["human_parts"] == 255).all()  # no person: ignored
    assert set(torch.unique(person["saliency"][:, inner[0]]).tolist()) <= {0.0, 1.0}
    assert set(torch.unique(person["semseg"]).tolist()) <= set(range(21)) | {255}
    normals = person["normals"][:, inner[0], inner[1]]
    assert (normals[:, :, 16:] == 0).all()  # class 1: not an NYU class
    assert (normals[:, :, :16].norm(dim=0) > 0.9).all()  # class 3: kept
    edge = person["edge"][0][inner]
    assert (edge[:, 15] == 1).sum() + (edge[:, 16] == 1).sum() >= 20 and edge.sum() <= 24
    specs = {t: bench.task_spec(t) for t in bench.available_tasks}
    assert specs["semseg"].out_channels == 21 and specs["human_parts"].out_channels == 7


def test_pascal_human_parts_alone_keeps_only_images_with_a_person(pascal_root):
    bench = PascalContextBenchmark(pascal_root, image_size=(32, 32), tasks=["human_parts"])
    assert len(bench.dataset("train", True)) == 1
    assert len(PascalContextBenchmark(pascal_root).dataset("train", True)) == 3


def test_pascal_train_sample_is_cropped_and_binary(pascal_root):
    torch.manual_seed(0)
    sample = PascalContextBenchmark(pascal_root, image_size=(16, 16)).dataset("train", True)[0]
    assert sample["image"].shape == (3, 16, 16) and sample["edge"].shape == (1, 16, 16)
    assert set(torch.unique(sample["edge"]).tolist()) <= {0.0, 1.0, 255.0}


def test_pascal_malformed_part_annotation_is_named(tmp_path):
    root = write_pascal(tmp_path)
    from scipy.io import savemat

    savemat(root / "human_parts" / "2008_000000.mat", {"something": np.zeros(3)})
    ds = PascalContextBenchmark(root, image_size=(32, 32)).dataset("train", False)
    with pytest.raises(DataError, match="'anno'") as err:
        ds[0]
    assert "2008_000000.mat" in str(err.value) and "'human_parts'" in str(err.value)
    mask = np.zeros((24, 32), bool)
    write_part_annotation(
        root / "human_parts" / "2008_000000.mat",
        "x",
        [{"class": "person", "class_ind": 15, "mask": mask, "parts": {"tail": mask}}],
    )
    with pytest.raises(DataError, match="unknown person part"):
        ds[0]


def test_edges_are_thin_labelmap_boundaries():
    label_map = np.ones((6, 8), np.uint16)
    label_map[:, :4] = 3
    edge = edges_from_labelmap(label_map)
    assert edge[:, 4:].sum() == 0 and (edge[1:, 3] == 1).all() and edge.sum() <= 6
    band = np.zeros((7, 9), bool)
    band[2:5, 1:8] = True
    assert thin(band).sum(axis=0).max() == 1  # a 3-pixel band becomes a 1-pixel line


# ---------------------------------------------------------------- Taskonomy
@pytest.mark.parametrize("omnidata_level", [True, False])
def test_taskonomy_loads_the_eleven_tasks(tmp_path, omnidata_level):
    root = write_taskonomy(tmp_path, omnidata_level=omnidata_level)
    bench = TaskonomyBenchmark(root, image_size=(16, 16))
    train, test = bench.dataset("train", True), bench.dataset("test", False)
    assert len(train) == 4 and len(test) == 2  # train+val buildings / test building
    sample = test[0]
    assert sample["image"].shape == (3, 16, 16) and sample["image"].abs().max() <= 1.0
    for task, (channels, _metric) in TASKS.items():
        assert sample[task].shape == (channels, 16, 16) and sample[task].dtype == torch.float32
        assert bench.task_spec(task).out_channels == channels
    assert ((sample["depth_euclidean"] >= 0) & (sample["depth_euclidean"] <= 1)).all()
    assert sample["normal"].abs().max() <= 1.0
    for task in ("edge_texture", "keypoints2d", "reshading", "segment_unsup2d"):
        assert sample[task].abs().max() <= 1.0
    assert bench.task_spec("principal_curvature").primary_metric == "rmse"
    assert bench.task_spec("reshading").primary_metric == "l1"


def test_taskonomy_missing_task_file_is_named(tmp_path):
    root = write_taskonomy(tmp_path)
    victim = root / "reshading" / "taskonomy" / "collierville" / "point_1_view_1_domain_reshading.png"
    victim.unlink()
    with pytest.raises(DataError, match="reshading") as err:
        TaskonomyBenchmark(root).dataset("test", False)
    assert victim.name in str(err.value)
    ds = TaskonomyBenchmark(root, image_size=(8, 8), skip_bad=True).dataset("test", False)
    assert ds.bad_samples.count == 1 and len(ds[1]) == 12


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "name",
    ["nyud_vit_t", "nyud_vit_s", "nyud_vit_b", "pascal_vit_t", "pascal_vit_s", "pascal_vit_b", "taskonomy_vit_b"],
)
def test_paper_configs_validate_and_match_the_paper(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    train = cfg["train"]
    assert (train["iterations"], train["batch_size"], train["lr"], train["weight_decay"]) == (60000, 6, 2.0e-5, 1.0e-6)
    assert cfg["model"]["pretrained"] is True and cfg["model"]["drop_path_rate"] == 0.15
    assert cfg["model"]["img_size"] == cfg["benchmark"]["image_size"]
    bench_cls = {"nyud": NYUDBenchmark, "pascal": PascalContextBenchmark, "taskonomy": TaskonomyBenchmark}[
        cfg["benchmark"]["name"]
    ]
    assert set(cfg["tasks"]) == set(bench_cls.available_tasks)
