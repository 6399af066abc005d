"""Procedural indoor scenes: a ray-cast benchmark with exact dense ground truth.

Each image is a closed box-shaped room (floor, walls, ceiling) holding a few primitives (spheres,
rotated boxes, vertical cylinders) of six object classes whose colour, texture, shape and size
correlate with the class. Rendering is vectorised numpy ray casting (one ray per pixel centre,
a loop over objects only), Lambert shading with a directional light, ambient term, hard shadows
and Gaussian sensor noise. Every image is a pure function of ``(seed, global index, config)``:
``numpy.random.default_rng([seed, index])`` seeds it, so any image can be regenerated alone and
results never depend on batching, chunking or worker count.

Conventions (shared by every target):

- world: x right, y up (floor at y = 0), z into the room; lengths in metres ("scene units").
- camera frame: x right in the image, y up in the image, z towards the viewer (OpenGL style),
  so a surface facing the camera has a normal with z > 0.
- ``depth``: z-depth along the optical axis (not the ray length), times ``depth_scale``; > 0
  everywhere because the room is closed.
- ``face`` (stored for the edge rule, not a task): an id per flat face or smooth patch (room
  faces 0..5; object k: ``6 + 6k + f`` with f a face of that primitive: box sides, cylinder
  side/top/bottom, the whole sphere).
  Its surface (the room or one object) is 0 for ids < 6, else ``(id - 6) // 6 + 1``.
- ``occlusion_edge``: pixel (i, j) is 1 when, compared with its right neighbour (i, j+1) or its
  bottom neighbour (i+1, j), it lies on another surface and the depth jumps:
  ``|d1 - d2| / min(d1, d2) > edge_depth_threshold``. Requiring another surface keeps planes seen
  at grazing angles (large but smooth depth changes per pixel) free of false edges.
- ``edge``: pixel (i, j) is 1 when, against the same right/bottom neighbours, the class differs,
  or it is an occlusion edge, or the face differs and the normals differ by more than
  ``edge_normal_threshold_deg`` (creases; a smooth sphere never marks itself). So the marked
  side of any boundary is always the left/top pixel, and border pixels mark only inward pairs.
- ``reshading``: Lambert shading ``max(0, n . l)`` of the geometry under a fixed light
  ``l = normalise(0.4, 0.6, 0.7)`` in camera coordinates (no albedo, no shadow, no ambient).
- ``curvature``: the two principal curvature magnitudes ``(k1 >= k2)`` in 1/metre, analytic per
  primitive: sphere ``(1/r, 1/r)``, cylinder side ``(1/r, 0)``, planes and caps ``(0, 0)``.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tokenmtl.data.errors import DataError

GENERATOR_VERSION = 1
"""Bumped whenever rendering changes, so caches written by older code are never reused."""

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "ball", "globe", "crate", "cabinet", "pillar", "drum")
NUM_CLASSES = len(CLASS_NAMES)
FLOOR, WALL = 0, 1

IMAGE_MEAN: tuple[float, float, float] = (0.430, 0.384, 0.366)
"""Per-channel mean of default-config images in [0, 1] (2,000 train images, seed 0)."""
IMAGE_STD: tuple[float, float, float] = (0.188, 0.157, 0.154)
"""Per-channel standard deviation of default-config images in [0, 1]."""

RESHADING_LIGHT = np.array([0.4, 0.6, 0.7]) / np.linalg.norm([0.4, 0.6, 0.7])
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
"""Global image index = offset + index in split, so the splits never share an image."""
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checker", "dots")
_EPS = 1e-6


@dataclass(frozen=True)
class ObjectClass:
    """How instances of one object class look: shape, size ranges, hue and texture."""

    name: str
    label: int
    kind: str                          # "sphere", "box" or "cylinder"
    size_lo: tuple[float, float, float]  # half-extents (x, y, z); sphere: radius in [0]
    size_hi: tuple[float, float, float]
    hue: float                         # in turns, [0, 1)
    texture: str                       # one of TEXTURES
    texture_freq: float                # pattern periods per metre


OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    # Cues overlap on purpose: ball/globe share a shape, crate/drum and cabinet/pillar have near
    # hues, crate/pillar share stripes, so no single cue (hue, texture, shape) separates all.
    ObjectClass("ball", 2, "sphere", (0.2, 0, 0), (0.4, 0, 0), 0.00, "plain", 0.0),
    ObjectClass("globe", 3, "sphere", (0.32, 0, 0), (0.55, 0, 0), 0.80, "checker", 5.0),
    ObjectClass("crate", 4, "box", (0.22, 0.2, 0.22), (0.42, 0.42, 0.42), 0.07, "stripes", 6.0),
    ObjectClass("cabinet", 5, "box", (0.2, 0.55, 0.18), (0.38, 0.85, 0.3), 0.60, "plain", 0.0),
    ObjectClass("pillar", 6, "cylinder", (0.1, 0.45, 0.1), (0.2, 0.8, 0.2), 0.52, "stripes", 7.0),
    ObjectClass("drum", 7, "cylinder", (0.28, 0.16, 0.28), (0.45, 0.32, 0.45), 0.14, "dots", 5.0),
)


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene distribution; the negative-transfer levers are the first block.

    num_objects: (min, max) objects per scene, inclusive.
    color_noise: how loosely hue follows class, as the width in hue turns of a uniform jitter
        around the class hue; 0 = hue fixed by class, 1 = hue independent of class.
    texture: draw class textures on objects (stripes / checker / dots); off = plain albedo.
    texture_noise: probability that an object wears a random texture instead of its class's.
    distractor_colors: floors and walls get random saturated colours and random textures, which
        geometry tasks must learn to ignore (default: plausible desaturated room colours).
    noise_std: standard deviation of the Gaussian sensor noise added to the [0, 1] image.
    depth_scale: multiplies depth (10 = decimetres: a 10x loss-scale lever for the depth task).
    shadows: cast hard shadows of objects onto everything.
    ambient: (min, max) ambient light fraction.
    fov_deg, pitch_deg, yaw_deg: (min, max) horizontal field of view, downward tilt, and turn of
        the camera, in degrees.
    camera_height: (min, max) camera height in metres.
    edge_depth_threshold: relative depth jump between 4-neighbours on different surfaces that
        makes an occlusion edge.
    edge_normal_threshold_deg: normal angle between 4-neighbours on different faces that makes
        a crease edge.
    """

    num_objects: tuple[int, int] = (3, 6)
    color_noise: float = 0.12
    texture: bool = True
    texture_noise: float = 0.15
    distractor_colors: bool = False
    noise_std: float = 0.02
    depth_scale: float = 1.0
    shadows: bool = True
    ambient: tuple[float, float] = (0.3, 0.5)
    fov_deg: tuple[float, float] = (50.0, 70.0)
    pitch_deg: tuple[float, float] = (8.0, 28.0)
    yaw_deg: tuple[float, float] = (-15.0, 15.0)
    camera_height: tuple[float, float] = (1.1, 1.8)
    edge_depth_threshold: float = 0.05
    edge_normal_threshold_deg: float = 30.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        """Reject values that would make scenes degenerate, naming the field and the value."""
        for name in ("num_objects", "ambient", "fov_deg", "pitch_deg", "yaw_deg", "camera_height"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"SceneConfig.{name} must be (min, max) with min <= max, got {(lo, hi)}")
        checks = {
            "num_objects": self.num_objects[0] >= 0,
            "color_noise": 0.0 <= self.color_noise <= 1.0,
            "texture_noise": 0.0 <= self.texture_noise <= 1.0,
            "noise_std": self.noise_std >= 0.0,
            "depth_scale": self.depth_scale > 0.0,
            "ambient": 0.0 <= self.ambient[0] and self.ambient[1] <= 1.0,
            "fov_deg": 10.0 <= self.fov_deg[0] and self.fov_deg[1] <= 100.0,
            "pitch_deg": -30.0 <= self.pitch_deg[0] and self.pitch_deg[1] <= 45.0,
            "yaw_deg": -30.0 <= self.yaw_deg[0] and self.yaw_deg[1] <= 30.0,
            "camera_height": 0.3 <= self.camera_height[0] and self.camera_height[1] <= 2.5,
            "edge_depth_threshold": self.edge_depth_threshold > 0.0,
            "edge_normal_threshold_deg": 0.0 < self.edge_normal_threshold_deg < 180.0,
        }
        allowed = {
            "num_objects": "min >= 0", "color_noise": "in [0, 1]", "texture_noise": "in [0, 1]",
            "noise_std": ">= 0", "depth_scale": "> 0", "ambient": "within [0, 1]",
            "fov_deg": "within [10, 100]", "pitch_deg": "within [-30, 45]",
            "yaw_deg": "within [-30, 30]", "camera_height": "within [0.3, 2.5] metres",
            "edge_depth_threshold": "> 0", "edge_normal_threshold_deg": "in (0, 180)",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SceneConfig.{name} must be {allowed[name]}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SceneConfig":
        """Build from a (config-file) dict; unknown keys are an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown scene option(s) {unknown}; valid options: {valid}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------


@dataclass
class Camera:
    """Pinhole camera: position, orthonormal basis (right, up, forward), horizontal fov."""

    position: np.ndarray
    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    fov_deg: float

    @classmethod
    def looking(cls, position: Sequence[float], yaw_deg: float, pitch_deg: float, fov_deg: float) -> "Camera":
        """Camera turned by ``yaw`` about the vertical and tilted down by ``pitch``."""
        yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
        forward = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
        up = np.cross(forward, right)
        return cls(np.asarray(position, dtype=np.float64), right, up, forward, float(fov_deg))

    def to_camera_frame(self, vectors: np.ndarray) -> np.ndarray:
        """World directions (N, 3) -> camera frame (x right, y up, z towards the viewer)."""
        return np.stack([vectors @ self.right, vectors @ self.up, -(vectors @ self.forward)], axis=-1)


@dataclass
class Surface:
    """Appearance of one surface: RGB albedo in [0, 1] and a solid texture."""

    color: np.ndarray
    texture: str = "plain"
    texture_freq: float = 0.0
    texture_strength: float = 0.0


@dataclass
class Primitive:
    """A solid: ``kind`` sphere/box/cylinder, centre, half-extents, turn about y, class, look."""

    kind: str
    center: np.ndarray
    half: np.ndarray                   # sphere: (r, r, r); cylinder: (r, h/2, r)
    yaw: float
    label: int
    surface: Surface

    @property
    def rotation(self) -> np.ndarray:
        """Rotation about y: world = R @ local."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    @property
    def footprint(self) -> float:
        """Radius of the circle in the floor plane that contains the solid."""
        if self.kind == "box":
            return float(np.hypot(self.half[0], self.half[2]))
        return float(self.half[0])


@dataclass
class Scene:
    """Everything needed to render one image."""

    camera: Camera
    room: np.ndarray                   # (width, height, length): x in [-w/2, w/2], y in [0, h], z in [0, l]
    floor: Surface
    wall: Surface
    objects: list[Primitive]
    light: np.ndarray                  # unit vector towards the light (world)
    ambient: float
    noise_std: float
    shadows: bool = True
    exposure: float = 1.0


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _room_surfaces(rng: np.random.Generator, config: SceneConfig) -> tuple[Surface, Surface]:
    """Floor and wall looks: plausible muted colours, or random distractors when configured."""
    if config.distractor_colors:
        looks = []
        for _ in range(2):
            color = _hsv(rng.uniform(), rng.uniform(0.3, 0.9), rng.uniform(0.4, 0.9))
            texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
            looks.append(Surface(color, texture, rng.uniform(1.0, 4.0), rng.uniform(0.2, 0.5)))
        return looks[0], looks[1]
    floor = Surface(_hsv(rng.uniform(0.05, 0.11), rng.uniform(0.25, 0.5), rng.uniform(0.45, 0.7)),
                    "checker", rng.uniform(1.5, 2.5), rng.uniform(0.06, 0.18))
    wall = Surface(_hsv(rng.uniform(), rng.uniform(0.03, 0.15), rng.uniform(0.7, 0.9)))
    return floor, wall


def _object_surface(rng: np.random.Generator, cls: ObjectClass, config: SceneConfig) -> Surface:
    """Class hue with ``color_noise`` jitter; class texture unless ``texture_noise`` swaps it."""
    hue = cls.hue + config.color_noise * rng.uniform(-0.5, 0.5)
    color = _hsv(hue, rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.95))
    texture, freq = cls.texture, cls.texture_freq
    if rng.uniform() < config.texture_noise:
        other = OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))]
        texture, freq = other.texture, other.texture_freq
    if not config.texture or texture == "plain":
        return Surface(color)
    return Surface(color, texture, freq * rng.uniform(0.8, 1.25), rng.uniform(0.3, 0.55))


