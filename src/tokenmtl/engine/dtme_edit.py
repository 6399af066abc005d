"""DTME-MTL as a model edit: token-space analysis and plan at `dtme.expand_at`, then TM/TE.

`analyse_and_plan` is the one analyse-and-plan function, used by training and `tokenmtl analyze`.
The added parameters train in their own optimizer group (x `dtme.lr_mult`, no weight decay: TM
scales start at 1 and TE tokens are learned embeddings; decay would pull them to 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tokenmtl.engine.edits import EditContext, EditResult, ModelEdit


def analyse_and_plan(
    model: nn.Module,
    loader: Any,
    loss_fn: Callable,
    dtme: Mapping[str, Any],
    *,
    device: Any = None,
    out: Path | None = None,
    progress: bool = False,
    reduce_sum: Callable | None = None,
    num_batches: int | None = None,
) -> tuple[Any, Any]:
    """Token-space conflict report and expansion plan of `model` on `loader` (settings: the `dtme`
    config section); writes conflicts.json, plan.json and the two plots into `out` when given.

    A model that already carries a DTME plan (a trained DTME run) is analysed as it is; its own plan
    is returned and marked in conflicts.png, and no plan.json is written (nothing new is planned)."""
    from tokenmtl.dtme import analyze, make_plan
    from tokenmtl.dtme.expand import plan_of
    from tokenmtl.report.dtme_plots import plot_conflicts, plot_spectra

    report = analyze(
        model,
        loader,
        loss_fn,
        device=device,
        num_batches=dtme["num_batches"] if num_batches is None else num_batches,
        r=float(dtme["r"]),
        energy_fraction=dtme["energy_fraction"],
        progress=progress,
        reduce=reduce_sum,
    )
    existing = plan_of(model)
    plan = (
        existing
        if existing is not None
        else make_plan(
            report,
            ratio=float(dtme["ratio"]),
            strategy=dtme["strategy"],
            seed=int(dtme["seed"]),
            mode=dtme["mode"],
            num_tokens=int(dtme["num_tokens"]),
            modulator=dtme["modulator"],
            te_gate=bool(dtme["te_gate"]),
        )
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.to_json(out / "conflicts.json")
        if existing is None:
            plan.save(out / "plan.json")
        plot_conflicts(report, plan, out / "conflicts.png")
        plot_spectra(report, out / "spectra.png")
    return report, plan


def added_norms(model: nn.Module) -> dict[str, float]:
    """Per task, the L2 norm of its TM/TE parameters' distance from their initial values
    (TM scale 1, shift 0; TE tokens from 0): how far expansion moved each task's stream."""
    trunk = getattr(model, "trunk", None)
    norms: dict[str, float] = {}
    if trunk is None or not hasattr(trunk, "tm"):
        return norms
    for task in trunk.tasks:
        total = torch.zeros((), dtype=torch.float64)
        for group in (trunk.tm, trunk.te):
            for module in group.values():
                for param in module.task_parameters(task):
                    total += float(param.detach().double().pow(2).sum())
        norms[task] = float(total.sqrt())
    return norms


class DTMEEdit(ModelEdit):
    """Analyse the token spaces, plan TM/TE on the most conflicted layers, expand."""

    name: ClassVar[str] = "dtme"

    def __init__(self, dtme: Mapping[str, Any], step: int, restarts_schedule: bool) -> None:
        self.settings = dict(dtme)
        self.step = step
        self.restarts_schedule = restarts_schedule
        self.plan = None
        self.report = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], balancer: Any, earlier: list[ModelEdit]) -> DTMEEdit | None:
        dtme = cfg["dtme"]
        if not dtme["enabled"]:
            return None
        step = int(round(float(dtme["expand_at"]) * int(cfg["train"]["iterations"])))
        return cls(dtme, step, restarts_schedule=dtme["post_iterations"] == "full")

    def apply(self, ctx: EditContext) -> EditResult:
        start = time.perf_counter()
        self.report, self.plan = analyse_and_plan(
            ctx.model,
            ctx.analysis_loader(),
            ctx.loss_fn,
            self.settings,
            device=ctx.device,
            out=ctx.out if ctx.is_main else None,
            progress=ctx.progress,
            reduce_sum=ctx.reduce_sum,
        )
        result = self._install(ctx.model, self.plan, self.settings)
        result.scalars = {
            "seconds": time.perf_counter() - start,
            "tm_layers": len(self.plan.tm),
            "te_layers": len(self.plan.te),
        }
        return result

    @staticmethod
    def _install(model: nn.Module, plan: Any, settings: Mapping[str, Any] | None) -> EditResult:
        from tokenmtl.dtme.expand import expand, plan_parameters

        expand(model, plan)
        if settings is not None and settings.get("freeze_backbone"):
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        lr_mult = float(settings["lr_mult"]) if settings is not None else 1.0
        return EditResult(added=plan_parameters(model), lr_mult=lr_mult, weight_decay=0.0)

    def record(self) -> dict[str, Any]:
        return self.plan.to_dict()

    @classmethod
    def restore(cls, model: nn.Module, record: Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> EditResult:
        from tokenmtl.dtme import Plan

        return cls._install(model, Plan.from_dict(record), cfg["dtme"] if cfg is not None else None)

    @classmethod
    def added_count(cls, model: nn.Module) -> int:
        from tokenmtl.dtme.expand import plan_parameters

        return sum(p.numel() for p in plan_parameters(model))

    @classmethod
    def signals(cls, model: nn.Module) -> dict[str, float]:
        return {f"added_norm/{task}": value for task, value in added_norms(model).items()}

    @classmethod
    def describe(cls, record: Mapping[str, Any] | None, step: int | None) -> dict[str, Any] | None:
        return None if record is None else {**record, "expand_step": step}
