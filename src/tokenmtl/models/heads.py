"""Task heads: the DTME paper's baseline decoder for dense tasks, a pooled head for sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseHead(nn.Module):
    """One 3x3 Conv-BN-ReLU and a 1x1 conv on the patch-token map, upsampled to the input size.

    This is the per-task decoder of the paper's Baseline (MT) and Baseline (ST) (App. B).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None):
        super().__init__()
        hidden = hidden_channels or in_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.predict = nn.Conv2d(hidden, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor, output_size: tuple[int, int] | None) -> torch.Tensor:
        x = self.predict(self.conv(features))
        if output_size is not None and tuple(x.shape[-2:]) != tuple(output_size):
            x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
        return x


class PooledHead(nn.Module):
    """A linear layer on sequence-level features (B, D): (B, C) logits for text classification.

    With `squeeze=True` and one output the prediction is (B,), the shape of a scalar regression
    target batch, so a loss never broadcasts (B, 1) against (B,) into (B, B).
    """

    def __init__(self, in_features: int, out_features: int, squeeze: bool = False):
        super().__init__()
        if squeeze and out_features != 1:
            raise ValueError(f"PooledHead: squeeze needs out_features == 1, got {out_features}")
        self.linear = nn.Linear(in_features, out_features)
        self.squeeze = squeeze

    def forward(self, features: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        out = self.linear(features)
        return out.squeeze(-1) if self.squeeze else out