def _place_objects(rng: np.random.Generator, config: SceneConfig, camera: Camera,
                   room: np.ndarray) -> list[Primitive]:
    """Objects standing on the floor in front of the camera, footprints not overlapping."""
    count = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    width, _, length = room
    cam_x, _, cam_z = camera.position
    heading = np.arctan2(camera.forward[0], camera.forward[2])
    half_fov = np.radians(camera.fov_deg) / 2
    placed: list[Primitive] = []
    for _ in range(count):
        cls = OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))]
        half = np.array([rng.uniform(lo, hi) for lo, hi in zip(cls.size_lo, cls.size_hi)])
        if cls.kind == "sphere":
            half[:] = half[0]
        elif cls.kind == "cylinder":
            half[2] = half[0]
        surface = _object_surface(rng, cls, config)
        yaw = rng.uniform(0, 2 * np.pi)
        for _attempt in range(20):
            z = cam_z + 1.2 + (length - 1.5 - cam_z) * rng.uniform() ** 1.5   # favour near objects
            x = cam_x + (z - cam_z) * np.tan(heading + 0.8 * half_fov * rng.uniform(-1, 1))
            prim = Primitive(cls.kind, np.array([x, half[1], z]), half, yaw, cls.label, surface)
            if _fits(prim, placed, width, length):
                placed.append(prim)
                break
    return placed


