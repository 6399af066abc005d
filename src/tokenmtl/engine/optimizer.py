"""The run's optimizer: parameter groups built once, then grown (never rebuilt) by model edits,
so the optimizer state (Adam moments) of existing parameters survives an edit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def build_optimizer(model: Any, tasks: list[str], balancer: Any, train: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Param groups: shared, task-specific (x task_lr_mult), the balancer's own (no weight decay)."""
    lr, wd = float(train["lr"]), float(train["weight_decay"])
    task_ids = {id(p) for t in tasks for p in model.task_parameters(t)}
    groups: dict[str, list[nn.Parameter]] = {"shared": [], "task": []}
    for p in model.parameters():
        if p.requires_grad:
            groups["task" if id(p) in task_ids else "shared"].append(p)
    mults = {"shared": 1.0, "task": float(train["task_lr_mult"])}
    param_groups = [
        {"params": ps, "base_lr": lr * mults[k], "lr": lr * mults[k], "weight_decay": wd, "name": k}
        for k, ps in groups.items()
        if ps
    ]
    balancer_params = list(balancer.parameters()) if isinstance(balancer, nn.Module) else []
    if balancer_params:
        param_groups.append(
            {"params": balancer_params, "base_lr": lr, "lr": lr, "weight_decay": 0.0, "name": "balancer"}
        )
    kind = train["optimizer"]
    extra = {"momentum": 0.9} if kind == "sgd" else {}
    return OPTIMIZERS[kind](param_groups, lr=lr, **extra)


def add_group(
    optimizer: torch.optim.Optimizer,
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float,
    current_factor: float = 1.0,
) -> None:
    """A new parameter group (fresh state) for parameters an edit added; existing groups keep theirs."""
    params = [p for p in params if p.requires_grad]
    if params:
        optimizer.add_param_group(
            {"params": params, "base_lr": lr, "lr": lr * current_factor, "weight_decay": weight_decay, "name": name}
        )


def remove_parameters(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> None:
    """Drop parameters an edit replaced (and their state) from every group; empty groups go too."""
    gone = {id(p) for p in params}
    if not gone:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in gone:
                optimizer.state.pop(p, None)
        group["params"] = [p for p in group["params"] if id(p) not in gone]
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
