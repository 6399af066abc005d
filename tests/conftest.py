"""Shared fixtures: a tiny scenes config that trains in seconds on a CPU."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_SETS = [
    "benchmark.image_size=32",
    "benchmark.train_size=48",
    "benchmark.val_size=16",
    "benchmark.test_size=16",
    "model.img_size=32",
    "model.patch_size=8",
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "train.iterations=6",
    "train.batch_size=4",
    "train.eval_every=3",
    "train.checkpoint_every=3",
    "eval.batch_size=16",
    "log.tensorboard=false",
    "log.progress=false",
]


@pytest.fixture(scope="session")
def scenes_cache(tmp_path_factory):
    """One scenes cache folder for the whole test session (generation happens once)."""
    return str(tmp_path_factory.mktemp("scenes-cache"))


@pytest.fixture
def tiny_sets(scenes_cache):
    """`--set` strings of a tiny demo run, using the session's scenes cache."""
    return TINY_SETS + [f"benchmark.cache_dir={scenes_cache}"]
