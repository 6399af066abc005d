"""The procedural scenes benchmark: exact geometry, edge rule, determinism, cache, preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv

from tokenmtl.data import scenes
from tokenmtl.data.preview import write_preview
from tokenmtl.data.scenes import (
    OBJECT_CLASSES,
    Camera,
    Primitive,
    Scene,
    SceneConfig,
    ScenesBenchmark,
    Surface,
    generate_split,
    render,
    render_index,
)

SMALL = (24, 24)


def small_benchmark(tmp_path, **kwargs) -> ScenesBenchmark:
    options = dict(image_size=24, train_size=6, val_size=4, test_size=3, cache_dir=tmp_path, progress=False)
    options.update(kwargs)
    return ScenesBenchmark(**options)


def one_object_scene(obj: Primitive | None, light=(0.0, 1.0, 0.0), shadows: bool = True) -> Scene:
    """Camera at (0, 1.5, 0.5) looking straight down +z (fov 60), room 5 x 3 x 7, plain surfaces."""
    camera = Camera.looking([0.0, 1.5, 0.5], yaw_deg=0.0, pitch_deg=0.0, fov_deg=60.0)
    floor, wall = Surface(np.array([0.6, 0.5, 0.4])), Surface(np.array([0.8, 0.8, 0.8]))
    return Scene(
        camera,
        np.array([5.0, 3.0, 7.0]),
        floor,
        wall,
        [] if obj is None else [obj],
        np.asarray(light, dtype=float),
        ambient=0.3,
        noise_std=0.0,
        shadows=shadows,
    )


def sphere(center=(0.0, 1.5, 3.5), radius=0.5) -> Primitive:
    look = Surface(np.array([1.0, 0.2, 0.2]))
    return Primitive("sphere", np.array(center), np.full(3, radius), 0.0, 2, look)


# ------------------------------------------------------------------ geometry against analytic values


def test_sphere_centre_pixel_has_analytic_depth_normal_and_curvature():
    out = render(one_object_scene(sphere()), (33, 33))
    assert out["semseg"][16, 16] == 2
    assert out["depth"][16, 16] == pytest.approx(2.5, abs=1e-9)  # 3.5 - 0.5 along the axis
    np.testing.assert_allclose(out["normals"][16, 16], [0.0, 0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(out["curvature"][16, 16], [2.0, 2.0])
    assert out["reshading"][16, 16] == pytest.approx(scenes.RESHADING_LIGHT[2])


def test_sphere_off_centre_pixel_matches_ray_sphere_solution():
    out = render(one_object_scene(sphere()), (33, 33))
    i, j = 14, 19
    tan = np.tan(np.radians(30.0))
    d = np.array([((j + 0.5) / 33 * 2 - 1) * tan, (1 - (i + 0.5) / 33 * 2) * tan, 1.0])
    oc = np.array([0.0, 1.5, 0.5]) - np.array([0.0, 1.5, 3.5])
    a, b, c = d @ d, 2 * d @ oc, oc @ oc - 0.25
    t = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)
    n = (oc + t * d) / 0.5
    assert out["depth"][i, j] == pytest.approx(t, abs=1e-9)  # z-depth = t since d_z = 1
    np.testing.assert_allclose(out["normals"][i, j], [n[0], n[1], -n[2]], atol=1e-9)


def test_room_pixels_hit_the_back_wall_and_floor_at_analytic_depths():
    out = render(one_object_scene(None), (33, 33))
    assert out["semseg"][16, 10] == scenes.WALL
    assert out["depth"][16, 10] == pytest.approx(6.5)  # back wall z = 7, camera z = 0.5
    np.testing.assert_allclose(out["normals"][16, 10], [0, 0, 1], atol=1e-12)
    ys = (1 - 32.5 / 33 * 2) * np.tan(np.radians(30.0))
    assert out["semseg"][32, 16] == scenes.FLOOR
    assert out["depth"][32, 16] == pytest.approx(1.5 / -ys)
    np.testing.assert_allclose(out["normals"][32, 16], [0, 1, 0], atol=1e-12)


def test_rotated_box_face_depth_and_normal():
    yaw = np.radians(30.0)
    box = Primitive("box", np.array([0.0, 1.5, 3.5]), np.full(3, 0.5), yaw, 4, Surface(np.ones(3)))
    out = render(one_object_scene(box), (33, 33))
    assert out["depth"][16, 16] == pytest.approx(3.0 - 0.5 / np.cos(yaw))
    np.testing.assert_allclose(out["normals"][16, 16], [-np.sin(yaw), 0.0, np.cos(yaw)], atol=1e-9)
    np.testing.assert_allclose(out["curvature"][16, 16], [0.0, 0.0])


def test_cylinder_side_depth_normal_and_curvature():
    center, half = np.array([0.0, 1.0, 3.5]), np.array([0.4, 1.0, 0.4])
    cyl = Primitive("cylinder", center, half, 0.0, 6, Surface(np.ones(3)))
    out = render(one_object_scene(cyl), (33, 33))
    assert out["semseg"][16, 16] == 6
    assert out["depth"][16, 16] == pytest.approx(3.1 - 0.5)  # side at z = 3.5 - 0.4
    np.testing.assert_allclose(out["normals"][16, 16], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(out["curvature"][16, 16], [2.5, 0.0])


def test_object_casts_a_shadow_on_the_floor_below_it():
    out = render(one_object_scene(sphere(), light=(0.0, 1.0, 0.0)), (33, 33))
    # Row 30 sees the floor at z ~ 3.5, right under the sphere; column 2 sees floor off to the side.
    shadowed, lit = out["image"][30, 16], out["image"][30, 2]
    assert out["semseg"][30, 16] == out["semseg"][30, 2] == scenes.FLOOR
    np.testing.assert_allclose(shadowed, 0.3 * np.array([0.6, 0.5, 0.4]), atol=1e-9)
    np.testing.assert_allclose(lit, np.array([0.6, 0.5, 0.4]), atol=1e-9)
    unshadowed = render(one_object_scene(sphere(), shadows=False), (33, 33))["image"][30, 16]
    np.testing.assert_allclose(unshadowed, lit, atol=1e-9)


# ------------------------------------------------------------------ target validity


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_rendered_normals_are_unit_and_face_the_camera_and_depth_positive(index):
    config = SceneConfig()
    rng = np.random.default_rng([0, index])
    scene = scenes.sample_scene(rng, config)
    out = render(scene, SMALL, rng)
    np.testing.assert_array_equal(out["image"], render_index(config, SMALL, seed=0, index=index)["image"])
    np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=-1), 1.0, atol=1e-9)
    assert (out["depth"] > 0.3).all() and np.isfinite(out["depth"]).all()
    # Every visible surface faces the viewer: n . (-ray) >= 0, rays (xs, ys, -1) in camera frame.
    h, w = SMALL
    tan = np.tan(np.radians(scene.camera.fov_deg) / 2)
    xs = ((np.arange(w) + 0.5) / w * 2 - 1) * tan
    ys = (1 - (np.arange(h) + 0.5) / h * 2) * tan
    n = out["normals"]
    facing = -n[..., 0] * xs[None, :] - n[..., 1] * ys[:, None] + n[..., 2]
    assert (facing > -1e-9).all()
    assert set(np.unique(out["semseg"])) <= set(range(scenes.NUM_CLASSES))


def independent_edges(labels, depth, normals, faces, depth_threshold, normal_threshold_deg):
    """The documented rule, pixel by pixel: compare (i, j) with (i, j+1) and (i+1, j)."""
    h, w = labels.shape
    edge = np.zeros((h, w), bool)
    occl = np.zeros((h, w), bool)
    surface = lambda f: 0 if f < 6 else (f - 6) // 6 + 1
    for i in range(h):
        for j in range(w):
            for ii, jj in ((i, j + 1), (i + 1, j)):
                if ii >= h or jj >= w:
                    continue
                d1, d2 = depth[i, j], depth[ii, jj]
                jump = abs(d1 - d2) / min(d1, d2) > depth_threshold
                other_surface = surface(faces[i, j]) != surface(faces[ii, jj])
                cos = float(np.dot(normals[i, j], normals[ii, jj]))
                angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
                crease = faces[i, j] != faces[ii, jj] and angle > normal_threshold_deg
                o = jump and other_surface
                occl[i, j] |= o
                edge[i, j] |= o or crease or labels[i, j] != labels[ii, jj]
    return edge, occl


@pytest.mark.parametrize("index", [0, 5, 11])
def test_edges_follow_the_documented_neighbour_rule_exactly(index):
    config = SceneConfig()
    out = render_index(config, SMALL, seed=3, index=index)
    edge, occl = independent_edges(
        out["semseg"],
        out["depth"],
        out["normals"],
        out["face"],
        config.edge_depth_threshold,
        config.edge_normal_threshold_deg,
    )
    np.testing.assert_array_equal(out["edge"], edge)
    np.testing.assert_array_equal(out["occlusion_edge"], occl)
    assert edge.sum() > 10 and occl.sum() > 0
    assert not (out["occlusion_edge"] & ~out["edge"]).any()


def test_a_smooth_sphere_has_edges_only_on_its_silhouette():
    out = render(one_object_scene(sphere()), (33, 33))
    on_sphere = out["semseg"] == 2
    interior = on_sphere.copy()
    interior[:, :-1] &= on_sphere[:, 1:]
    interior[:-1, :] &= on_sphere[1:, :]
    assert interior.sum() > 40
    assert not out["edge"][interior].any()
    silhouette = on_sphere & ~interior
    assert out["edge"][silhouette].all() and out["occlusion_edge"][silhouette].all()


def test_depth_scale_multiplies_depth_only():
    base = render_index(SceneConfig(), SMALL, seed=1, index=7)
    scaled = render_index(SceneConfig(depth_scale=10.0), SMALL, seed=1, index=7)
    np.testing.assert_allclose(scaled["depth"], 10.0 * base["depth"], rtol=1e-12)
    for key in ("image", "semseg", "normals", "edge", "curvature"):
        np.testing.assert_array_equal(scaled[key], base[key])


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_arrays_and_another_seed_differs():
    a = generate_split(SceneConfig(), SMALL, seed=4, split="val", count=5, progress=False)
    b = generate_split(SceneConfig(), SMALL, seed=4, split="val", count=5, progress=False)
    c = generate_split(SceneConfig(), SMALL, seed=5, split="val", count=5, progress=False)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["depth"], c["depth"])


def test_output_does_not_depend_on_chunking_or_workers():
    common = dict(seed=2, split="train", count=7, progress=False)
    one = generate_split(SceneConfig(), SMALL, workers=1, chunk_size=7, **common)
    many = generate_split(SceneConfig(), SMALL, workers=2, chunk_size=2, **common)
    for key in one:
        np.testing.assert_array_equal(one[key], many[key])
    alone = scenes._to_storage(render_index(SceneConfig(), SMALL, seed=2, index=5))
    np.testing.assert_array_equal(alone["depth"], one["depth"][5])


def test_splits_are_disjoint_streams():
    train = generate_split(SceneConfig(), SMALL, seed=0, split="train", count=3, progress=False)
    val = generate_split(SceneConfig(), SMALL, seed=0, split="val", count=3, progress=False)
    assert not any(np.array_equal(train["depth"][i], val["depth"][j]) for i in range(3) for j in range(3))


# ------------------------------------------------------------------ appearance statistics


def class_hue_stats(arrays, label):
    """Circular mean hue (turns) and resultant length over saturated pixels of one class."""
    rgb = arrays["image"].transpose(0, 2, 3, 1).astype(np.float64) / 255.0
    hsv = rgb_to_hsv(rgb)
    mask = (arrays["semseg"] == label) & (hsv[..., 1] > 0.25) & (hsv[..., 2] > 0.15)
    angles = 2 * np.pi * hsv[..., 0][mask]
    vector = np.array([np.cos(angles).mean(), np.sin(angles).mean()])
    return (np.arctan2(vector[1], vector[0]) / (2 * np.pi)) % 1.0, np.linalg.norm(vector)


def hue_distance(a, b):
    return min(abs(a - b), 1 - abs(a - b))


def test_object_colour_follows_class_and_color_noise_loosens_it():
    common = dict(size=(32, 32), seed=0, split="train", count=80, progress=False)
    tied = generate_split(SceneConfig(), **common)
    loose = generate_split(SceneConfig(color_noise=1.0), **common)
    assert set(np.unique(tied["semseg"])) == set(range(scenes.NUM_CLASSES))
    for cls in OBJECT_CLASSES:
        hue, concentration = class_hue_stats(tied, cls.label)
        assert hue_distance(hue, cls.hue) < 0.05, cls.name
        assert concentration > 0.8, cls.name
        assert class_hue_stats(loose, cls.label)[1] < concentration - 0.3, cls.name


def test_distractor_colors_saturate_floor_and_walls():
    def room_saturation(config):
        arrays = generate_split(config, SMALL, seed=0, split="train", count=20, progress=False)
        hsv = rgb_to_hsv(arrays["image"].transpose(0, 2, 3, 1) / 255.0)
        return hsv[..., 1][arrays["semseg"] <= scenes.WALL].mean()

    assert room_saturation(SceneConfig(distractor_colors=True)) > room_saturation(SceneConfig()) + 0.15


# ------------------------------------------------------------------ benchmark, dataset, cache


def test_dataset_items_follow_the_internal_contract(tmp_path):
    bench = small_benchmark(tmp_path)
    item = bench.dataset("train", train=False)[2]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert item["semseg"].shape == (24, 24) and item["semseg"].dtype == torch.int64
    assert item["depth"].shape == (1, 24, 24) and (item["depth"] > 0).all()
    assert item["normals"].shape == (3, 24, 24)
    torch.testing.assert_close(item["normals"].norm(dim=0), torch.ones(24, 24), atol=1e-5, rtol=0)
    assert item["edge"].shape == (1, 24, 24) and set(item["edge"].unique().tolist()) <= {0.0, 1.0}
    assert item["curvature"].shape == (2, 24, 24) and item["reshading"].shape == (1, 24, 24)
    raw = bench.arrays("train")["image"][2] / 255.0
    mean, std = torch.tensor(scenes.IMAGE_MEAN).view(3, 1, 1), torch.tensor(scenes.IMAGE_STD).view(3, 1, 1)
    torch.testing.assert_close(item["image"] * std + mean, torch.from_numpy(raw).float(), atol=1e-5, rtol=0)
    assert len(bench.dataset("val", train=False)) == 4 and len(bench.dataset("test", train=False)) == 3


def test_cached_split_is_loaded_without_regenerating(tmp_path, monkeypatch):
    first = small_benchmark(tmp_path).arrays("val")
    assert small_benchmark(tmp_path).cache_path("val").exists()
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # no temp files left behind

    def boom(*args, **kwargs):
        raise AssertionError("regenerated a cached split")

    monkeypatch.setattr(scenes, "generate_split", boom)
    second = small_benchmark(tmp_path).arrays("val")
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


CHANGES = [
    {"scene": {"noise_std": 0.05}},
    {"scene": {"depth_scale": 10.0}},
    {"seed": 1},
    {"val_size": 5},
    {"image_size": 20},
]


@pytest.mark.parametrize("change", CHANGES)
def test_changed_settings_never_reuse_the_cache(tmp_path, monkeypatch, change):
    base = small_benchmark(tmp_path)
    base.arrays("val")
    changed = small_benchmark(tmp_path, **change)
    assert changed.cache_path("val") != base.cache_path("val")

    def generate(*args, **kwargs):
        raise RuntimeError("generate called")

    monkeypatch.setattr(scenes, "generate_split", generate)
    with pytest.raises(RuntimeError, match="generate called"):
        changed.arrays("val")


def test_corrupt_cache_warns_with_its_path_and_regenerates(tmp_path):
    original = small_benchmark(tmp_path).arrays("test")
    path = small_benchmark(tmp_path).cache_path("test")
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match=path.name):
        again = small_benchmark(tmp_path).arrays("test")
    np.testing.assert_array_equal(original["image"], again["image"])
    assert scenes.load_arrays(path, ["image"])["image"].shape == original["image"].shape


def test_flip_mirrors_every_target_and_negates_normals_x(tmp_path):
    bench = small_benchmark(tmp_path, flip=True)
    plain = bench.dataset("train", train=False)[1]
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = bench.dataset("train", train=True)[1]
        flipped = not torch.equal(item["depth"], plain["depth"])
        seen.add(flipped)
        if flipped:
            torch.testing.assert_close(item["depth"], plain["depth"].flip(-1))
            torch.testing.assert_close(item["semseg"], plain["semseg"].flip(-1))
            torch.testing.assert_close(item["normals"][0], -plain["normals"][0].flip(-1))
            torch.testing.assert_close(item["normals"][1:], plain["normals"][1:].flip(-1))
    assert seen == {True, False}


def test_bad_options_are_rejected_with_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="valid options: .*noise_std"):
        small_benchmark(tmp_path, scene={"noise": 0.1})
    with pytest.raises(ValueError, match="valid tasks: .*curvature"):
        small_benchmark(tmp_path).task_spec("saliency")
    with pytest.raises(ValueError, match="color_noise"):
        SceneConfig(color_noise=2.0)
    with pytest.raises(ValueError, match="valid splits"):
        small_benchmark(tmp_path).dataset("holdout", train=False)


def test_scene_dict_is_accepted_and_lists_become_tuples(tmp_path):
    bench = small_benchmark(tmp_path, scene={"num_objects": [1, 2], "texture": False})
    assert bench.scene == SceneConfig(num_objects=(1, 2), texture=False)


def test_task_specs_use_scene_classes_and_nyud_edge_tolerance(tmp_path):
    pytest.importorskip("tokenmtl.tasks")
    bench = small_benchmark(tmp_path)
    assert bench.task_spec("semseg").out_channels == scenes.NUM_CLASSES == 8
    assert bench.task_spec("edge").make_meter.keywords["tolerance"] == pytest.approx(0.011)
    assert bench.task_spec("curvature").out_channels == 2
    assert all(bench.task_spec(t).name == t for t in bench.available_tasks)


def test_preview_writes_a_png_grid(tmp_path):
    from PIL import Image

    bench = small_benchmark(tmp_path)
    path = write_preview(bench, tmp_path / "preview" / "grid.png", n=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as png:
        width, height = png.size
        pixels = np.asarray(png.convert("RGB"), dtype=np.float64)
    assert width / height == pytest.approx(5 / 3, rel=0.05)  # image + 4 default tasks, 3 rows
    assert pixels.std() > 20


# ------------------------------------------------------------------ bit-identical output (regression)


def storage_digest(arrays) -> str:
    """SHA-256 (first 32 hex digits) of every array's name, dtype, shape and bytes, keys sorted."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        for part in (key, str(value.dtype), str(value.shape)):
            digest.update(part.encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:32]


