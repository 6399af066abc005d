"""Meter for one number per example (sequence-level regression): MAE and RMSE, NaN = missing."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokenmtl.metrics.dense import Meter

__all__ = ["ScalarRegressionMeter"]


class ScalarRegressionMeter(Meter):
    """MAE and RMSE of (B,) or (B, 1) predictions against (B,) targets, over a whole split.

    Targets are often standardised for training; ``scale`` (the standard deviation used) turns the
    errors back into the original units: ``mae = scale * sum|p - g| / n``, ``rmse`` likewise.
    ``mae_standardised`` is the unscaled one. NaN targets are missing and skipped.
    """

    def __init__(self, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"ScalarRegressionMeter: scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        return {
            "abs_err": torch.zeros((), dtype=torch.float64),
            "sq_err": torch.zeros((), dtype=torch.float64),
            "n_valid": torch.zeros((), dtype=torch.int64),
        }

    @staticmethod
    def _as_vector(values: Tensor, what: str) -> Tensor:
        if values.dim() == 2 and values.shape[1] == 1:
            return values[:, 0]
        if values.dim() != 1:
            raise ValueError(f"ScalarRegressionMeter: {what} must be (B,) or (B, 1), got shape {tuple(values.shape)}")
        return values

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add absolute and squared error sums over the examples with a (non-NaN) target."""
        values = self._as_vector(pred, "pred").double()
        goal = self._as_vector(target, "target").double().to(values.device)
        if goal.shape != values.shape:
            raise ValueError(
                f"ScalarRegressionMeter: pred {tuple(pred.shape)} and target "
                f"{tuple(target.shape)} must have the same batch size"
            )
        valid = ~torch.isnan(goal)
        err = values[valid] - goal[valid]
        self._add("abs_err", err.abs().sum())
        self._add("sq_err", err.square().sum())
        self._add("n_valid", valid.sum())

    def compute(self) -> dict[str, float]:
        """``mae`` (primary) and ``rmse`` in original units, ``mae_standardised``; 0 before any."""
        n = max(int(self._state["n_valid"]), 1)
        mae = float(self._state["abs_err"]) / n
        return {
            "mae": self.scale * mae,
            "rmse": self.scale * math.sqrt(float(self._state["sq_err"]) / n),
            "mae_standardised": mae,
        }
