"""Ray casting: camera rays, ray-room and ray-primitive intersections, surface geometry at hits."""

from __future__ import annotations

import numpy as np

from tokenmtl.data.scenes.scene import Camera, Primitive

_EPS = 1e-6


def camera_rays(camera: Camera, size: tuple[int, int]) -> np.ndarray:
    """Ray directions (H*W, 3) through pixel centres, scaled so that ``d . forward = 1``.

    With that scaling the ray parameter t of a hit is its z-depth along the optical axis.
    """
    height, width = size
    tan_x = np.tan(np.radians(camera.fov_deg) / 2)
    xs = ((np.arange(width) + 0.5) / width * 2 - 1) * tan_x
    ys = (1 - (np.arange(height) + 0.5) / height * 2) * tan_x * height / width
    gx, gy = np.meshgrid(xs, ys)
    return camera.forward + gx.reshape(-1, 1) * camera.right + gy.reshape(-1, 1) * camera.up


def intersect_room(origin: np.ndarray, dirs: np.ndarray, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance t and face index (0..5 = -x, +x, -y(floor), +y, -z, +z) from inside the room."""
    lo = np.array([-room[0] / 2, 0.0, 0.0])
    hi = np.array([room[0] / 2, room[1], room[2]])
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axes = np.where(dirs > 0, (hi - origin) / dirs, (lo - origin) / dirs)
    t_axes = np.where(dirs == 0, np.inf, t_axes)
    axis = np.argmin(t_axes, axis=1)
    t = t_axes[np.arange(len(dirs)), axis]
    face = 2 * axis + (dirs[np.arange(len(dirs)), axis] > 0)
    return t, face


def intersect(prim: Primitive, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Nearest hit distance t > 0 along each ray (inf on a miss); origin (3,) or (N, 3)."""
    rot = prim.rotation
    o = (origin - prim.center) @ rot  # local frame: R^T (o - c), row-vector form
    d = dirs @ rot
    if prim.kind == "sphere":
        return _intersect_sphere(o, d, prim.half[0])
    if prim.kind == "box":
        return _intersect_box(o, d, prim.half)
    if prim.kind == "cylinder":
        return _intersect_cylinder(o, d, prim.half[0], prim.half[1])
    raise ValueError(f"unknown primitive kind {prim.kind!r}; expected sphere, box or cylinder")


def _intersect_sphere(o: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    o, d = np.broadcast_arrays(o, d)
    a = d[:, 0] ** 2 + d[:, 1] ** 2 + d[:, 2] ** 2
    b = d[:, 0] * o[:, 0] + d[:, 1] * o[:, 1] + d[:, 2] * o[:, 2]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 + o[:, 2] ** 2 - radius**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - root) / a
    t = np.where(t > _EPS, t, (-b + root) / a)  # origin inside (shadow rays off the surface)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _intersect_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)  # NaN (0/0) only on a slab plane
    t_near = np.fmax(np.fmax(near[:, 0], near[:, 1]), near[:, 2])
    t_far = np.fmin(np.fmin(far[:, 0], far[:, 1]), far[:, 2])
    t = np.where(t_near > _EPS, t_near, t_far)
    return np.where((t_far >= t_near) & (t > _EPS), t, np.inf)


def _intersect_cylinder(o: np.ndarray, d: np.ndarray, radius: float, half_height: float) -> np.ndarray:
    o, d = np.broadcast_arrays(o, d)
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = d[:, 0] * o[:, 0] + d[:, 2] * o[:, 2]
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - radius**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    best = np.full(len(d), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in ((-b - root) / a, (-b + root) / a):
            y = o[:, 1] + t * d[:, 1]
            ok = (disc >= 0) & (a > 0) & (t > _EPS) & (np.abs(y) <= half_height)
            best = np.where(ok & (t < best), t, best)
        for cap in (-half_height, half_height):
            t = (cap - o[:, 1]) / d[:, 1]
            px, pz = o[:, 0] + t * d[:, 0], o[:, 2] + t * d[:, 2]
            ok = (t > _EPS) & (px**2 + pz**2 <= radius**2)
            best = np.where(ok & (t < best), t, best)
    return best


def surface_geometry(prim: Primitive, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Outward world normals (N, 3), principal curvatures (N, 2), local points and face index
    (sphere 0; box 2*axis + positive side; cylinder side 0, top 1, bottom 2) at hit points."""
    rot = prim.rotation
    local = (points - prim.center) @ rot
    curvature = np.zeros((len(points), 2))
    face = np.zeros(len(points), dtype=np.int64)
    rows = np.arange(len(points))
    if prim.kind == "sphere":
        normal = local / np.linalg.norm(local, axis=1, keepdims=True)
        curvature[:] = 1.0 / prim.half[0]
    elif prim.kind == "box":
        axis = np.argmin(np.abs(prim.half - np.abs(local)), axis=1)
        normal = np.zeros_like(local)
        normal[rows, axis] = np.sign(local[rows, axis])
        face = 2 * axis + (normal[rows, axis] > 0)
    else:
        radial = np.hypot(local[:, 0], local[:, 2])
        side = np.abs(radial - prim.half[0]) < np.abs(np.abs(local[:, 1]) - prim.half[1])
        normal = np.zeros_like(local)
        safe = np.maximum(radial, _EPS)
        normal[:, 0] = np.where(side, local[:, 0] / safe, 0.0)
        normal[:, 2] = np.where(side, local[:, 2] / safe, 0.0)
        normal[:, 1] = np.where(side, 0.0, np.sign(local[:, 1]))
        curvature[:, 0] = np.where(side, 1.0 / prim.half[0], 0.0)
        face = np.where(side, 0, np.where(local[:, 1] > 0, 1, 2))
    return normal @ rot.T, curvature, local, face