DEFAULT_SPLIT_DIGESTS = {  # generate_split(SceneConfig(), (32, 32), seed=0, "train", 3), per array
    "curvature": "a6ed140796870852421729b8cde33135",
    "depth": "38045ffedd112fc050cf666602933dd7",
    "edge": "9692450c0b4ba0636a8e3cceb425b41a",
    "face": "f09e0f96f657f7f3d1b28bbc4a83d72b",
    "image": "860c4e74576be55efebd26177f5f73fe",
    "normals": "53dcee3db2e52ad22060ebd791e32453",
    "occlusion_edge": "43fb10c4924af3f1fcd60b19dcff63e1",
    "reshading": "983320fe50f1675e9baa676f8b1bc246",
    "semseg": "7d8a9073ded6966efae052c498fdc83e",
}


def test_generated_images_are_bit_identical_to_the_recorded_digests():
    """Digests recorded from the single-file generator before it became a package: any change to
    sampling, ray casting, targets or storage shows up here (bump GENERATOR_VERSION if intended)."""
    default = generate_split(SceneConfig(), (32, 32), seed=0, split="train", count=3, progress=False)
    assert {key: storage_digest({key: value}) for key, value in default.items()} == DEFAULT_SPLIT_DIGESTS
    busy = SceneConfig(distractor_colors=True, depth_scale=10.0, num_objects=(5, 6))
    plain = SceneConfig(shadows=False, texture=False, color_noise=1.0)
    assert (
        storage_digest(generate_split(busy, (24, 20), seed=7, split="val", count=2, progress=False))
        == "c137c893621f43556ae03fda65e3737e"
    )
    assert (
        storage_digest(generate_split(plain, (16, 16), seed=123, split="test", count=2, progress=False))
        == "6e3ccffa3aceca18b1a19fdf1c6f4887"
    )
