"""Mixed precision for training (``train.precision``: fp32, bf16 or fp16).

``Precision.create(name, device)`` gives the autocast context for the forward pass and losses,
and for fp16 a ``torch.amp.GradScaler``, which ``engine.grad_driver.GradDriver`` uses to scale the
losses and unscale the task gradients before any balancing method sees them. The optimiser step
then goes through :meth:`Precision.step` (unscale, clip, step, update the scale).

bf16 keeps float32's exponent range, so it needs no loss scaling; fp16 does, and is offered on
CUDA only (CPU autocast is a bfloat16 feature).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """The precision of one run: ``name``, the autocast dtype and, for fp16, the grad scaler."""

    name: str
    device_type: str
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, name: str, device: torch.device | str) -> Precision:
        """The precision called ``name`` ("fp32", "bf16" or "fp16") on ``device``."""
        if name not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        device = torch.device(device)
        if name == "fp16" and device.type != "cuda":
            raise ValueError(
                f"train.precision=fp16 needs a CUDA device (loss scaling with a GradScaler); "
                f"this run's device is {device.type!r}: use bf16 or fp32"
            )
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision=bf16 is not supported by this GPU; use fp16 or fp32")
        scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        return cls(name, device.type, PRECISIONS[name], scaler)

    @property
    def enabled(self) -> bool:
        """False for fp32: no autocast, no scaler."""
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context for the forward pass and the losses (a no-op for fp32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(
        self, optimizer: torch.optim.Optimizer, clip_params: Iterable[nn.Parameter] = (), max_norm: float = 0.0
    ) -> bool:
        """Clip the gradients of ``clip_params`` to ``max_norm`` (0: no clipping), then step.

        With a scaler the gradients are unscaled first, the step is skipped when they are
        non-finite, and the scale is updated. Returns False when the step was skipped (the scale
        went down; only a scaler skips).
        """
        params = [p for p in clip_params if p.grad is not None]
        if self.scaler is None:
            if max_norm > 0 and params:
                torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            return True
        if max_norm > 0 and params:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (scale, growth tracker) for checkpoints; {} without a scaler."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (ignored when empty or without a scaler)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
