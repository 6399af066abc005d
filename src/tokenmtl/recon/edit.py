"""Recon as a model edit: after its scoring window, branch the top-k most conflicted layers.

Where we differ from the paper: the paper trains once to score and then **retrains from scratch**
with the branched layers; tokenmtl branches the layers in the same run at the end of the window
(`method.window` iterations, or at the step of an earlier edit such as DTME's expansion, so the
model is edited once) and keeps training, so Recon costs one run like every other method.
Candidate layers are the `nn.Linear` modules inside the transformer blocks (qkv, proj, fc1, fc2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from tokenmtl.engine.edits import EditContext, EditResult, ModelEdit
from tokenmtl.engine.errors import TrainingError
from tokenmtl.recon.balancer import Recon
from tokenmtl.recon.split import split_layers


def linear_layout(model: nn.Module, shared: list[nn.Parameter]) -> list[tuple[str | None, int]]:
    """(block-relative name of its nn.Linear, or None; numel) of each shared parameter, in order."""
    owner: dict[int, str] = {}
    for name, module in model.encoder.blocks.named_modules():
        if isinstance(module, torch.nn.Linear):
            for param in module.parameters(recurse=False):
                owner[id(param)] = name
    return [(owner.get(id(p)), p.numel()) for p in shared]


class ReconEdit(ModelEdit):
    """Watches the gradient driver through the Recon balancer's scorer, then splits its top-k layers."""

    name: ClassVar[str] = "recon"

    def __init__(self, balancer: Recon, step: int) -> None:
        self.balancer = balancer
        self.step = step
        self.split: list[str] = []

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], balancer: Any, earlier: list[ModelEdit]) -> ReconEdit | None:
        if not isinstance(balancer, Recon):
            return None
        if earlier:
            step = earlier[0].step
            if step == 0:
                raise TrainingError(
                    "recon scores layers before the model is edited, but the "
                    f"{earlier[0].name} edit is at step 0: set dtme.expand_at > 0"
                )
            return cls(balancer, step)
        iterations = int(cfg["train"]["iterations"])
        if not 0 < balancer.window < iterations:
            raise TrainingError(
                f"recon's method.window ({balancer.window}) must be between 1 and "
                f"train.iterations - 1 ({iterations - 1})"
            )
        return cls(balancer, balancer.window)

    def watch(self, model: nn.Module, driver: Any) -> None:
        self.balancer.bind(linear_layout(model, driver.shared))

    def apply(self, ctx: EditContext) -> EditResult:
        start = time.perf_counter()
        self.split = self.balancer.layers_to_split()
        if ctx.out is not None and ctx.is_main:
            ctx.out.mkdir(parents=True, exist_ok=True)
            (ctx.out / "recon_scores.json").write_text(
                json.dumps(
                    {
                        "scores": self.balancer.conflict_scores(),
                        "split": self.split,
                        "S": self.balancer.S,
                        "steps_scored": self.balancer.steps_scored,
                    },
                    indent=1,
                )
            )
        result = self.restore(ctx.model, self.record())
        result.scalars = {"seconds": time.perf_counter() - start, "split_layers": len(self.split)}
        return result

    def record(self) -> dict[str, Any]:
        return {"split": list(self.split)}

    @classmethod
    def restore(cls, model: nn.Module, record: Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> EditResult:
        added, removed = split_layers(model, record["split"])
        return EditResult(added=added, removed=removed)

    @classmethod
    def added_count(cls, model: nn.Module) -> int:
        trunk = getattr(model, "trunk", None)
        if trunk is None or not hasattr(trunk, "split") or not len(trunk.split):
            return 0
        return sum(p.numel() for p in trunk.split.parameters()) - trunk.removed_parameters

    @classmethod
    def describe(cls, record: Mapping[str, Any] | None, step: int | None) -> dict[str, Any] | None:
        return None if record is None else {"split": list(record["split"]), "split_step": step}