def _fits(prim: Primitive, placed: list[Primitive], width: float, length: float) -> bool:
    """Inside the room with a margin and clear of every placed object's footprint."""
    x, _, z = prim.center
    r = prim.footprint
    if abs(x) + r > width / 2 - 0.05 or z + r > length - 0.05:
        return False
    return all(np.hypot(x - o.center[0], z - o.center[2]) > r + o.footprint + 0.05 for o in placed)


def sample_scene(rng: np.random.Generator, config: SceneConfig) -> Scene:
    """Draw a random room, camera, light and object set from ``config``'s distribution."""
    room = np.array([rng.uniform(4.5, 6.0), rng.uniform(2.6, 3.2), rng.uniform(5.5, 8.0)])
    position = [rng.uniform(-0.6, 0.6), _uniform(rng, config.camera_height), rng.uniform(0.2, 0.8)]
    camera = Camera.looking(position, _uniform(rng, config.yaw_deg), _uniform(rng, config.pitch_deg),
                            _uniform(rng, config.fov_deg))
    floor, wall = _room_surfaces(rng, config)
    objects = _place_objects(rng, config, camera, room)
    elevation, azimuth = rng.uniform(np.radians(35), np.radians(75)), rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                      np.cos(elevation) * np.cos(azimuth)])
    return Scene(camera, room, floor, wall, objects, light, _uniform(rng, config.ambient),
                 config.noise_std, config.shadows, rng.uniform(1.0, 1.3))


