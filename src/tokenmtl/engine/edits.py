"""Model edits: change the architecture once, at a step, from statistics gathered before it.

DTME (token-space analysis -> TM/TE) and Recon (gradient conflicts -> branched layers) are both
edits. The trainer knows only this protocol: it asks each edit for its step, lets it watch the
gradient driver before that step, applies it (a new optimizer group for what it added), and
stores `record()` in results.json and checkpoints so `restore` rebuilds the edited model.
Kinds are registered by name in `EDIT_KINDS` ("<module>:<class>", imported when used); an edit
passed to `Trainer(edits=...)` runs without registration, but a checkpoint of it can only be
restored once its kind is registered.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn


@dataclass
class EditResult:
    """What an edit changed: parameters to train in a new group, shared ones it replaced.

    `lr_mult` scales train.lr for the new group; `weight_decay` None means train.weight_decay.
    `scalars` are logged under the edit's name (e.g. the number of layers changed).
    """

    added: list[nn.Parameter] = field(default_factory=list)
    removed: list[nn.Parameter] = field(default_factory=list)
    lr_mult: float = 1.0
    weight_decay: float | None = None
    scalars: dict[str, float] = field(default_factory=dict)


@dataclass
class EditContext:
    """What an edit may use when it applies: the run's data and where to write its reports."""

    model: nn.Module
    loss_fn: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
    analysis_loader: Callable[[], Any]  # built on demand: DTME's analysis batches
    device: Any
    out: Path | None  # None: write no report files
    is_main: bool = True
    progress: bool = False
    reduce_sum: Callable[[Any], None] | None = None


class ModelEdit(ABC):
    """One architecture edit of a run. Subclasses set `name` and implement apply/record/added_count
    (and `from_config`/`restore` to be built from a config and rebuilt from a checkpoint)."""

    name: ClassVar[str] = ""
    step: int = 0  # global step before which the edit applies
    restarts_schedule: bool = False  # after the edit the LR schedule restarts for the full length

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], balancer: Any, earlier: list[ModelEdit]) -> ModelEdit | None:
        """The edit this config asks for (None: none); `earlier` are the edits built before it.

        Default: None, for edits that are handed to `Trainer(edits=[...])` rather than configured.
        """
        return None

    def watch(self, model: nn.Module, driver: Any) -> None:
        """Set up what the edit observes before its step (called whenever the driver is rebuilt).

        Default: nothing to observe (DTME reads its statistics when it applies).
        """
        return None

    @abstractmethod
    def apply(self, ctx: EditContext) -> EditResult:
        """Gather what is needed, edit `ctx.model` in place, and say what changed."""

    @abstractmethod
    def record(self) -> dict[str, Any]:
        """JSON-serialisable description of what was done, enough for `restore`."""

    @classmethod
    def restore(cls, model: nn.Module, record: Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> EditResult:
        """Re-apply a recorded edit to a freshly built model (checkpoint loading)."""
        raise ValueError(
            f"the model edit {cls.name or cls.__name__!r} cannot be rebuilt from a checkpoint: it defines no restore()"
        )

    @classmethod
    @abstractmethod
    def added_count(cls, model: nn.Module) -> int:
        """Net number of parameters this kind of edit added to `model` (0 when not applied)."""

    @classmethod
    def signals(cls, model: nn.Module) -> dict[str, float]:
        """Scalars worth logging every step once the edit is applied (default: none)."""
        return {}

    @classmethod
    def describe(cls, record: Mapping[str, Any] | None, step: int | None) -> dict[str, Any] | None:
        """The edit's entry of results.json (None when it did not run)."""
        return None if record is None else {**record, "step": step}


EDIT_KINDS: dict[str, str] = {
    "dtme": "tokenmtl.engine.dtme_edit:DTMEEdit",
    "recon": "tokenmtl.recon.edit:ReconEdit",
}


def edit_kind(name: str) -> type[ModelEdit]:
    """The registered edit class of `name`."""
    if name not in EDIT_KINDS:
        raise ValueError(f"unknown model edit {name!r}; registered: {', '.join(EDIT_KINDS)}")
    module, attr = EDIT_KINDS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_edits(cfg: Mapping[str, Any], balancer: Any) -> list[ModelEdit]:
    """The edits a config asks for, in registry order."""
    edits: list[ModelEdit] = []
    for name in EDIT_KINDS:
        edit = edit_kind(name).from_config(cfg, balancer, list(edits))
        if edit is not None:
            edits.append(edit)
    return edits


def restore_edits(
    model: nn.Module, records: Mapping[str, Mapping[str, Any]], cfg: Mapping[str, Any] | None = None
) -> list[tuple[str, EditResult]]:
    """Re-apply recorded edits, in their order, to a freshly built model."""
    return [(name, edit_kind(name).restore(model, record, cfg)) for name, record in records.items()]


def edit_records(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The edits a checkpoint carries: `edits`, or the `dtme_plan` of older checkpoints (a plan's
    `split` list was Recon's branched layers)."""
    if state.get("edits"):
        return {name: dict(record) for name, record in state["edits"].items()}
    legacy = dict(state.get("dtme_plan") or {})
    if not legacy:
        return {}
    split = legacy.pop("split", [])
    records: dict[str, dict[str, Any]] = {}
    if legacy.get("strategy") != "none":
        records["dtme"] = legacy
    if split:
        records["recon"] = {"split": list(split)}
    return records
