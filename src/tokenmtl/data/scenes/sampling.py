"""Drawing a random scene (room, camera, light, objects) from a SceneConfig with a numpy Generator.

The order of the draws is part of the output: changing it changes every image (see
GENERATOR_VERSION in cache.py).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from tokenmtl.data.scenes.distribution import OBJECT_CLASSES, TEXTURES, ObjectClass, SceneConfig
from tokenmtl.data.scenes.scene import Camera, Primitive, Scene, Surface


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
    floor = Surface(
        _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.25, 0.5), rng.uniform(0.45, 0.7)),
        "checker",
        rng.uniform(1.5, 2.5),
        rng.uniform(0.06, 0.18),
    )
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


def _place_objects(rng: np.random.Generator, config: SceneConfig, camera: Camera, room: np.ndarray) -> list[Primitive]:
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
            z = cam_z + 1.2 + (length - 1.5 - cam_z) * rng.uniform() ** 1.5  # favour near objects
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
    camera = Camera.looking(
        position, _uniform(rng, config.yaw_deg), _uniform(rng, config.pitch_deg), _uniform(rng, config.fov_deg)
    )
    floor, wall = _room_surfaces(rng, config)
    objects = _place_objects(rng, config, camera, room)
    elevation, azimuth = rng.uniform(np.radians(35), np.radians(75)), rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])
    return Scene(
        camera,
        room,
        floor,
        wall,
        objects,
        light,
        _uniform(rng, config.ambient),
        config.noise_std,
        config.shadows,
        rng.uniform(1.0, 1.3),
    )