# --------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------


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
    o = (origin - prim.center) @ rot          # local frame: R^T (o - c), row-vector form
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
    t = np.where(t > _EPS, t, (-b + root) / a)     # origin inside (shadow rays off the surface)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _intersect_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)          # NaN (0/0) only on a slab plane
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


def surface_geometry(prim: Primitive,
                     points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render(scene: Scene, size: tuple[int, int], rng: np.random.Generator | None = None,
           depth_scale: float = 1.0, edge_depth_threshold: float = 0.05,
           edge_normal_threshold_deg: float = 30.0) -> dict[str, np.ndarray]:
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
    edge, occlusion = boundary_maps(semseg, depth, normals_img, faces, edge_depth_threshold,
                                    edge_normal_threshold_deg)
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


def _shade_inputs(scene: Scene, points: np.ndarray, face: np.ndarray,
                  hit_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """World normals, curvatures, albedo, class label and face id of every hit point."""
    n = len(points)
    normals = np.zeros((n, 3))
    axis = face // 2
    normals[np.arange(n), axis] = np.where(face % 2 == 1, -1.0, 1.0)    # room faces point inwards
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


def surface_of_face(faces: np.ndarray) -> np.ndarray:
    """Surface id of each face id: 0 for the room, k + 1 for object k (see module doc)."""
    return np.where(faces < 6, 0, (faces - 6) // 6 + 1)


def boundary_maps(labels: np.ndarray, depth: np.ndarray, normals: np.ndarray, faces: np.ndarray,
                  depth_threshold: float, normal_threshold_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(edge, occlusion_edge) bool (H, W) maps by the right/bottom-neighbour rule of the module doc."""
    edge = np.zeros(depth.shape, dtype=bool)
    occlusion = np.zeros(depth.shape, dtype=bool)
    surfaces = surface_of_face(faces)
    cos_limit = np.cos(np.radians(normal_threshold_deg))
    for here, there in (((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                        ((slice(0, -1), slice(None)), (slice(1, None), slice(None)))):
        d1, d2 = depth[here], depth[there]
        jump = np.abs(d1 - d2) > depth_threshold * np.minimum(d1, d2)
        occluding = (surfaces[here] != surfaces[there]) & jump
        crease = (faces[here] != faces[there]) & (np.sum(normals[here] * normals[there], axis=-1) < cos_limit)
        occlusion[here] |= occluding
        edge[here] |= occluding | crease | (labels[here] != labels[there])
    return edge, occlusion


def render_index(config: SceneConfig, size: tuple[int, int], seed: int, index: int) -> dict[str, np.ndarray]:
    """Render global image ``index`` of the stream ``seed``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, config)
    return render(scene, size, rng, config.depth_scale, config.edge_depth_threshold,
                  config.edge_normal_threshold_deg)


# --------------------------------------------------------------------------------------------
# Splits: generation, storage layout, cache
# --------------------------------------------------------------------------------------------

STORAGE_DTYPES: dict[str, Any] = {
    "image": np.uint8, "semseg": np.uint8, "depth": np.float32, "normals": np.float16,
    "edge": np.uint8, "occlusion_edge": np.uint8, "reshading": np.float16, "curvature": np.float16,
    "face": np.uint16,
}
"""On-disk dtype per array; channel-first (N, C, H, W); semseg and face (N, H, W)."""


def _to_storage(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One rendered sample -> channel-first arrays in their storage dtypes."""
    out = {}
    for key, value in sample.items():
        if key == "image":
            value = np.round(value * 255.0)
        if value.ndim == 3:
            value = value.transpose(2, 0, 1)
        elif key not in ("semseg", "face"):
            value = value[None]
        out[key] = value.astype(STORAGE_DTYPES[key])
    return out


def _generate_chunk(config: SceneConfig, size: tuple[int, int], seed: int,
                    indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Render a list of global indices and stack them in storage layout."""
    samples = [_to_storage(render_index(config, size, seed, i)) for i in indices]
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def _chunks(indices: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), chunk_size):
        yield indices[start:start + chunk_size]


def generate_split(config: SceneConfig, size: tuple[int, int], seed: int, split: str, count: int,
                   workers: int | None = None, chunk_size: int = 100,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """Render ``count`` images of ``split`` (global indices offset per split) in storage layout.

    ``workers`` None: 2 processes when the split has at least 400 images and 2 cores exist (that
    halves the time, see benchmarks/scenes_generation.py), else 1. Output never depends on it.
    """
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLIT_OFFSETS)}")
    if count < 1:
        raise ValueError(f"a split needs at least one image, got {count} for {split!r}")
    if workers is None:
        workers = 2 if count >= 400 and _usable_cores() >= 2 else 1
    chunks = list(_chunks(SPLIT_OFFSETS[split] + np.arange(count), chunk_size))
    parts = []
    with _progress(count, f"scenes {split}", progress) as bar:
        for chunk, part in zip(chunks, _run_chunks(config, size, seed, chunks, workers)):
            parts.append(part)
            bar.update(len(chunk))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _run_chunks(config: SceneConfig, size: tuple[int, int], seed: int, chunks: list[np.ndarray],
                workers: int) -> Iterator[dict[str, np.ndarray]]:
    """Chunk results in order, rendered in this process or by a pool of ``workers`` processes."""
    if workers <= 1:
        for chunk in chunks:
            yield _generate_chunk(config, size, seed, chunk)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_generate_chunk, config, size, seed, chunk) for chunk in chunks]
        for future in futures:
            yield future.result()


