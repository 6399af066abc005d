"""Recon (Shi et al., ICLR 2023): find the shared layers where task gradients conflict most and
turn them into task-specific copies.

As the authors' code does it: per layer (a module's weight and bias together) and per step, count
the task pairs whose gradient cosine similarity is below S (S-conflict score, S = -0.02 on NYUv2);
after a scoring window, the `top_k` layers with the highest scores become task-specific. Updates
meanwhile come from a base method (`base`, EW by default; any gradient method, e.g. CAGrad, as in
the paper's Recon+CAGrad).

Where we differ from the paper: the paper trains once to score and then **retrains from scratch**
with the branched layers; tokenmtl branches the layers in the same run at the end of the window
(`window` iterations, or at the DTME expansion step when DTME is on) and keeps training, so Recon
costs one run like every other method. Candidate layers are the `nn.Linear` modules inside the
transformer blocks (qkv, proj, fc1, fc2), the layers `dtme.expand`'s `split` can branch.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from .base import GradientBalancer, check_losses, check_matrix


def layer_conflict_counts(grads: Tensor, spans: Sequence[tuple[int, int]], threshold: float) -> Tensor:
    """For each column span (a layer), the number of task pairs i<j with cos(g_i, g_j) < threshold.

    A pair where either gradient is zero on that layer has no direction and is not counted.
    """
    num = grads.shape[0]
    upper = torch.triu(torch.ones(num, num, dtype=torch.bool, device=grads.device), diagonal=1)
    counts = []
    for start, stop in spans:
        block = grads[:, start:stop].double()
        gram = block @ block.T
        norms = gram.diagonal().clamp_min(0).sqrt()
        denom = norms[:, None] * norms[None, :]
        valid = (denom > 0) & upper
        cos = gram / torch.where(valid, denom, torch.ones_like(denom))
        counts.append(((cos < threshold) & valid).sum())
    return torch.stack(counts) if counts else grads.new_zeros(0, dtype=torch.long)


class Recon(GradientBalancer):
    """Scores layers by S-conflicts of the task gradients, then names the top-k to branch.

    The trainer calls `bind(layout)` with one `(layer name or None, numel)` entry per shared
    parameter, in the order of the gradient matrix's columns (None: not a candidate), and asks
    `layers_to_split()` when the window ends. `update = base.aggregate(G)` throughout.
    """

    name: ClassVar[str] = "recon"
    summary: ClassVar[str] = ("Recon: count per-layer task-gradient conflicts (cos < S) over a window, "
                              "then make the top-k shared layers task-specific")

    def __init__(self, num_tasks: int, *, base: str = "ew", base_options: dict[str, Any] | None = None,
                 S: float = -0.02, window: int = 100, top_k: int = 6) -> None:
        super().__init__(num_tasks)
        from tokenmtl.balancing import create

        if base == "recon":
            raise ValueError("recon cannot be its own base method")
        self.base_method = create(base, num_tasks, **(base_options or {}))
        if self.base_method.kind != "gradient" and base != "ew":
            raise ValueError(f"recon needs task gradients; its base method must be ew or a gradient method, "
                             f"got {base!r} (a loss-weighting method)")
        if window < 1 or top_k < 1:
            raise ValueError(f"recon needs window >= 1 and top_k >= 1, got window={window}, top_k={top_k}")
        self.base, self.S, self.window, self.top_k = base, float(S), int(window), int(top_k)
        self.weight_heads = bool(getattr(self.base_method, "weight_heads", False))
        self.layers: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.scores = torch.zeros(0, dtype=torch.long)
        self.steps_scored = 0

    def task_loss_transform(self, losses: Tensor) -> Tensor:
        if self.base_method.kind == "gradient":
            return self.base_method.task_loss_transform(losses)
        return losses

    def bind(self, layout: Sequence[tuple[str | None, int]]) -> None:
        """Tell Recon which columns of the gradient matrix belong to which candidate layer."""
        layers: list[str] = []
        spans: list[tuple[int, int]] = []
        offset = 0
        for name, numel in layout:
            if name is not None:
                if layers and layers[-1] == name and spans[-1][1] == offset:
                    spans[-1] = (spans[-1][0], offset + numel)
                else:
                    layers.append(name)
                    spans.append((offset, offset + numel))
            offset += numel
        if self.steps_scored == 0 or layers == self.layers:
            if layers != self.layers:
                self.scores = torch.zeros(len(layers), dtype=torch.long)
            self.layers, self.spans = layers, spans
        else:  # after the split the layout changes; scoring is over
            self.spans = []

    def _aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        if self.spans and self.steps_scored < self.window:
            self.scores = self.scores + layer_conflict_counts(grads, self.spans, self.S).cpu()
            self.steps_scored += 1
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
        if not self.layers:
            raise ValueError("recon has no candidate layers: bind() was not called or the model has none")
        order = sorted(range(len(self.layers)), key=lambda i: (-int(self.scores[i]), i))
        return [self.layers[i] for i in order[: self.top_k]]

    def conflict_scores(self) -> dict[str, int]:
        """S-conflict score of every candidate layer so far."""
        return {name: int(s) for name, s in zip(self.layers, self.scores)}

    def get_extra_state(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "scores": self.scores.clone(), "steps_scored": self.steps_scored}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.layers = list(state["layers"])
        self.scores = state["scores"].clone()
        self.steps_scored = int(state["steps_scored"])
