"""The per-pixel targets' conventions, and the boundary rule that derives the edge maps.

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

import numpy as np

RESHADING_LIGHT = np.array([0.4, 0.6, 0.7]) / np.linalg.norm([0.4, 0.6, 0.7])


def surface_of_face(faces: np.ndarray) -> np.ndarray:
    """Surface id of each face id: 0 for the room, k + 1 for object k (see module doc)."""
    return np.where(faces < 6, 0, (faces - 6) // 6 + 1)


def boundary_maps(
    labels: np.ndarray,
    depth: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray,
    depth_threshold: float,
    normal_threshold_deg: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(edge, occlusion_edge) bool (H, W) maps by the right/bottom-neighbour rule of the module doc."""
    edge = np.zeros(depth.shape, dtype=bool)
    occlusion = np.zeros(depth.shape, dtype=bool)
    surfaces = surface_of_face(faces)
    cos_limit = np.cos(np.radians(normal_threshold_deg))
    for here, there in (
        ((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
        ((slice(0, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        d1, d2 = depth[here], depth[there]
        jump = np.abs(d1 - d2) > depth_threshold * np.minimum(d1, d2)
        occluding = (surfaces[here] != surfaces[there]) & jump
        crease = (faces[here] != faces[there]) & (np.sum(normals[here] * normals[there], axis=-1) < cos_limit)
        occlusion[here] |= occluding
        edge[here] |= occluding | crease | (labels[here] != labels[there])
    return edge, occlusion