def _usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


def cache_key(config: SceneConfig, size: tuple[int, int], seed: int, split: str, count: int) -> str:
    """Hash of everything that determines a split's content (config, size, seed, split, count)."""
    payload = {"version": GENERATOR_VERSION, "config": config.to_dict(), "size": list(size),
               "seed": seed, "split": split, "count": count}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$TOKENMTL_CACHE`` if set, else ``~/.cache/tokenmtl/scenes``."""
    env = os.environ.get("TOKENMTL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tokenmtl" / "scenes"


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an .npz atomically: temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.chmod(tmp, 0o644)                              # mkstemp makes it private; caches are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read an .npz written by ``save_arrays``; raise DataError naming ``path`` if unusable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"scenes cache is unreadable ({type(exc).__name__}: {exc})", path=path) from exc
    if len({len(a) for a in arrays.values()}) != 1:
        raise DataError("scenes cache is inconsistent: arrays of different lengths", path=path)
    return arrays


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


class ScenesDataset(Dataset):
    """Items ``{"image": (3,H,W) normalised, task: target}`` read from a split's arrays."""

    def __init__(self, arrays: Mapping[str, np.ndarray], tasks: Sequence[str], flip: bool = False):
        self.arrays = arrays
        self.tasks = tuple(tasks)
        self.flip = flip
        self.mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGE_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(self.arrays["image"][index]).float() / 255.0
        item = {"image": (image - self.mean) / self.std}
        for task in self.tasks:
            item[task] = _target_tensor(task, self.arrays[task][index])
        if self.flip and torch.rand(()) < 0.5:
            item = _hflip(item)
        return item


