"""Tiny multi-task models for driver and precision tests (the MultiTaskModel contract, no timm)."""

import torch
from torch import Tensor, nn

TASKS = ("seg", "depth", "edge")


class TinyMultiTask(nn.Module):
    """Shared Linear encoder + one Linear head per task (the MultiTaskModel contract)."""

    def __init__(self, tasks: tuple[str, ...] = TASKS, seed: int = 0, hidden: int = 10) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tasks = list(tasks)
        self.encoder = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 2) for t in tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.encoder(x)
        return {t: self.heads[t](h) for t in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())
