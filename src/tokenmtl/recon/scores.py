"""Recon's statistic: per-layer S-conflict counts of task gradients, accumulated over a window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


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


def group_spans(layout: Sequence[tuple[str | None, int]]) -> tuple[list[str], list[tuple[int, int]]]:
    """(layer names, column spans) from one `(layer name or None, numel)` entry per matrix column block;
    consecutive entries of one layer (weight, bias) form one span; None entries are skipped."""
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
    return layers, spans


class ConflictScorer:
    """S-conflict scores of candidate layers over the first `window` observed steps."""

    def __init__(self, threshold: float, window: int) -> None:
        self.threshold, self.window = float(threshold), int(window)
        self.layers: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.scores = torch.zeros(0, dtype=torch.long)
        self.steps_scored = 0

    def bind(self, layout: Sequence[tuple[str | None, int]]) -> None:
        """Which gradient-matrix columns belong to which layer. A changed layout after scoring
        began (the layers were split) ends scoring."""
        layers, spans = group_spans(layout)
        if self.steps_scored == 0 or layers == self.layers:
            if layers != self.layers:
                self.scores = torch.zeros(len(layers), dtype=torch.long)
            self.layers, self.spans = layers, spans
        else:
            self.spans = []

    def observe(self, grads: Tensor) -> None:
        """Count one step's conflicts (no-op once the window is full or the layout is unbound)."""
        if self.spans and self.steps_scored < self.window:
            self.scores = self.scores + layer_conflict_counts(grads, self.spans, self.threshold).cpu()
            self.steps_scored += 1

    def top(self, k: int) -> list[str]:
        """The `k` layers with the most S-conflicts (ties: earlier layer first)."""
        if not self.layers:
            raise ValueError("recon has no candidate layers: bind() was not called or the model has none")
        order = sorted(range(len(self.layers)), key=lambda i: (-int(self.scores[i]), i))
        return [self.layers[i] for i in order[:k]]

    def as_dict(self) -> dict[str, int]:
        """S-conflict score of every candidate layer so far."""
        return {name: int(s) for name, s in zip(self.layers, self.scores)}

    def state(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "scores": self.scores.clone(), "steps_scored": self.steps_scored}

    def load(self, state: dict[str, Any]) -> None:
        self.layers = list(state["layers"])
        self.scores = state["scores"].clone()
        self.steps_scored = int(state["steps_scored"])
