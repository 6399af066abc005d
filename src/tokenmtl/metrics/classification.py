"""Sequence-level classification meter: accuracy and macro-F1 from a dataset-level confusion matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenmtl.metrics.dense import Meter

CLASS_IGNORE_INDEX = -100

__all__ = ["ClassificationMeter"]


class ClassificationMeter(Meter):
    """Accuracy and macro-F1 (both %) of (B, C) logits against (B,) class ids over a whole split.

    ``F1_c = 2 tp_c / (2 tp_c + fp_c + fn_c)``; ``macroF1`` averages F1_c over the classes present
    in the targets or the predictions (sklearn's ``f1_score(average="macro")`` without ``labels``),
    so a class absent from both does not count as 0. Targets equal to ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = CLASS_IGNORE_INDEX) -> None:
        if num_classes < 2:
            raise ValueError(f"ClassificationMeter: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        """Confusion counts: rows are target classes, columns predicted classes."""
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the batch's (target, argmax prediction) pairs, skipping ignored targets."""
        if pred.dim() != 2 or pred.shape[1] != self.num_classes:
            raise ValueError(
                f"ClassificationMeter: pred must be (B, {self.num_classes}) logits, got shape {tuple(pred.shape)}"
            )
        labels = target.reshape(-1).long().to(pred.device)
        if labels.shape[0] != pred.shape[0]:
            raise ValueError(
                f"ClassificationMeter: pred {tuple(pred.shape)} and target "
                f"{tuple(target.shape)} must have the same batch size"
            )
        valid = labels != self.ignore_index
        labels, guess = labels[valid], pred.argmax(dim=1)[valid]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"ClassificationMeter: labels must be in [0, {self.num_classes}) or "
                f"{self.ignore_index} (ignore), got {sorted(set(labels.tolist()))[:5]}"
            )
        n = self.num_classes
        counts = torch.bincount(labels * n + guess, minlength=n * n).view(n, n)
        self._add("confusion", counts)

    def per_class_f1(self) -> list[float | None]:
        """F1 of every class; None for a class absent from both targets and predictions."""
        confusion = self._state["confusion"].double()
        tp = confusion.diag()
        fp = confusion.sum(dim=0) - tp
        fn = confusion.sum(dim=1) - tp
        denominator = 2 * tp + fp + fn
        return [None if float(d) == 0 else float(2 * t / d) for t, d in zip(tp, denominator)]

    def compute(self) -> dict[str, float]:
        """``macroF1`` and ``accuracy`` in %, over every labelled example seen (0 before any)."""
        confusion = self._state["confusion"]
        total = int(confusion.sum())
        present = [f for f in self.per_class_f1() if f is not None]
        return {
            "macroF1": 100.0 * sum(present) / len(present) if present else 0.0,
            "accuracy": 100.0 * int(confusion.diag().sum()) / total if total else 0.0,
        }
