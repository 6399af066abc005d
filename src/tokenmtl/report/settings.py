"""A run's *setting*: its resolved config minus the keys that do not change what is trained.

Runs of one setting differ only by `train.seed` (and by names, output and logging keys), so a
comparison table may average them as seeds of one row; runs of different settings never are.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

# Dotted config keys (or whole sections) that never change what a run computes.
IGNORED_KEYS: tuple[str, ...] = (
    "name",  # a label
    "train.seed",  # the seed is what varies within a setting
    "log",  # progress bars, TensorBoard
    "train.checkpoint_every",  # checkpoints resume to the same result
    "train.keep_checkpoints",
    "benchmark.cache_dir",  # where generated data is cached, not what it is
)


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    keys = dotted.split(".")
    node: Any = cfg
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(keys[-1], None)


def _plain(value: Any) -> Any:
    """Nested plain dicts and lists (config sections are Mappings, tuples become lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def with_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config with every key today's schema knows but `cfg` lacks set to its default.

    A run written before a key existed ran with that key's default behaviour (new keys default
    to the old behaviour), so it must group with new runs that leave the key at its default.
    Unlike `config.merge`, keys today's schema no longer knows are kept, not refused: compare
    must still read old runs.
    """

    def fill(node: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in defaults.items():
            if key not in node:
                node[key] = _plain(value)
            elif isinstance(value, Mapping) and isinstance(node[key], dict):
                fill(node[key], value)
        return node

    from tokenmtl.config.schema import defaults

    return fill(_plain(cfg), defaults())


def comparable_settings(cfg: Mapping[str, Any], tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """The config without `IGNORED_KEYS`; `tasks` (the resolved task list) replaces `cfg['tasks']`.

    Passing the resolved tasks makes `tasks: null` (benchmark defaults) equal to listing them.
    """
    settings = _plain(cfg)
    for dotted in IGNORED_KEYS:
        _drop(settings, dotted)
    if tasks is not None:
        settings["tasks"] = [str(t) for t in tasks]
    return settings


def settings_hash(cfg: Mapping[str, Any], tasks: Sequence[str] | None = None) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of `comparable_settings(cfg, tasks)`.

    Equal for runs that differ only by seed, name, output or logging keys.
    """
    text = json.dumps(comparable_settings(cfg, tasks), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def differing_keys(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in every one of `settings` (missing counts as None)."""
    flats = [flatten(s) for s in settings]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
