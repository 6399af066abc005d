"""DWA: Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019).

``w_t = T * softmax_t(r_t / temperature)`` with ``r_t = Lbar_t(k-1) / Lbar_t(k-2)`` the ratio of
task t's mean training loss over the last two completed windows. The paper and LibMTL use epochs
as windows (and weight 1 during the first two epochs); we use windows of ``window`` iterations, so
that runs defined in iterations work: pass ``window=len(train_loader)`` to reproduce the
epoch-level rule exactly. (The Nash-MTL repository uses a *sliding* window of 25 iterations and
averages the weighted losses instead of summing them.)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import LossBalancer, check_losses


class DWA(LossBalancer):
    """Loss weights from the rate of decrease of each loss over the last two windows.

    State (saved in ``state_dict``): the running sum of the current window, the means of the last
    two completed windows (buffers) and the two counters (extra state, Python ints: no device
    sync). Weights are 1 until two windows are complete.
    """

    name: ClassVar[str] = "dwa"
    summary: ClassVar[str] = "dynamic weight average over windows of iterations (Liu 2019)"

    def __init__(self, num_tasks: int, *, temperature: float = 2.0, window: int = 25) -> None:
        super().__init__(num_tasks)
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"dwa window must be a positive integer, got {window!r}")
        self.temperature = temperature
        self.window = window
        self.register_buffer("window_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.window_count = 0
        self.completed = 0
        self.register_buffer("last_mean", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("previous_mean", torch.zeros(num_tasks, dtype=torch.float64))

    def current_weights(self) -> Tensor:
        """``T * softmax(r / temperature)`` once two windows are complete, else ones."""
        if self.completed < 2:
            return torch.ones(self.num_tasks, dtype=torch.float64, device=self.last_mean.device)
        prev = self.previous_mean
        ratio = torch.where(prev > 0, self.last_mean / torch.where(prev > 0, prev, 1.0), 1.0)
        return self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def weigh(self, losses: Tensor) -> Tensor:
        check_losses(losses, self.num_tasks)
        weights = self.current_weights().to(device=losses.device, dtype=losses.dtype)
        self.weights = weights
        self._record(losses.detach())
        return (weights * losses).sum()

    def _record(self, losses: Tensor) -> None:
        self.window_sum += losses.to(self.window_sum)
        self.window_count += 1
        if self.window_count == self.window:
            self.previous_mean.copy_(self.last_mean)
            self.last_mean.copy_(self.window_sum / self.window)
            self.window_sum.zero_()
            self.window_count = 0
            self.completed += 1

    def get_extra_state(self) -> dict[str, int]:
        return {"window_count": self.window_count, "completed": self.completed}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.window_count = int(state["window_count"])
        self.completed = int(state["completed"])
