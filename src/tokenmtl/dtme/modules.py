"""Per-task modules that DTME adds to a shared trunk, all acting on task-major folds
(docs/method.md, "Token Modulation, Token Expansion and task streams").

A folded batch holds the streams of the active tasks stacked along the batch axis: rows
`t*B:(t+1)*B` are task `tasks[t]`. Each module keeps one parameter set per task (named by the
task, so `MultiTaskModel.task_parameters(task)` finds exactly that task's own parameters) and
applies all of them in one batched tensor operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _unfold(x: torch.Tensor, num_streams: int, what: str) -> torch.Tensor:
    if x.shape[0] % num_streams:
        raise ValueError(f"{what}: a folded batch of {x.shape[0]} rows cannot hold {num_streams} task streams")
    return x.reshape(num_streams, x.shape[0] // num_streams, *x.shape[1:])


class TokenModulation(nn.Module):
    """Token Modulation of one layer: task t's tokens become `W_t * x + b_t` (channel-wise).

    `modulator="affine"` (default): W_t = 1, b_t = 0 at init, so insertion keeps the function.
    `modulator="batchnorm"` (the paper's Tab. 11 ablation): a BatchNorm over the D channels per
    task (normalises at init, so it does change the function).
    """

    def __init__(self, tasks: Sequence[str], dim: int, modulator: str = "affine") -> None:
        super().__init__()
        if modulator not in ("affine", "batchnorm"):
            raise ValueError(f"unknown modulator {modulator!r}; allowed: 'affine', 'batchnorm'")
        self.modulator = modulator
        if modulator == "affine":
            self.weight = nn.ParameterDict({t: nn.Parameter(torch.ones(dim)) for t in tasks})
            self.bias = nn.ParameterDict({t: nn.Parameter(torch.zeros(dim)) for t in tasks})
        else:
            self.norm = nn.ModuleDict({t: nn.BatchNorm1d(dim) for t in tasks})

    def forward(self, x: torch.Tensor, tasks: Sequence[str]) -> torch.Tensor:
        """Modulate a folded batch (T*B, N, D) whose streams belong to `tasks` (task-major)."""
        streams = _unfold(x, len(tasks), "TokenModulation")
        if self.modulator == "affine":
            weight = torch.stack([self.weight[t] for t in tasks])[:, None, None, :]
            bias = torch.stack([self.bias[t] for t in tasks])[:, None, None, :]
            return torch.addcmul(bias, streams, weight).reshape(x.shape)
        out = [self.norm[t](s.reshape(-1, s.shape[-1])).reshape(s.shape) for t, s in zip(tasks, streams)]
        return torch.stack(out).reshape(x.shape)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """This layer's parameters of one task."""
        if self.modulator == "affine":
            return [self.weight[task], self.bias[task]]
        return list(self.norm[task].parameters())


class TokenExpansion(nn.Module):
    """Token Expansion of one layer: `num_tokens` learnable tokens per task.

    Init: normal with std 0.02, truncated at +-2 std (our choice; docs/method.md, "Token Modulation,
    Token Expansion and task streams").

    `append` adds each stream's own tokens after its sequence; `drop` removes them after the
    block (VPT-deep style), so the sequence length seen by later blocks and heads is unchanged.

    `gated=True` (our function-preserving variant, docs/method.md): one scalar gate g_t per task,
    0 at init; the layer's output is `block(x) + g_t * (block([x; tokens]) - block(x))`, so
    insertion leaves a pretrained model's outputs unchanged (plain TE shifts them, because the
    appended tokens take attention from the original ones) and training opens the gate.
    """

    def __init__(self, tasks: Sequence[str], dim: int, num_tokens: int = 6, gated: bool = False) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1; got {num_tokens}")
        self.num_tokens = int(num_tokens)
        self.gated = bool(gated)
        self.tokens = nn.ParameterDict()
        for t in tasks:
            p = nn.Parameter(torch.empty(num_tokens, dim))
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
            self.tokens[t] = p
        self.gate = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in tasks} if gated else {})

    def append(self, x: torch.Tensor, tasks: Sequence[str]) -> torch.Tensor:
        """(T*B, N, D) -> (T*B, N + num_tokens, D): each stream gets its task's tokens appended."""
        streams = _unfold(x, len(tasks), "TokenExpansion")
        extra = torch.stack([self.tokens[t] for t in tasks]).to(x.dtype)  # (T, n, D)
        extra = extra[:, None].expand(len(tasks), streams.shape[1], -1, -1)  # (T, B, n, D)
        return torch.cat([streams, extra], dim=2).reshape(x.shape[0], -1, x.shape[-1])

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """This layer's tokens of one task (and its gate when gated)."""
        return [self.tokens[task]] + ([self.gate[task]] if self.gated else [])

    def mix(self, plain: torch.Tensor, expanded: torch.Tensor, tasks: Sequence[str]) -> torch.Tensor:
        """Gated output of a folded batch: `plain + g_t * (expanded - plain)` per task stream."""
        if not self.gated:
            raise ValueError("mix is only defined for a gated TokenExpansion (gated=True)")
        gate = torch.stack([self.gate[t] for t in tasks]).to(plain.dtype)
        gate = gate.reshape(len(tasks), *([1] * plain.dim()))
        base = _unfold(plain, len(tasks), "TokenExpansion")
        delta = _unfold(expanded, len(tasks), "TokenExpansion") - base
        return torch.addcmul(base, delta, gate).reshape(plain.shape)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        """Remove the appended tokens' outputs after the block."""
        return x[:, : x.shape[1] - self.num_tokens]


class TaskSpecificLinear(nn.Module):
    """A shared `nn.Linear` turned into per-task copies (Recon-style split), initialised equal.

    Applied to a task-major folded batch with one batched matmul. The trunk sets
    `active_tasks` before running the blocks that contain it.
    """

    def __init__(self, linear: nn.Linear, tasks: Sequence[str]) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = nn.ParameterDict({t: nn.Parameter(linear.weight.detach().clone()) for t in tasks})
        self.bias = (
            None
            if linear.bias is None
            else nn.ParameterDict({t: nn.Parameter(linear.bias.detach().clone()) for t in tasks})
        )
        self.active_tasks: tuple[str, ...] = tuple(tasks)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The copy of one task."""
        return [self.weight[task]] + ([] if self.bias is None else [self.bias[task]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tasks = self.active_tasks
        streams = _unfold(x, len(tasks), "TaskSpecificLinear").reshape(len(tasks), -1, x.shape[-1])
        weight = torch.stack([self.weight[t] for t in tasks]).transpose(1, 2)  # (T, in, out)
        if self.bias is None:
            out = torch.bmm(streams, weight)
        else:
            bias = torch.stack([self.bias[t] for t in tasks])[:, None, :]
            out = torch.baddbmm(bias, streams, weight)
        return out.reshape(*x.shape[:-1], self.out_features)


class SplitLinearProxy:
    """Stands in a block for a split `nn.Linear` and calls the trunk's `TaskSpecificLinear`.

    A plain object (not an `nn.Module`), so the per-task weights are registered once, under the
    trunk (`trunk.split...`), and not a second time inside the encoder.
    """

    def __init__(self, target: TaskSpecificLinear, name: str) -> None:
        self.target = target
        self.name = name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x)

    def __repr__(self) -> str:
        return f"SplitLinearProxy({self.name!r}, tasks={list(self.target.weight.keys())})"
