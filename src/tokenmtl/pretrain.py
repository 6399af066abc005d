"""Pretrained backbones built locally: train the encoder on other tasks, keep only its weights.

DTME-MTL fine-tunes a *pretrained* transformer ("Enhancing Multi-Task Learning with Token Space
Manipulation", Sec. 4). Nothing may download here, so `pretrain` makes the backbone itself: a
normal multi-task run (`tokenmtl.engine.trainer.train`) on a config whose tasks and data differ
from the fine-tuning ones (configs/scenes_pretrain.yaml: the Taskonomy-like scenes extras on a
split of its own seed), after which the encoder's weights are saved under timm's key names, so
`model.weights` loads them like any `--weights` file (tokenmtl.models.weights).

Results are cached by a hash of every setting that shapes the weights:
`<cache>/pretrained/<hash>/encoder.safetensors` and `settings.json` next to it, where `<cache>`
is `$TOKENMTL_CACHE` or `~/.cache/tokenmtl`. A config names them with
`model.weights: pretrained:<config name or path>` (`resolve_weights`), built on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tokenmtl.engine.seeding import preserved_rng
from tokenmtl.engine.trainer import train
from tokenmtl.fileio import atomic_write_bytes, atomic_write_text

PRETRAINED_PREFIX = "pretrained:"
"""`model.weights` values starting with this name a pretraining config instead of a file."""
PRETRAIN_VERSION = 1
"""Bumped when what `pretrain` saves changes, so older cache entries are never reused."""
ENCODER_FILE = "encoder.safetensors"
SETTINGS_FILE = "settings.json"
ENCODER_PREFIX = "encoder.vit."
"""Where a MultiTaskModel keeps its timm ViT (TimmViTAdapter.vit); stripped to get timm names."""

# Keys that change where or how often things are written, never the weights.
IGNORED_KEYS: dict[str, tuple[str, ...]] = {
    "benchmark": ("root", "cache_dir", "workers", "progress"),
    "train": ("eval_every", "checkpoint_every", "keep_checkpoints", "num_workers", "device"),
}
HASHED_SECTIONS = ("benchmark", "tasks", "model", "train", "loss_weights", "method", "dtme")


def pretrained_cache_dir() -> Path:
    """`$TOKENMTL_CACHE/pretrained` if the variable is set, else `~/.cache/tokenmtl/pretrained`."""
    env = os.environ.get("TOKENMTL_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "tokenmtl") / "pretrained"


def _plain(value: Any) -> Any:
    """A JSON-able copy: Mappings become dicts, tuples lists (so equal settings hash equally)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def pretrain_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines the pretrained weights (what is hashed)."""
    cfg = _plain(cfg)
    settings: dict[str, Any] = {"version": PRETRAIN_VERSION}
    for section in HASHED_SECTIONS:
        value = cfg.get(section)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in IGNORED_KEYS.get(section, ())}
        settings[section] = value
    if cfg.get("benchmark", {}).get("name") == "scenes":
        from tokenmtl.data.scenes import GENERATOR_VERSION

        settings["scenes_generator_version"] = GENERATOR_VERSION
    return settings


def settings_hash(cfg: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of `pretrain_settings(cfg)` as sorted JSON."""
    text = json.dumps(pretrain_settings(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_pretrain_config(cfg: Mapping[str, Any]) -> None:
    """Refuse settings whose encoder would not be a plain timm ViT (DTME/Recon change its layout)."""
    if cfg["dtme"].get("enabled"):
        raise ValueError("pretraining saves a plain shared encoder: dtme.enabled must be false, got true")
    if cfg["method"].get("name") == "recon":
        raise ValueError(
            "pretraining saves a plain shared encoder: method.name must not be 'recon' "
            "(it branches encoder layers per task)"
        )


def encoder_state(model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The timm ViT's tensors of a MultiTaskModel state dict, under timm's own key names."""
    tensors = {
        key[len(ENCODER_PREFIX) :]: value.detach().cpu().clone().contiguous()
        for key, value in model_state.items()
        if key.startswith(ENCODER_PREFIX)
    }
    if not tensors:
        raise ValueError(
            f"the trained model has no {ENCODER_PREFIX}* tensors: pretraining needs a timm "
            f"ViT backbone (model.backbone), found keys like {list(model_state)[:3]}"
        )
    return tensors


def _trained_model_state(run_dir: Path) -> Mapping[str, torch.Tensor]:
    """Model weights of the last checkpoint of a finished run (checksum-verified)."""
    from tokenmtl.engine.checkpoint import latest_good_checkpoint

    found = latest_good_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise RuntimeError(f"pretraining run {str(run_dir)!r} left no checkpoint to take the encoder from")
    return found[1]["model"]


def _save_encoder(path: Path, tensors: Mapping[str, torch.Tensor], digest: str) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save(dict(tensors), metadata={"format": "pt", "tokenmtl_pretrain": digest}))


def pretrain(
    cfg: Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Pretrain the backbone of a resolved config; returns its cached `encoder.safetensors`.

    Trains only when the cache has no entry for these settings. `out_dir`: keep the training run
    there (and a copy of the two cache files); default: a temporary folder, removed afterwards.
    `cache_dir`: root of the cache (default `pretrained_cache_dir()`).
    """
    _check_pretrain_config(cfg)
    digest = settings_hash(cfg)
    entry = Path(cache_dir) if cache_dir is not None else pretrained_cache_dir()
    entry = entry / digest
    weights = entry / ENCODER_FILE
    if not (weights.is_file() and (entry / SETTINGS_FILE).is_file()):
        _build_entry(cfg, entry, digest, out_dir, progress)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name in (ENCODER_FILE, SETTINGS_FILE):
            shutil.copyfile(entry / name, Path(out_dir) / name)
    return weights


def _build_entry(
    cfg: Mapping[str, Any], entry: Path, digest: str, out_dir: str | os.PathLike | None, progress: bool
) -> None:
    """Train, then write the encoder and settings.json (weights first: settings mark completion)."""
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            entry.parent.mkdir(parents=True, exist_ok=True)
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=entry.parent, prefix="run-")))
        else:
            run_dir = Path(out_dir)
        start = time.perf_counter()
        results = train(cfg, run_dir, progress=progress)
        seconds = time.perf_counter() - start
        _save_encoder(entry / ENCODER_FILE, encoder_state(_trained_model_state(run_dir)), digest)
    record = {
        "hash": digest,
        "settings": pretrain_settings(cfg),
        "wall_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "results": results.get("tasks"),
    }
    atomic_write_text(entry / SETTINGS_FILE, json.dumps(record, indent=1) + "\n")


def is_pretrained_ref(weights: Any) -> bool:
    """True when a `model.weights` value names a pretraining config (`pretrained:NAME`)."""
    return isinstance(weights, str) and weights.startswith(PRETRAINED_PREFIX)


def resolve_weights(ref: str, progress: bool = True) -> Path:
    """`pretrained:<config name or path>` -> that config's cached encoder file, pretrained if missing."""
    if not is_pretrained_ref(ref):
        raise ValueError(f"expected model.weights of the form '{PRETRAINED_PREFIX}<config>', got {ref!r}")
    name = ref[len(PRETRAINED_PREFIX) :].strip()
    if not name:
        raise ValueError(
            f"model.weights {ref!r} names no pretraining config; e.g. '{PRETRAINED_PREFIX}scenes_pretrain'"
        )
    from tokenmtl.config import load_config

    cfg = load_config(name)
    with preserved_rng():
        return pretrain(cfg, progress=progress)
