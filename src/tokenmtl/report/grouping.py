"""Runs grouped into settings (the seeds of one table row) and row labels derived from what differs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tokenmtl.report.runs import RunRecord
from tokenmtl.report.settings import comparable_settings, differing_keys, flatten


@dataclass
class Setting:
    """Runs with equal resolved configs except seed/name/output keys: one row, one run per seed."""

    key: str
    runs: list[RunRecord] = field(default_factory=list)
    label: str = ""

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    @property
    def tasks(self) -> list[str]:
        return self.first.tasks

    @property
    def is_single_task(self) -> bool:
        return self.first.is_single_task

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def settings(self) -> dict[str, Any]:
        return comparable_settings(self.first.config, self.tasks)

    def run_of_seed(self, seed: int) -> RunRecord | None:
        return next((r for r in self.runs if r.seed == seed), None)


def group_settings(runs: list[RunRecord]) -> list[Setting]:
    """Settings in first-seen order, runs sorted by seed; two runs of one setting and seed are an error."""
    groups: dict[str, Setting] = {}
    for run in runs:
        group = groups.setdefault(run.setting, Setting(run.setting))
        twin = group.run_of_seed(run.seed)
        if twin is not None:
            raise ValueError(
                f"two runs of the same setting and seed {run.seed}: {str(twin.dir)!r} and "
                f"{str(run.dir)!r}; pass only one of them"
            )
        group.runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)
    return list(groups.values())


def dtme_label(setting: Setting) -> str:
    """'', 'TM', 'TE', 'TM+TE', with the strategy when not 'conflict'; 'DTME empty plan' for the control."""
    dtme = setting.first.config.get("dtme") or {}
    if not dtme.get("enabled"):
        return ""
    plan = setting.first.results.get("dtme")
    if isinstance(plan, dict) and not plan.get("tm") and not plan.get("te"):
        return "DTME empty plan"
    mode = dtme.get("mode", "both")
    label = {"both": "TM+TE", "tm": "TM", "te": "TE"}.get(mode, f"DTME({mode})")
    strategy = dtme.get("strategy", "conflict")
    return label if strategy == "conflict" else f"{label} ({strategy})"


def base_label(setting: Setting, show_tasks: bool) -> str:
    """`ST <task>` for single-task runs; else METHOD [+ DTME part] [tasks]."""
    if setting.is_single_task:
        return f"ST {setting.tasks[0]}"
    method = str((setting.first.config.get("method") or {}).get("name", setting.first.results.get("method", "ew")))
    label = method.upper()
    dtme = dtme_label(setting)
    if dtme:
        label += f" + {dtme}"
    if show_tasks:
        label += f" [{','.join(setting.tasks)}]"
    return label


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def assign_labels(settings: list[Setting]) -> None:
    """Label every setting; settings that would share a label get the config keys that tell them apart."""
    multi = [s for s in settings if not s.is_single_task]
    show_tasks = len({tuple(s.tasks) for s in multi}) > 1
    by_label: dict[str, list[Setting]] = defaultdict(list)
    for setting in settings:
        by_label[base_label(setting, show_tasks)].append(setting)
    for label, same in by_label.items():
        if len(same) == 1:
            same[0].label = label
            continue
        keys = differing_keys([s.settings for s in same])
        for setting in same:
            flat = flatten(setting.settings)
            detail = ", ".join(f"{k}={_value_text(flat.get(k))}" for k in keys)
            setting.label = f"{label} ({detail})"
