"""Generating a split: render global indices in chunks (optionally in worker processes), store compactly.

Image i of a split is image ``SPLIT_OFFSETS[split] + i`` of the seed's stream, a pure function of
``(config, size, seed, index)``, so the result never depends on chunking or worker count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from tokenmtl.data.scenes.distribution import SceneConfig
from tokenmtl.data.scenes.rendering import render_index
from tokenmtl.progress import progress_bar

SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
"""Global image index = offset + index in split, so the splits never share an image."""

STORAGE_DTYPES: dict[str, Any] = {
    "image": np.uint8,
    "semseg": np.uint8,
    "depth": np.float32,
    "normals": np.float16,
    "edge": np.uint8,
    "occlusion_edge": np.uint8,
    "reshading": np.float16,
    "curvature": np.float16,
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


def _generate_chunk(
    config: SceneConfig, size: tuple[int, int], seed: int, indices: Sequence[int]
) -> dict[str, np.ndarray]:
    """Render a list of global indices and stack them in storage layout."""
    samples = [_to_storage(render_index(config, size, seed, i)) for i in indices]
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def _chunks(indices: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), chunk_size):
        yield indices[start : start + chunk_size]


def generate_split(
    config: SceneConfig,
    size: tuple[int, int],
    seed: int,
    split: str,
    count: int,
    workers: int | None = None,
    chunk_size: int = 100,
    progress: bool = True,
) -> dict[str, np.ndarray]:
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
    with progress_bar(total=count, desc=f"scenes {split}", enabled=progress, unit="img") as bar:
        for chunk, part in zip(chunks, _run_chunks(config, size, seed, chunks, workers)):
            parts.append(part)
            bar.update(len(chunk))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _run_chunks(
    config: SceneConfig, size: tuple[int, int], seed: int, chunks: list[np.ndarray], workers: int
) -> Iterator[dict[str, np.ndarray]]:
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
