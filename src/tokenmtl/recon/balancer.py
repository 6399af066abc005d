"""Recon's gradient observer: a balancing method that scores layers while a base method updates.

Recon (Shi et al., ICLR 2023), as the authors' code does it: per layer (a module's weight and
bias together) and per step, count the task pairs whose gradient cosine similarity is below S
(S = -0.02 on NYUv2). Updates meanwhile come from a base method (`base`, EW by default; any
gradient method, e.g. CAGrad, as in the paper's Recon+CAGrad). The branching itself is the
model edit `tokenmtl.recon.edit.ReconEdit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from tokenmtl.balancing.base import GradientBalancer, check_losses, check_matrix
from tokenmtl.recon.scores import ConflictScorer


class Recon(GradientBalancer):
    """Scores layers by S-conflicts of the task gradients; `update = base.aggregate(G)` throughout.

    `bind(layout)` takes one `(layer name or None, numel)` entry per shared parameter, in the order
    of the gradient matrix's columns (None: not a candidate); `layers_to_split()` names the top-k.
    """

    name: ClassVar[str] = "recon"
    summary: ClassVar[str] = (
        "Recon: count per-layer task-gradient conflicts (cos < S) over a window, "
        "then make the top-k shared layers task-specific"
    )

    def __init__(
        self,
        num_tasks: int,
        *,
        base: str = "ew",
        base_options: dict[str, Any] | None = None,
        S: float = -0.02,
        window: int = 100,
        top_k: int = 6,
    ) -> None:
        super().__init__(num_tasks)
        from tokenmtl.balancing import create

        if base == "recon":
            raise ValueError("recon cannot be its own base method")
        self.base_method = create(base, num_tasks, **(base_options or {}))
        if self.base_method.kind != "gradient" and base != "ew":
            raise ValueError(
                f"recon needs task gradients; its base method must be ew or a gradient method, "
                f"got {base!r} (a loss-weighting method)"
            )
        if window < 1 or top_k < 1:
            raise ValueError(f"recon needs window >= 1 and top_k >= 1, got window={window}, top_k={top_k}")
        self.base, self.S, self.window, self.top_k = base, float(S), int(window), int(top_k)
        self.weight_heads = bool(getattr(self.base_method, "weight_heads", False))
        self.scorer = ConflictScorer(self.S, self.window)

    # scorer views kept as attributes of the method for its users
    layers = property(lambda self: self.scorer.layers)
    spans = property(lambda self: self.scorer.spans)
    steps_scored = property(lambda self: self.scorer.steps_scored)

    def task_loss_transform(self, losses: Tensor) -> Tensor:
        if self.base_method.kind == "gradient":
            return self.base_method.task_loss_transform(losses)
        return losses

    def bind(self, layout: Sequence[tuple[str | None, int]]) -> None:
        """Tell Recon which columns of the gradient matrix belong to which candidate layer."""
        self.scorer.bind(layout)

    def _aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        self.scorer.observe(grads)
        if self.base_method.kind == "gradient":
            update = self.base_method.aggregate(grads, losses)
            self.weights = self.base_method.weights
            self.head_weights = getattr(self.base_method, "head_weights", None)
            return update
        self.weights = torch.ones(self.num_tasks)
        return grads.sum(dim=0)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        check_matrix(grads, self.num_tasks)
        check_losses(losses, self.num_tasks)
        return self._aggregate(grads, losses.detach())

    def layers_to_split(self) -> list[str]:
        """The `top_k` candidate layers with the most S-conflicts (ties: earlier layer first)."""
        return self.scorer.top(self.top_k)

    def conflict_scores(self) -> dict[str, int]:
        """S-conflict score of every candidate layer so far."""
        return self.scorer.as_dict()

    def get_extra_state(self) -> dict[str, Any]:
        return self.scorer.state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.scorer.load(state)
