"""What one scene is: camera, surfaces, primitives and the room, as plain dataclasses.

Conventions: world x right, y up (floor at y = 0), z into the room; lengths in metres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Camera:
    """Pinhole camera: position, orthonormal basis (right, up, forward), horizontal fov."""

    position: np.ndarray
    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    fov_deg: float

    @classmethod
    def looking(cls, position: Sequence[float], yaw_deg: float, pitch_deg: float, fov_deg: float) -> Camera:
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
    half: np.ndarray  # sphere: (r, r, r); cylinder: (r, h/2, r)
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
    room: np.ndarray  # (width, height, length): x in [-w/2, w/2], y in [0, h], z in [0, l]
    floor: Surface
    wall: Surface
    objects: list[Primitive]
    light: np.ndarray  # unit vector towards the light (world)
    ambient: float
    noise_std: float
    shadows: bool = True
    exposure: float = 1.0
