"""Expansion: edit a `MultiTaskModel` once so its trunk carries the plan's per-task modules (METHOD.md 1.4).

Streams: all tasks share one token stream up to the fork (the first layer with TM, TE or a split
module); there the stream is copied once per task and the tasks are folded task-major into the
batch axis, so every later block runs once, batched, on (T*B, N, D) with its shared weights.

Checkpoints: save `{"model": model.state_dict(), "dtme_plan": plan_of(model).to_dict()}`; to load,
build the same model, `expand(model, Plan.from_dict(ckpt["dtme_plan"]))`, then
`model.load_state_dict(ckpt["model"])`. Added parameters are named `trunk.*`; rebuild the
optimizer after `expand` (`added_parameters(model)` gives them, e.g. for a learning-rate group).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from tokenmtl.dtme.modules import SplitLinearProxy, TaskSpecificLinear, TokenExpansion, TokenModulation
from tokenmtl.dtme.plan import Plan


def _split_key(name: str) -> str:
    return name.replace(".", "__")


class ExpandedTrunk(nn.Module):
    """A trunk with per-task TM/TE/split modules; `forward(encoder, tokens, ctx, tasks) -> {task: tokens}`.

    Any subset of the plan's tasks may be run (e.g. one task alone for per-task inference);
    streams are returned as (B, N, D) views of the folded batch. At a layer with both, TM
    modulates the stream's tokens first, then the TE tokens are appended (not modulated).
    """

    def __init__(self, plan: Plan, dim: int, split_modules: dict[str, TaskSpecificLinear],
                 split_blocks: Sequence[int], removed_parameters: int) -> None:
        super().__init__()
        self.plan = plan
        self.tasks = list(plan.tasks)
        self.tm = nn.ModuleDict({str(l): TokenModulation(plan.tasks, dim, plan.modulator) for l in plan.tm})
        self.te = nn.ModuleDict({str(l): TokenExpansion(plan.tasks, dim, plan.num_tokens) for l in plan.te})
        self.split = nn.ModuleDict({_split_key(n): m for n, m in split_modules.items()})
        self.removed_parameters = int(removed_parameters)
        layers = list(plan.tm) + list(plan.te) + list(split_blocks)
        self.fork: int | None = min(layers) if layers else None

    def forward(self, encoder: Any, tokens: torch.Tensor, ctx: Any,
                tasks: Sequence[str]) -> dict[str, torch.Tensor]:
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
                x = te.drop(encoder.run_block(index, te.append(x, tasks),
                                              encoder.extend_ctx(folded_ctx, te.num_tokens)))
            else:
                x = encoder.run_block(index, x, folded_ctx)
        return {task: x[t * batch:(t + 1) * batch] for t, task in enumerate(tasks)}

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
        raise ValueError("this model is already expanded (its trunk is an ExpandedTrunk); "
                         "expand a freshly built model instead")
    if not all(hasattr(model, a) for a in ("encoder", "heads", "trunk")):
        raise TypeError(f"expand needs a MultiTaskModel (encoder, heads, trunk); got {type(model).__name__}")
    if sorted(plan.tasks) != sorted(model.tasks):
        raise ValueError(f"the plan is for tasks {plan.tasks}; this model has tasks {model.tasks}")
    num_blocks = model.encoder.num_blocks
    bad = [l for l in plan.tm + plan.te if not 0 <= l < num_blocks]
    if bad:
        raise ValueError(f"plan layers {bad} are out of range; this encoder has blocks 0..{num_blocks - 1}")


def _resolve_split(blocks: nn.Module, name: str) -> tuple[nn.Module, str, nn.Linear, int]:
    """(parent module, attribute, the Linear, block index) for a name like '7.mlp.fc2'."""
    parts = name.split(".")
    if len(parts) < 2 or not parts[0].isdigit():
        raise ValueError(f"split module names look like '<block>.<path>' (e.g. '7.mlp.fc2'); got {name!r}")
    try:
        parent = blocks.get_submodule(".".join(parts[:-1]))
        module = parent.get_submodule(parts[-1])
    except AttributeError as exc:
        raise ValueError(f"split module {name!r} does not exist under encoder.blocks ({exc})") from None
    if not isinstance(module, nn.Linear):
        raise ValueError(f"split module {name!r} must be an nn.Linear; got {type(module).__name__}")
    return parent, parts[-1], module, int(parts[0])


def expand(model: nn.Module, plan: Plan) -> nn.Module:
    """Install an `ExpandedTrunk` following `plan` in `model` (in place; returns the model).

    Added modules start on the encoder's device and dtype. An empty plan reproduces the
    baseline bit for bit (no fork). Rebuild the optimizer afterwards.
    """
    _check_plan(model, plan)
    encoder = model.encoder
    reference = next(encoder.parameters())
    split_modules: dict[str, TaskSpecificLinear] = {}
    split_blocks: list[int] = []
    removed = 0
    targets = [(name, *_resolve_split(encoder.blocks, name)) for name in plan.split]
    for name, parent, attr, linear, block in targets:
        task_linear = TaskSpecificLinear(linear, plan.tasks)
        split_modules[name] = task_linear
        split_blocks.append(block)
        removed += sum(p.numel() for p in linear.parameters())
    trunk = ExpandedTrunk(plan, encoder.embed_dim, split_modules, split_blocks, removed)
    trunk.to(device=reference.device, dtype=reference.dtype)
    for name, parent, attr, linear, block in targets:
        del parent._modules[attr]
        object.__setattr__(parent, attr, SplitLinearProxy(split_modules[name], name))
    model.trunk = trunk
    return model


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
