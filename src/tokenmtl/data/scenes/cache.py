"""The on-disk split cache: file key (hash of every setting), location, atomic save and checked load."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tokenmtl.data.errors import DataError
from tokenmtl.data.scenes.distribution import SceneConfig
from tokenmtl.fileio import atomic_write_npz

GENERATOR_VERSION = 1
"""Bumped whenever rendering changes, so caches written by older code are never reused."""


def cache_key(config: SceneConfig, size: tuple[int, int], seed: int, split: str, count: int) -> str:
    """Hash of everything that determines a split's content (config, size, seed, split, count)."""
    payload = {
        "version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "size": list(size),
        "seed": seed,
        "split": split,
        "count": count,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$TOKENMTL_CACHE`` if set, else ``~/.cache/tokenmtl/scenes``."""
    env = os.environ.get("TOKENMTL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tokenmtl" / "scenes"


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a split's arrays as an .npz atomically (tokenmtl.fileio), so a crash never leaves
    a half-written cache file under the final name."""
    atomic_write_npz(path, arrays)


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
