"""The expansion plan: which layers get Token Modulation / Token Expansion (DTME-MTL paper, layer selection).

A plan is data (a small JSON dict saved with every checkpoint), so an expanded model can be
rebuilt exactly: build the model, `expand(model, Plan.from_dict(d))`, then load the state dict.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STRATEGIES = ("conflict", "random", "reverse", "swap")
MODES = ("both", "tm", "te", "none")  # none: the empty-plan control (analysis, no expansion)
MODULATORS = ("affine", "batchnorm")


@dataclass
class Plan:
    """Layers (block indices, i.e. the tokens entering that block) for TM and TE, and their settings."""

    tm: list[int] = field(default_factory=list)
    te: list[int] = field(default_factory=list)
    num_tokens: int = 6
    modulator: str = "affine"
    tasks: list[str] = field(default_factory=list)
    strategy: str = "conflict"
    ratio: float = 0.5
    mode: str = "both"
    seed: int = 0
    te_gate: bool = False

    def __post_init__(self) -> None:
        self.tm = sorted(int(x) for x in self.tm)
        self.te = sorted(int(x) for x in self.te)
        self.tasks = [str(t) for t in self.tasks]
        if self.modulator not in MODULATORS:
            raise ValueError(f"unknown modulator {self.modulator!r}; allowed: {list(MODULATORS)}")
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1; got {self.num_tokens}")
        for name, layers in (("tm", self.tm), ("te", self.te)):
            if len(set(layers)) != len(layers) or any(x < 0 for x in layers):
                raise ValueError(f"plan {name} layers must be distinct indices >= 0; got {layers}")
        bad = [t for t in self.tasks if not t or "." in t]
        if bad:
            raise ValueError(f"task names must be non-empty and contain no '.'; got {bad}")

    @property
    def is_empty(self) -> bool:
        """True when the plan changes nothing (no TM or TE layers)."""
        return not (self.tm or self.te)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of `to_dict`; unknown keys are an error listing the valid ones."""
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown plan keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items()})

    def save(self, path: str | Path) -> None:
        """Write the plan as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def num_selected(ratio: float, num_layers: int) -> int:
    """n = round(ratio * L), rounding halves up (DTME-MTL paper, layer selection)."""
    return int(math.floor(ratio * num_layers + 0.5))


def _top(rates: Mapping[int, float], n: int, highest: bool) -> list[int]:
    """n layers with the highest (or lowest) rate; ties go to the shallower layer."""
    order = sorted(rates, key=lambda layer: ((-rates[layer]) if highest else rates[layer], layer))
    return sorted(order[:n])


def make_plan(
    report: Any,
    ratio: float = 0.5,
    strategy: str = "conflict",
    seed: int = 0,
    mode: str = "both",
    num_tokens: int = 6,
    modulator: str = "affine",
    te_gate: bool = False,
) -> Plan:
    """Choose TM/TE layers from a conflict report (DTME-MTL paper, layer selection).

    conflict: TM on the n layers with the most range conflicts, TE on the n with the most null
    conflicts; reverse: the n least conflicted of each; swap: TE by range, TM by null conflicts;
    random: n random layers each (seeded). n = round(ratio * L) over the analysed layers.
    `mode` "tm"/"te" keeps only one kind; "none" keeps neither (the empty-plan control run).
    `te_gate` makes the TE layers function-preserving at insertion (`TokenExpansion(gated=True)`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {list(STRATEGIES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {list(MODES)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1]; got {ratio}")
    range_rates = {lr.layer: lr.range_conflict_rate for lr in report.layers}
    null_rates = {lr.layer: lr.null_conflict_rate for lr in report.layers}
    n = num_selected(ratio, len(range_rates))
    if strategy == "conflict":
        tm, te = _top(range_rates, n, True), _top(null_rates, n, True)
    elif strategy == "reverse":
        tm, te = _top(range_rates, n, False), _top(null_rates, n, False)
    elif strategy == "swap":
        tm, te = _top(null_rates, n, True), _top(range_rates, n, True)
    else:
        rng = random.Random(seed)
        layers = sorted(range_rates)
        tm, te = sorted(rng.sample(layers, n)), sorted(rng.sample(layers, n))
    if mode in ("tm", "none"):
        te = []
    if mode in ("te", "none"):
        tm = []
    return Plan(
        tm=tm,
        te=te,
        num_tokens=num_tokens,
        modulator=modulator,
        tasks=list(report.tasks),
        strategy=strategy,
        ratio=float(ratio),
        mode=mode,
        seed=int(seed),
        te_gate=bool(te_gate),
    )


__all__ = ["Plan", "make_plan", "num_selected", "STRATEGIES", "MODES", "MODULATORS"]
