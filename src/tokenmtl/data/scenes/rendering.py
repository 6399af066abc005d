"""Rendering one scene: shading, shadows and sensor noise for the image, plus every target map.

Lambert shading with a directional light, an ambient term, hard shadows and Gaussian noise; one
ray per pixel centre, a loop over objects only. Targets follow the conventions of targets.py.
"""

from __future__ import annotations

import numpy as np

from tokenmtl.data.scenes.distribution import FLOOR, WALL, SceneConfig
from tokenmtl.data.scenes.raycast import camera_rays, intersect, intersect_room, surface_geometry
from tokenmtl.data.scenes.sampling import sample_scene
from tokenmtl.data.scenes.scene import Scene, Surface
from tokenmtl.data.scenes.targets import RESHADING_LIGHT, boundary_maps


def _texture_mask(surface: Surface, local: np.ndarray) -> np.ndarray:
    """Solid texture (0/1 per point) evaluated at surface-local 3D points."""
    p = local * surface.texture_freq
    if surface.texture == "stripes":
        return (np.floor(p[:, 1]) % 2).astype(np.float64)
    if surface.texture == "checker":
        return (np.floor(p).sum(axis=1) % 2).astype(np.float64)
    if surface.texture == "dots":
        return (np.linalg.norm(p - np.round(p), axis=1) < 0.3).astype(np.float64)
    return np.zeros(len(local))


def _albedo(surface: Surface, local: np.ndarray) -> np.ndarray:
    """Per-point RGB: the surface colour, darkened where the texture pattern is on."""
    shade = 1.0 - surface.texture_strength * _texture_mask(surface, local)
    return shade[:, None] * surface.color


def render(
    scene: Scene,
    size: tuple[int, int],
    rng: np.random.Generator | None = None,
    depth_scale: float = 1.0,
    edge_depth_threshold: float = 0.05,
    edge_normal_threshold_deg: float = 30.0,
) -> dict[str, np.ndarray]:
    """Ray-cast ``scene``: image (H, W, 3) in [0, 1] and every per-pixel target (see module doc).

    ``rng`` draws the sensor noise; None renders without noise.
    """
    height, width = size
    origin, dirs = scene.camera.position, camera_rays(scene.camera, size)
    t, face = intersect_room(origin, dirs, scene.room)
    hit_id = np.full(len(dirs), -1)
    for k, prim in enumerate(scene.objects):
        t_obj = intersect(prim, origin, dirs)
        closer = t_obj < t
        t = np.where(closer, t_obj, t)
        hit_id[closer] = k
    points = origin + t[:, None] * dirs
    normals, curvature, albedo, label, face = _shade_inputs(scene, points, face, hit_id)
    lambert = np.clip(normals @ scene.light, 0.0, None)
    if scene.shadows and scene.objects:
        lambert *= _visibility(scene, points + 1e-4 * normals, lambert > 0)
    image = albedo * (scene.exposure * (scene.ambient + (1 - scene.ambient) * lambert))[:, None]
    if rng is not None and scene.noise_std > 0:
        image = image + rng.normal(0.0, scene.noise_std, image.shape)
    normals_cam = scene.camera.to_camera_frame(normals)
    depth = t.reshape(height, width) * depth_scale
    semseg = label.reshape(height, width)
    normals_img = normals_cam.reshape(height, width, 3)
    faces = face.reshape(height, width)
    edge, occlusion = boundary_maps(semseg, depth, normals_img, faces, edge_depth_threshold, edge_normal_threshold_deg)
    return {
        "image": np.clip(image, 0.0, 1.0).reshape(height, width, 3),
        "semseg": semseg,
        "depth": depth,
        "normals": normals_img,
        "edge": edge,
        "occlusion_edge": occlusion,
        "reshading": np.clip(normals_cam @ RESHADING_LIGHT, 0.0, None).reshape(height, width),
        "curvature": curvature.reshape(height, width, 2),
        "face": faces,
    }


def _shade_inputs(
    scene: Scene, points: np.ndarray, face: np.ndarray, hit_id: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """World normals, curvatures, albedo, class label and face id of every hit point."""
    n = len(points)
    normals = np.zeros((n, 3))
    axis = face // 2
    normals[np.arange(n), axis] = np.where(face % 2 == 1, -1.0, 1.0)  # room faces point inwards
    curvature = np.zeros((n, 2))
    albedo = np.zeros((n, 3))
    label = np.where(face == 2, FLOOR, WALL)
    face = face.copy()
    room = hit_id < 0
    for surface, mask in ((scene.floor, room & (face == 2)), (scene.wall, room & (face != 2))):
        albedo[mask] = _albedo(surface, points[mask])
    for k, prim in enumerate(scene.objects):
        mask = hit_id == k
        if not mask.any():
            continue
        normals[mask], curvature[mask], local, local_face = surface_geometry(prim, points[mask])
        albedo[mask] = _albedo(prim.surface, local)
        label[mask] = prim.label
        face[mask] = 6 + 6 * k + local_face
    return normals, curvature, albedo, label, face


def _visibility(scene: Scene, starts: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """1 where the ray from the hit point towards the light reaches it, 0 in shadow."""
    visible = np.ones(len(starts))
    if not lit.any():
        return visible
    idx = np.flatnonzero(lit)
    blocked = np.zeros(len(idx), dtype=bool)
    for prim in scene.objects:
        blocked |= np.isfinite(intersect(prim, starts[idx], scene.light[None, :]))
    visible[idx[blocked]] = 0.0
    return visible


def render_index(config: SceneConfig, size: tuple[int, int], seed: int, index: int) -> dict[str, np.ndarray]:
    """Render global image ``index`` of the stream ``seed``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, config)
    return render(scene, size, rng, config.depth_scale, config.edge_depth_threshold, config.edge_normal_threshold_deg)
