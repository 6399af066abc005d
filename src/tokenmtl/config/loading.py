"""Reading configs: defaults <- YAML file <- extra mapping <- `--set key=value`, then validated."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tokenmtl.config.resolved import Config, validate
from tokenmtl.config.schema import OPEN_SECTIONS, defaults
from tokenmtl.config.sections import ConfigError, suggest

PACKAGED_CONFIGS = Path(__file__).parents[1] / "configs"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; configs mean a float (YAML 1.2 behaviour)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """Parse YAML the way configs mean it (scientific notation is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def merge(base: Mapping[str, Any], override: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`; unknown keys of closed sections are errors."""
    out = copy.deepcopy(dict(base))
    for name, value in override.items():
        where = f"{path}{name}"
        if name not in out and not (path.rstrip(".") in OPEN_SECTIONS or path == "loss_weights.weights."):
            raise ConfigError(f"unknown config key {where!r}{suggest(name, list(out))}")
        if isinstance(out.get(name), dict) and isinstance(value, Mapping):
            out[name] = merge(out[name], value, where + ".")
        elif isinstance(out.get(name), dict) and value is not None:
            raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
        else:
            out[name] = copy.deepcopy(value)
    return out


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a","b","c"], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    name, raw = text.split("=", 1)
    name = name.strip()
    if not name:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value of {name!r}: {raw!r} ({err})") from None
    return name.split("."), value


def apply_overrides(cfg: Mapping[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `--set key=value` strings in order to a plain config dict; each must name a known key."""
    out = _as_dict(cfg)
    for text in assignments:
        keys, value = parse_assignment(text)
        nested: Any = value
        for name in reversed(keys):
            nested = {name: nested}
        out = merge(out, nested)
    return out


def _as_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(dict(cfg))


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


def read_config_file(path: Path) -> Mapping[str, Any]:
    """The mapping in a YAML config file (one clear error when it cannot be read)."""
    try:
        data = read_yaml(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {str(path)!r}: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {str(path)!r} must be a mapping at top level, got {type(data).__name__}")
    return data


def load_config(
    name_or_path: str | Path | Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults <- YAML file (or a mapping, e.g. a run's stored config) <- `extra` <- `--set`, validated."""
    cfg = defaults()
    if isinstance(name_or_path, Mapping):
        cfg = merge(cfg, _as_dict(name_or_path))
    elif name_or_path is not None:
        cfg = merge(cfg, read_config_file(resolve_config_path(name_or_path)))
    if extra:
        cfg = merge(cfg, extra)
    cfg = apply_overrides(cfg, list(overrides or []))
    resolved = Config(cfg)
    validate(resolved)
    return resolved


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML (what `tokenmtl train` saves as config.yaml)."""
    from tokenmtl.fileio import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(_as_dict(cfg), sort_keys=False))
