"""Typed config sections: a dataclass per section, one `key(...)` declaration per config key.

A section is also a `MutableMapping` (`section["lr"]`, `.get`, iteration, `dict(section)`), so
builders that take a plain mapping (benchmarks, models) accept it unchanged. Open sections
(`benchmark`, `method`) keep undeclared keys too; their owner checks them where it is built.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, ClassVar, Union


class ConfigError(ValueError):
    """A config that cannot be run: an unknown key, a wrong type or an out-of-range value."""


def key(
    default: Any,
    doc: str,
    *,
    choices: tuple[Any, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """Declare one config key: default, one-line doc, allowed choices and bounds (None is always allowed
    for an optional key). This is the only place a key's rules are written."""
    meta = {"doc": doc, "choices": choices, "gt": gt, "ge": ge, "lt": lt, "le": le}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def suggest(name: str, valid: list[str]) -> str:
    """' (did you mean 'x'?); valid keys: ...' for an unknown key."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid keys: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp)) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def conforms(value: Any, tp: Any) -> bool:
    """Whether `value` has type `tp` (int is a float; bool is not an int)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, typing.get_args(tp)[0]) for v in value)
    if origin is dict:
        return isinstance(value, Mapping)
    return isinstance(value, tp)


def _bounds_message(meta: Mapping[str, Any]) -> str | None:
    low = ("(", meta["gt"]) if meta["gt"] is not None else ("[", meta["ge"]) if meta["ge"] is not None else None
    high = (")", meta["lt"]) if meta["lt"] is not None else ("]", meta["le"]) if meta["le"] is not None else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
    if high:
        return f"{'<' if high[0] == ')' else '<='} {high[1]:g}"
    return None


def _in_bounds(value: float, meta: Mapping[str, Any]) -> bool:
    return (
        (meta["gt"] is None or value > meta["gt"])
        and (meta["ge"] is None or value >= meta["ge"])
        and (meta["lt"] is None or value < meta["lt"])
        and (meta["le"] is None or value <= meta["le"])
    )


@dataclasses.dataclass
class Section(MutableMapping):
    """Base of every section: mapping access to the declared keys (and extras of an open section)."""

    OPEN: ClassVar[bool] = False
    PATH: ClassVar[str] = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_extra", {})

    @classmethod
    def declared(cls) -> dict[str, dataclasses.Field]:
        """The declared keys of this section, in order."""
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    # ---- mapping protocol
    def __getitem__(self, name: str) -> Any:
        if name in self.declared():
            return getattr(self, name)
        if name in self._extra:
            return self._extra[name]
        raise KeyError(name)

    def __setitem__(self, name: str, value: Any) -> None:
        if name in self.declared():
            setattr(self, name, value)
        elif self.OPEN:
            self._extra[name] = value
        else:
            raise ConfigError(f"unknown config key {self.PATH + '.' + name!r}{suggest(name, list(self.declared()))}")

    def __delitem__(self, name: str) -> None:
        if name not in self._extra:
            raise ConfigError(f"config key {self.PATH + '.' + name!r} is declared and cannot be removed")
        del self._extra[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.declared()
        yield from self._extra

    def __len__(self) -> int:
        return len(self.declared()) + len(self._extra)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"

    def __deepcopy__(self, memo: dict) -> Section:
        return type(self).from_dict(copy.deepcopy(self.to_dict(), memo))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable)."""
        return {k: copy.deepcopy(v) for k, v in self.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Section:
        """A section from a mapping of its keys (types are checked by `validate`); ints become floats
        where a float is declared."""
        hints = cls.hints()
        section = cls()
        for name, value in data.items():
            if name in hints and hints[name] in (float, float | None) and conforms(value, int) and value is not None:
                value = float(value)
            section[name] = copy.deepcopy(value)
        return section

    def validate(self) -> None:
        """Types, choices and bounds of every declared key; raises ConfigError naming the key."""
        hints = self.hints()
        for name, fld in self.declared().items():
            value, meta, where = getattr(self, name), fld.metadata, f"{self.PATH}.{name}"
            if not conforms(value, hints[name]):
                raise ConfigError(f"config key {where!r} must be {_type_name(hints[name])}, got {value!r}")
            if value is None:
                continue
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ConfigError(f"{where} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
            bounds = _bounds_message(meta)
            if bounds is not None:
                values = value if isinstance(value, list) else [value]
                if not all(_in_bounds(v, meta) for v in values):
                    unset = " (or unset)" if conforms(None, hints[name]) else ""
                    raise ConfigError(f"{where} must be {bounds}{unset}, got {value!r}")

    @classmethod
    def docs(cls) -> dict[str, str]:
        """{key: one-line doc} of the declared keys."""
        return {name: f.metadata["doc"] for name, f in cls.declared().items()}
