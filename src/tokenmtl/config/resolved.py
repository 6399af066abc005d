"""The resolved config: typed sections with attribute access (`cfg.train.lr`) and mapping access
(`cfg["train"]["lr"]`), checked as a whole by `validate`."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from tokenmtl.config.schema import (
    ORDER,
    SCALARS,
    SECTIONS,
    BenchmarkSection,
    DtmeSection,
    EvalSection,
    LogSection,
    LossWeightsSection,
    MethodSection,
    ModelSection,
    TrainSection,
)
from tokenmtl.config.sections import ConfigError, suggest


class Config(MutableMapping):
    """A whole run's settings. Sections are `Section` objects; `name` and `tasks` are plain values."""

    name: str | None
    tasks: list[str] | None
    benchmark: BenchmarkSection
    model: ModelSection
    train: TrainSection
    loss_weights: LossWeightsSection
    method: MethodSection
    dtme: DtmeSection
    eval: EvalSection
    log: LogSection

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        data = dict(data or {})
        unknown = sorted(set(data) - set(ORDER))
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}{suggest(unknown[0], list(ORDER))}")
        for name in ORDER:
            self[name] = data.get(name, copy.deepcopy(SCALARS[name][0]) if name in SCALARS else {})

    def __getitem__(self, name: str) -> Any:
        if name not in ORDER:
            raise KeyError(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in ORDER:
            raise ConfigError(f"unknown config key {name!r}{suggest(name, list(ORDER))}")
        if name in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {name!r} must be a mapping, got {value!r}")
            value = SECTIONS[name].from_dict(value)
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delitem__(self, name: str) -> None:
        raise ConfigError(f"config key {name!r} cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(ORDER)

    def __len__(self) -> int:
        return len(ORDER)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == _plain(other)

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def __deepcopy__(self, memo: dict) -> Config:
        return Config(copy.deepcopy(self.to_dict(), memo))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict: what config.yaml, checkpoints and the settings hash hold."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def validate(cfg: Mapping[str, Any]) -> None:
    """Every key's type, choices and bounds, and the rules that involve the whole config."""
    if not isinstance(cfg, Config):
        cfg = Config(cfg)
    for name in SECTIONS:
        cfg[name].validate()
    tasks = cfg.tasks
    if tasks is not None and (not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks)):
        raise ConfigError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    if tasks is not None and len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks lists a task twice: {tasks!r}")
    if cfg.name is not None and not isinstance(cfg.name, str):
        raise ConfigError(f"name must be a string, got {cfg.name!r}")
    weights = cfg.loss_weights.weights or {}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in weights.values()):
        raise ConfigError(f"loss_weights.weights must map task names to non-negative numbers, got {weights!r}")
