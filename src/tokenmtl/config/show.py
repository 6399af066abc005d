"""`tokenmtl config show`: the resolved config as YAML, each key followed by its doc."""

from __future__ import annotations

import json
from typing import Any

from tokenmtl.config.resolved import Config
from tokenmtl.config.schema import ORDER, SCALARS, SECTIONS


def _value(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def annotated_yaml(cfg: Config) -> str:
    """YAML of `cfg` (valid input for `load_config`) with every declared key's doc as a comment."""
    lines: list[str] = []
    for name in ORDER:
        if name in SCALARS:
            lines.append(f"{name}: {_value(cfg[name])}  # {SCALARS[name][1]}")
            continue
        cls = SECTIONS[name]
        lines.append(f"{name}:" + (f"  # {cls.__doc__.strip().splitlines()[0]}" if cls.OPEN and cls.__doc__ else ""))
        docs = cls.docs()
        width = max(len(k) for k in cfg[name]) + 2
        for key, value in cfg[name].items():
            doc = f"  # {docs[key]}" if key in docs else "  # (taken by the benchmark/method)"
            lines.append(f"  {key + ':':<{width}} {_value(value)}{doc}")
    return "\n".join(lines) + "\n"
