"""Per-layer conflict rates before vs after training, from two conflicts.json reports.

The DTME paper's Table 14 question: does Token Modulation lower range-space conflicts and Token
Expansion null-space conflicts? Reports are `tokenmtl.dtme.ConflictReport` (`to_json` format).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LayerChange:
    """Range and null conflict rates of one layer in both reports."""

    layer: int
    range_before: float
    range_after: float
    null_before: float
    null_after: float


@dataclass
class ConflictChange:
    """Layer-by-layer change; `tm`/`te` are the plan's layers (empty without a plan)."""

    layers: list[LayerChange]
    labels: tuple[str, str] = ("before", "after")
    tm: list[int] = field(default_factory=list)
    te: list[int] = field(default_factory=list)

    def mean(self, space: str, stage: str, layers: Sequence[int] | None = None) -> float:
        """Unweighted mean over `layers` (default all) of `<space>_<stage>`, space range|null, stage before|after."""
        chosen = [lc for lc in self.layers if layers is None or lc.layer in layers]
        if not chosen:
            raise ValueError(
                f"none of layers {list(layers or [])} is in the reports ({[lc.layer for lc in self.layers]})"
            )
        return statistics.fmean(getattr(lc, f"{space}_{stage}") for lc in chosen)

    def change(self, space: str, layers: Sequence[int] | None = None) -> float:
        """Mean after minus mean before (negative: training lowered the conflicts)."""
        return self.mean(space, "after", layers) - self.mean(space, "before", layers)

    def to_markdown(self) -> str:
        """Per-layer table, then the mean change over all layers (and over TM/TE layers with a plan)."""
        b, a = self.labels
        lines = [
            f"| layer | range {b} | range {a} | Δ range | null {b} | null {a} | Δ null |",
            "|---|---|---|---|---|---|---|",
        ]
        for lc in self.layers:
            mark = ("M" if lc.layer in self.tm else "") + ("E" if lc.layer in self.te else "")
            lines.append(
                f"| {lc.layer}{' ' + mark if mark else ''} | {lc.range_before:.4f} | {lc.range_after:.4f} | "
                f"{lc.range_after - lc.range_before:+.4f} | {lc.null_before:.4f} | {lc.null_after:.4f} | "
                f"{lc.null_after - lc.null_before:+.4f} |"
            )
        lines.append("")
        lines.append(
            f"Mean over layers: range {self.mean('range', 'before'):.4f} -> {self.mean('range', 'after'):.4f} "
            f"({self.change('range'):+.4f}); null {self.mean('null', 'before'):.4f} -> "
            f"{self.mean('null', 'after'):.4f} ({self.change('null'):+.4f})."
        )
        if self.tm:
            lines.append(f"TM layers {self.tm} (M): range {self.change('range', self.tm):+.4f}.")
        if self.te:
            lines.append(f"TE layers {self.te} (E): null {self.change('null', self.te):+.4f}.")
        return "\n".join(lines) + "\n"


def _report(value: Any) -> Any:
    from tokenmtl.dtme.analysis import ConflictReport

    if isinstance(value, ConflictReport):
        return value
    if isinstance(value, Mapping):
        return ConflictReport.from_dict(value)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"no conflicts report at {str(path)!r}")
    try:
        return ConflictReport.from_json(path)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{str(path)!r} is not a conflicts.json report: {err}") from None


def conflict_change(
    before: Any, after: Any, plan: Any | None = None, labels: tuple[str, str] = ("before", "after")
) -> ConflictChange:
    """Compare two reports (ConflictReport, its dict, or a conflicts.json path) layer by layer.

    Both must cover the same layers. `plan` (a `tokenmtl.dtme.Plan` or its dict) marks TM/TE layers.
    """
    first, second = _report(before), _report(after)
    layers_a, layers_b = [lr.layer for lr in first.layers], [lr.layer for lr in second.layers]
    if layers_a != layers_b:
        raise ValueError(f"the two reports cover different layers: {layers_a} vs {layers_b}")
    changes = [
        LayerChange(x.layer, x.range_conflict_rate, y.range_conflict_rate, x.null_conflict_rate, y.null_conflict_rate)
        for x, y in zip(first.layers, second.layers)
    ]
    plan_dict = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan or {})
    return ConflictChange(
        changes, labels, [int(x) for x in plan_dict.get("tm", [])], [int(x) for x in plan_dict.get("te", [])]
    )
