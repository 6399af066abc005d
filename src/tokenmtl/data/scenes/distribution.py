"""The scene distribution: the object classes and the knobs (SceneConfig) that scenes are drawn from."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "ball", "globe", "crate", "cabinet", "pillar", "drum")
NUM_CLASSES = len(CLASS_NAMES)
FLOOR, WALL = 0, 1
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checker", "dots")


@dataclass(frozen=True)
class ObjectClass:
    """How instances of one object class look: shape, size ranges, hue and texture."""

    name: str
    label: int
    kind: str  # "sphere", "box" or "cylinder"
    size_lo: tuple[float, float, float]  # half-extents (x, y, z); sphere: radius in [0]
    size_hi: tuple[float, float, float]
    hue: float  # in turns, [0, 1)
    texture: str  # one of TEXTURES
    texture_freq: float  # pattern periods per metre


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
            "num_objects": "min >= 0",
            "color_noise": "in [0, 1]",
            "texture_noise": "in [0, 1]",
            "noise_std": ">= 0",
            "depth_scale": "> 0",
            "ambient": "within [0, 1]",
            "fov_deg": "within [10, 100]",
            "pitch_deg": "within [-30, 45]",
            "yaw_deg": "within [-30, 30]",
            "camera_height": "within [0.3, 2.5] metres",
            "edge_depth_threshold": "> 0",
            "edge_normal_threshold_deg": "in (0, 180)",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SceneConfig.{name} must be {allowed[name]}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SceneConfig:
        """Build from a (config-file) dict; unknown keys are an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown scene option(s) {unknown}; valid options: {valid}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
