"""Procedural indoor scenes: a ray-cast benchmark with exact dense ground truth.

Each image is a closed box-shaped room (floor, walls, ceiling) holding a few primitives (spheres,
rotated boxes, vertical cylinders) of six object classes whose colour, texture, shape and size
correlate with the class. Every image is a pure function of ``(seed, global index, config)``:
``numpy.random.default_rng([seed, index])`` seeds it, so any image can be regenerated alone and
results never depend on batching, chunking or worker count.

One module per job, in the order data flows:

- ``distribution``: object classes and ``SceneConfig``, the knobs of the scene distribution.
- ``scene``: the dataclasses of one scene (camera, surfaces, primitives, room).
- ``sampling``: draw a random scene from a config (``sample_scene``).
- ``raycast``: camera rays, ray-room and ray-primitive intersections, surface geometry.
- ``rendering``: shade the image and produce every target (``render``, ``render_index``).
- ``targets``: the targets' conventions and the boundary rule behind ``edge``/``occlusion_edge``.
- ``generation``: render a split in chunks and worker processes, in storage layout.
- ``cache``: the split files on disk (hashed names, atomic save, checked load).
- ``dataset``: ``ScenesBenchmark`` (registry name ``scenes``) and its torch ``ScenesDataset``.
"""

from __future__ import annotations

from tokenmtl.data.scenes.cache import GENERATOR_VERSION, cache_key, default_cache_dir, load_arrays, save_arrays
from tokenmtl.data.scenes.dataset import IMAGE_MEAN, IMAGE_STD, ScenesBenchmark, ScenesDataset
from tokenmtl.data.scenes.distribution import (
    CLASS_NAMES,
    FLOOR,
    NUM_CLASSES,
    OBJECT_CLASSES,
    TEXTURES,
    WALL,
    ObjectClass,
    SceneConfig,
)
from tokenmtl.data.scenes.generation import (  # noqa: F401 (_to_storage: the tests use it)
    SPLIT_OFFSETS,
    STORAGE_DTYPES,
    _to_storage,
    generate_split,
)
from tokenmtl.data.scenes.raycast import camera_rays, intersect, intersect_room, surface_geometry
from tokenmtl.data.scenes.rendering import render, render_index
from tokenmtl.data.scenes.sampling import sample_scene
from tokenmtl.data.scenes.scene import Camera, Primitive, Scene, Surface
from tokenmtl.data.scenes.targets import RESHADING_LIGHT, boundary_maps, surface_of_face

__all__ = [
    "CLASS_NAMES",
    "FLOOR",
    "GENERATOR_VERSION",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "NUM_CLASSES",
    "OBJECT_CLASSES",
    "RESHADING_LIGHT",
    "SPLIT_OFFSETS",
    "STORAGE_DTYPES",
    "TEXTURES",
    "WALL",
    "Camera",
    "ObjectClass",
    "Primitive",
    "Scene",
    "SceneConfig",
    "ScenesBenchmark",
    "ScenesDataset",
    "Surface",
    "boundary_maps",
    "cache_key",
    "camera_rays",
    "default_cache_dir",
    "generate_split",
    "intersect",
    "intersect_room",
    "load_arrays",
    "render",
    "render_index",
    "sample_scene",
    "save_arrays",
    "surface_geometry",
    "surface_of_face",
]
