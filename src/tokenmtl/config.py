"""Experiment configs: nested dicts with defaults, YAML files, `--set key=value` overrides.

Every key a run reads is declared in `DEFAULTS`, so a typo is an error that lists the valid
keys instead of a silently ignored setting. `benchmark` and `method` sections take the extra
keys their benchmark or method accepts; those are checked where the object is built.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Mapping

import re

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; configs mean a float (YAML 1.2 behaviour)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_yaml(text: str):
    """Parse YAML the way configs mean it (scientific notation is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


PACKAGED_CONFIGS = Path(__file__).parent / "configs"

DEFAULTS: dict[str, Any] = {
    "name": None,
    "benchmark": {"name": "scenes", "root": None},
    "tasks": None,  # None: the benchmark's default tasks
    "model": {
        "backbone": "vit_tiny_patch16_224",
        "pretrained": False,
        "weights": None,
        "img_size": None,
        "patch_size": None,
        "depth": None,
        "embed_dim": None,
        "num_heads": None,
        "mlp_ratio": None,
        "drop_path_rate": None,
        "qkv_bias": None,
        "head_channels": None,
    },
    "train": {
        "iterations": 1000,
        "batch_size": 16,
        "lr": 1.0e-3,
        "weight_decay": 1.0e-4,
        "optimizer": "adam",
        "lr_schedule": "poly",
        "poly_power": 0.9,
        "warmup_iterations": 0,
        "eval_every": 250,
        "checkpoint_every": 250,
        "keep_checkpoints": 2,
        "seed": 0,
        "num_workers": 0,
        "device": "auto",
        "grad_clip": None,
        "task_lr_mult": 1.0,
    },
    "loss_weights": {"scheme": "ones", "weights": {}},
    "method": {"name": "ew"},
    "dtme": {
        "enabled": False,
        "expand_at": 0.25,
        "post_iterations": "full",
        "ratio": 0.5,
        "r": 100.0,
        "energy_fraction": None,
        "strategy": "conflict",
        "mode": "both",
        "num_tokens": 6,
        "modulator": "affine",
        "freeze_backbone": False,
        "num_batches": 16,
        "lr_mult": 1.0,
        "seed": 0,
    },
    "eval": {"split": "val", "final_split": "test", "batch_size": 64},
    "log": {"progress": True, "tensorboard": True},
}

# Sections whose keys are open (checked by the benchmark or method that reads them).
OPEN_SECTIONS = {"benchmark", "method"}
ALLOWED_CHOICES = {
    ("train", "optimizer"): ("adam", "adamw", "sgd"),
    ("train", "lr_schedule"): ("poly", "constant", "cosine"),
    ("loss_weights", "scheme"): ("ones", "invpt"),
    ("dtme", "strategy"): ("conflict", "random", "reverse", "swap"),
    ("dtme", "mode"): ("both", "tm", "te"),
    ("dtme", "modulator"): ("affine", "batchnorm"),
    ("dtme", "post_iterations"): ("full", "remaining"),
    ("eval", "split"): ("train", "val", "test"),
    ("eval", "final_split"): ("train", "val", "test"),
}
POSITIVE = {("train", "iterations"), ("train", "batch_size"), ("train", "eval_every"),
            ("train", "checkpoint_every"), ("train", "keep_checkpoints"), ("eval", "batch_size"),
            ("dtme", "num_tokens")}
POSITIVE_IF_SET = {("model", "img_size"), ("model", "patch_size"), ("model", "depth"), ("model", "embed_dim"),
                   ("model", "num_heads"), ("model", "mlp_ratio"), ("model", "head_channels")}
NON_NEGATIVE = {("train", "lr"), ("train", "weight_decay"), ("train", "warmup_iterations"),
                ("train", "num_workers"), ("dtme", "expand_at"), ("dtme", "lr_mult"),
                ("train", "task_lr_mult")}


class ConfigError(ValueError):
    """A config that cannot be run: an unknown key, a wrong type or an out-of-range value."""


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid keys: {', '.join(sorted(valid))}"


def merge(base: dict[str, Any], override: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`; unknown keys of closed sections are errors."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in out and not (path.rstrip(".") in OPEN_SECTIONS or path == "loss_weights.weights."):
            raise ConfigError(f"unknown config key {where!r}{_suggest(key, list(out))}")
        if isinstance(out.get(key), dict) and isinstance(value, Mapping):
            out[key] = merge(out[key], value, where + ".")
        elif isinstance(out.get(key), dict) and value is not None:
            raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a","b","c"], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value of {key!r}: {raw!r} ({err})") from None
    return key.split("."), value


def apply_overrides(cfg: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `--set key=value` strings in order; each must name a known key."""
    for text in assignments:
        keys, value = parse_assignment(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        cfg = merge(cfg, nested)
    return cfg


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a packaged config (`demo` -> configs/demo.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{Path(str(name_or_path)).stem}.yaml"
    if not path.suffix and packaged.is_file():
        return packaged
    available = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config file not found: {str(path)!r}; packaged configs: {', '.join(available)}")


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- YAML file <- `extra` mapping <- `--set` overrides, then validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            data = read_yaml(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {str(path)!r}: {err}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config {str(path)!r} must be a mapping at top level, got {type(data).__name__}")
        cfg = merge(cfg, data)
    if extra:
        cfg = merge(cfg, extra)
    cfg = apply_overrides(cfg, list(overrides or []))
    validate(cfg)
    return cfg


def _check_type(where: str, value: Any, default: Any) -> None:
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"config key {where!r} must be {type(default).__name__}, got {value!r}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Types, choices and ranges of the declared keys; raises ConfigError naming the key."""
    for section, defaults in DEFAULTS.items():
        if not isinstance(defaults, dict):
            continue
        for key, default in defaults.items():
            value = cfg[section].get(key)
            where = f"{section}.{key}"
            _check_type(where, value, default)
            if (section, key) in ALLOWED_CHOICES and value not in ALLOWED_CHOICES[(section, key)]:
                raise ConfigError(f"{where} must be one of {', '.join(ALLOWED_CHOICES[(section, key)])}; got {value!r}")
            if (section, key) in POSITIVE and not value > 0:
                raise ConfigError(f"{where} must be > 0, got {value!r}")
            if (section, key) in POSITIVE_IF_SET and value is not None and not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                    for v in (value if isinstance(value, (list, tuple)) else [value])):
                raise ConfigError(f"{where} must be a positive number (or unset), got {value!r}")
            if (section, key) in NON_NEGATIVE and value is not None and value < 0:
                raise ConfigError(f"{where} must be >= 0, got {value!r}")
    tasks = cfg.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks)):
        raise ConfigError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    if tasks is not None and len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks lists a task twice: {tasks!r}")
    if not isinstance(cfg["method"].get("name"), str):
        raise ConfigError(f"method.name must be a method name, got {cfg['method'].get('name')!r}")
    if not isinstance(cfg["benchmark"].get("name"), str):
        raise ConfigError(f"benchmark.name must be a benchmark name, got {cfg['benchmark'].get('name')!r}")
    if not 0.0 < float(cfg["dtme"]["ratio"]) <= 1.0:
        raise ConfigError(f"dtme.ratio must be in (0, 1], got {cfg['dtme']['ratio']!r}")
    if not float(cfg["dtme"]["expand_at"]) < 1.0:
        raise ConfigError(f"dtme.expand_at must be in [0, 1), got {cfg['dtme']['expand_at']!r}")
    if not float(cfg["dtme"]["r"]) > 0:
        raise ConfigError(f"dtme.r must be > 0, got {cfg['dtme']['r']!r}")
    weights = cfg["loss_weights"].get("weights") or {}
    if not isinstance(weights, Mapping) or not all(isinstance(v, (int, float)) and v >= 0 for v in weights.values()):
        raise ConfigError(f"loss_weights.weights must map task names to non-negative numbers, got {weights!r}")


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML (what `tokenmtl train` saves as config.yaml)."""
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