def _target_tensor(task: str, value: np.ndarray) -> torch.Tensor:
    """Storage array -> target tensor in the dtype internals.md fixes for the task."""
    if task == "semseg":
        return torch.from_numpy(value.astype(np.int64))
    value = value.astype(np.float32)
    if task == "normals":                                 # undo the float16 rounding of the length
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
    (None = automatic).
    """

    name = "scenes"
    available_tasks: tuple[str, ...] = ("semseg", "depth", "normals", "edge",
                                        "occlusion_edge", "reshading", "curvature")
    default_tasks: tuple[str, ...] = ("semseg", "depth", "normals", "edge")
    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES
    edge_tolerance = 0.011
    """Edge matching tolerance as a fraction of the image diagonal, as NYUD-v2 uses (about 1 px at 64x64)."""

    def __init__(self, root: str | os.PathLike | None = None, image_size: int | Sequence[int] = 64,
                 seed: int = 0, train_size: int = 2000, val_size: int = 500, test_size: int = 500,
                 scene: SceneConfig | Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 tasks: Sequence[str] | None = None, flip: bool = False, workers: int | None = None,
                 progress: bool = True):
        self.image_size = _as_size(image_size)
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
        self.tasks = tuple(self.available_tasks if tasks is None else tasks)
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
        arrays = generate_split(self.scene, self.image_size, self.seed, split, self.sizes[split],
                                workers=self.workers, progress=self.progress)
        save_arrays(path, arrays)
        return arrays

    def dataset(self, split: str, train: bool, tasks: Sequence[str] | None = None) -> ScenesDataset:
        """Torch dataset of ``split`` ("train", "val" or "test"); ``train`` enables flips if set.

        ``tasks``: the targets items carry (default: the benchmark's ``tasks``).
        """
        tasks = self.tasks if tasks is None else tuple(tasks)
        for task in tasks:
            self._check_task(task)
        return ScenesDataset(self.arrays(split), tasks, flip=self.flip and train)


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if np.isscalar(image_size):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 4:
        raise ValueError(f"image_size must be an int or (height, width) of at least 4 pixels, "
                         f"got {image_size!r}")
    return size  # type: ignore[return-value]


def _as_scene_config(scene: SceneConfig | Mapping[str, Any] | None) -> SceneConfig:
    if scene is None:
        return SceneConfig()
    if isinstance(scene, SceneConfig):
        return scene
    if isinstance(scene, Mapping):
        return SceneConfig.from_dict(scene)
    raise TypeError(f"scene must be a SceneConfig, a dict of its fields or None, got {type(scene).__name__}")
