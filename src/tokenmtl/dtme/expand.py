"""Expansion: edit a `MultiTaskModel` once so its trunk carries the plan's per-task modules
(DTME-MTL paper, Token Modulation and Expansion).

Streams: all tasks share one token stream up to the fork (the first layer with TM, TE or a
per-task module another edit registered, e.g. Recon's split layers); there the stream is copied
once per task and the tasks are folded task-major into the
batch axis, so every later block runs once, batched, on (T*B, N, D) with its shared weights.

Checkpoints: save `{"model": model.state_dict(), "dtme_plan": plan_of(model).to_dict()}`; to load,
build the same model, `expand(model, Plan.from_dict(ckpt["dtme_plan"]))`, then
`model.load_state_dict(ckpt["model"])`. Added parameters are named `trunk.*`; give them a new
optimizer parameter group after `expand` (`added_parameters(model)`), keeping the existing state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tokenmtl.dtme.modules import TokenExpansion, TokenModulation
from tokenmtl.dtme.plan import Plan


class ExpandedTrunk(nn.Module):
    """A trunk that forks per-task token streams; `forward(encoder, tokens, ctx, tasks) -> {task: tokens}`.

    It carries DTME's TM/TE modules (`plan`, None when no DTME plan was applied) and any per-task
    copies of block modules that another architecture edit registers with `add_split` (e.g.
    `tokenmtl.recon`). Any subset of the tasks may be run (e.g. one task alone for per-task
    inference); streams are returned as (B, N, D) views of the folded batch. At a layer with
    both, TM modulates the stream's tokens first, then the TE tokens are appended (not modulated).
    A gated TE layer (`plan.te_gate`) runs its block twice, with and without the tokens, and
    mixes the two outputs by the task's gate.
    """

    def __init__(self, tasks: Sequence[str], dim: int, plan: Plan | None = None) -> None:
        super().__init__()
        self.plan: Plan | None = None
        self.tasks = list(tasks)
        self.dim = int(dim)
        self.tm = nn.ModuleDict()
        self.te = nn.ModuleDict()
        self.split = nn.ModuleDict()
        self.split_blocks: list[int] = []
        self.removed_parameters = 0
        if plan is not None:
            self.install_plan(plan)

    def install_plan(self, plan: Plan) -> None:
        """Add the plan's TM and TE modules (once)."""
        if self.plan is not None:
            raise ValueError("this trunk already carries a DTME plan; expand a freshly built model instead")
        self.plan = plan
        for layer in plan.tm:
            self.tm[str(layer)] = TokenModulation(plan.tasks, self.dim, plan.modulator)
        for layer in plan.te:
            self.te[str(layer)] = TokenExpansion(plan.tasks, self.dim, plan.num_tokens, gated=plan.te_gate)

    def add_split(self, key: str, module: nn.Module, block: int, removed_parameters: int) -> None:
        """Register a per-task module living inside block `block` (the streams fork there at the latest)."""
        self.split[key] = module
        self.split_blocks.append(int(block))
        self.removed_parameters += int(removed_parameters)

    @property
    def fork(self) -> int | None:
        """First block that runs per-task streams (None: no fork, the shared trunk's result)."""
        layers = [int(k) for k in self.tm] + [int(k) for k in self.te] + self.split_blocks
        return min(layers) if layers else None

    def forward(self, encoder: Any, tokens: torch.Tensor, ctx: Any, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise KeyError(f"tasks {unknown} are not in this expansion plan; it has {self.tasks}")
        num_blocks = encoder.num_blocks
        fork = num_blocks if self.fork is None else self.fork
        for index in range(fork):
            tokens = encoder.run_block(index, tokens, ctx)
        if fork == num_blocks:
            return {task: tokens for task in tasks}
        batch = tokens.shape[0]
        for module in self.split.values():
            module.active_tasks = tuple(tasks)
        x = tokens.repeat(len(tasks), *([1] * (tokens.dim() - 1)))
        folded_ctx = encoder.repeat_ctx(ctx, len(tasks))
        for index in range(fork, num_blocks):
            key = str(index)
            if key in self.tm:
                x = self.tm[key](x, tasks)
            if key in self.te:
                te = self.te[key]
                expanded = te.drop(
                    encoder.run_block(index, te.append(x, tasks), encoder.extend_ctx(folded_ctx, te.num_tokens))
                )
                x = te.mix(encoder.run_block(index, x, folded_ctx), expanded, tasks) if te.gated else expanded
            else:
                x = encoder.run_block(index, x, folded_ctx)
        return {task: x[t * batch : (t + 1) * batch] for t, task in enumerate(tasks)}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters only `task` uses: its modulators, tokens and split copies."""
        if task not in self.tasks:
            raise KeyError(f"unknown task {task!r}; this expansion has {self.tasks}")
        params: list[nn.Parameter] = []
        for group in (self.tm, self.te, self.split):
            for module in group.values():
                params += module.task_parameters(task)
        return params


def plan_of(model: nn.Module) -> Plan | None:
    """The plan a model was expanded with, or None for an unexpanded model."""
    trunk = getattr(model, "trunk", None)
    return trunk.plan if isinstance(trunk, ExpandedTrunk) else None


def _check_plan(model: nn.Module, plan: Plan) -> None:
    if plan_of(model) is not None:
        raise ValueError(
            "this model is already expanded (its trunk is an ExpandedTrunk); expand a freshly built model instead"
        )
    if not all(hasattr(model, a) for a in ("encoder", "heads", "trunk")):
        raise TypeError(f"expand needs a MultiTaskModel (encoder, heads, trunk); got {type(model).__name__}")
    if sorted(plan.tasks) != sorted(model.tasks):
        raise ValueError(f"the plan is for tasks {plan.tasks}; this model has tasks {model.tasks}")
    num_blocks = model.encoder.num_blocks
    bad = [l for l in plan.tm + plan.te if not 0 <= l < num_blocks]
    if bad:
        raise ValueError(f"plan layers {bad} are out of range; this encoder has blocks 0..{num_blocks - 1}")


def forking_trunk(model: nn.Module) -> ExpandedTrunk:
    """The model's `ExpandedTrunk`, installed (empty, on the encoder's device and dtype) if needed."""
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, ExpandedTrunk):
        return trunk
    reference = next(model.encoder.parameters())
    trunk = ExpandedTrunk(model.tasks, model.encoder.embed_dim).to(device=reference.device, dtype=reference.dtype)
    model.trunk = trunk
    return trunk


def expand(model: nn.Module, plan: Plan) -> nn.Module:
    """Install the plan's TM/TE modules in `model`'s trunk (in place; returns the model).

    Added modules start on the encoder's device and dtype. An empty plan reproduces the
    baseline bit for bit (no fork). Existing parameters are untouched: give the added ones
    (`added_parameters`) a new optimizer parameter group.
    """
    _check_plan(model, plan)
    reference = next(model.encoder.parameters())
    trunk = forking_trunk(model)
    trunk.install_plan(plan)
    trunk.to(device=reference.device, dtype=reference.dtype)
    return model


def plan_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the DTME plan's modules (TM and TE), without other edits' split copies."""
    trunk = getattr(model, "trunk", None)
    if not isinstance(trunk, ExpandedTrunk):
        return []
    return [p for group in (trunk.tm, trunk.te) for p in group.parameters()]


def added_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters the expansion added (all of them are named `trunk.*`), e.g. for an LR group."""
    trunk = getattr(model, "trunk", None)
    return list(trunk.parameters()) if isinstance(trunk, ExpandedTrunk) else []


def count_added_parameters(model: nn.Module) -> int:
    """Net parameter count added by the expansion (split copies count minus the shared ones removed)."""
    trunk = getattr(model, "trunk", None)
    if not isinstance(trunk, ExpandedTrunk):
        return 0
    return sum(p.numel() for p in trunk.parameters()) - trunk.removed_parameters
