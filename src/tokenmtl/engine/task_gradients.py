"""The T task gradients of a multi-task objective: one autograd call per task, or one batched call.

Row t is the vector-Jacobian product of ``outputs`` with ``grad_outputs[t]``; without
``grad_outputs`` it is the gradient of ``outputs[t]`` (``outputs`` is then the (T,) loss vector,
and the batched call uses the identity as grad outputs). Used by ``engine.grad_driver`` (gradients
of the T losses for the shared and task parameters) and ``dtme.analysis`` (gradients at the block
inputs, from T upstream gradients at the trunk output).

Modes: "loop" (T ``autograd.grad`` calls, the faster on CPU in
``benchmarks/balancing_overhead.py``), "batched" (one ``is_grads_batched`` call; raises when an op
of the graph has no batching rule) and "auto" (batched, falling back to the loop for good the first
time batching fails). Unused inputs get zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

MODES = ("loop", "batched", "auto")
#: The inputs of every row, or a function giving row t's inputs (the driver asks each task's
#: gradient only for the shared parameters and that task's own).
RowInputs = Sequence[Tensor] | Callable[[int], Sequence[Tensor]]


def _num_rows(outputs: Tensor, grad_outputs: Tensor | None) -> int:
    return outputs.shape[0] if grad_outputs is None else grad_outputs.shape[0]


def task_gradient_rows(
    outputs: Tensor,
    inputs: RowInputs,
    grad_outputs: Tensor | None = None,
    *,
    retain_graph: bool = False,
) -> Iterator[list[Tensor]]:
    """Yield, for t = 0..T-1, the gradients of row t for its inputs (one autograd call each).

    The graph is kept until the last row (and after it when ``retain_graph``), so that a caller
    can write each row where it belongs without stacking T copies.
    """
    num = _num_rows(outputs, grad_outputs)
    for t in range(num):
        wanted = list(inputs(t) if callable(inputs) else inputs)
        keep = retain_graph or t < num - 1
        if grad_outputs is None:
            grads = torch.autograd.grad(outputs[t], wanted, retain_graph=keep, allow_unused=True)
        else:
            grads = torch.autograd.grad(
                outputs, wanted, grad_outputs=grad_outputs[t], retain_graph=keep, allow_unused=True
            )
        yield [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wanted)]


def looped_task_gradients(
    outputs: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor | None = None, *, retain_graph: bool = False
) -> list[Tensor]:
    """(T, *x.shape) gradient for every input x, from T autograd calls."""
    rows = list(task_gradient_rows(outputs, inputs, grad_outputs, retain_graph=retain_graph))
    return [torch.stack([row[i] for row in rows]) for i in range(len(inputs))]


def batched_task_gradients(
    outputs: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor | None = None, *, retain_graph: bool = False
) -> list[Tensor]:
    """(T, *x.shape) gradient for every input x, from one ``is_grads_batched`` autograd call."""
    num = _num_rows(outputs, grad_outputs)
    if grad_outputs is None:
        grad_outputs = torch.eye(num, dtype=outputs.dtype, device=outputs.device)
    grads = torch.autograd.grad(
        outputs,
        list(inputs),
        grad_outputs=grad_outputs,
        retain_graph=retain_graph,
        allow_unused=True,
        is_grads_batched=True,
    )
    return [
        torch.zeros((num, *x.shape), dtype=x.dtype, device=x.device) if g is None else g for g, x in zip(grads, inputs)
    ]


class TaskGradients:
    """The T task gradients in a fixed mode ("loop", "batched" or "auto", see the module doc).

    In "auto" mode, batching is tried with the graph kept until it has worked once, so that the
    loop can still run when it fails; after a failure every later call loops.
    """

    def __init__(self, mode: str = "loop") -> None:
        if mode not in MODES:
            raise ValueError(f"grad_mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._batched_failed = False
        self._batched_ok = False

    @property
    def loops(self) -> bool:
        """True when the next call will use the loop (so callers may consume rows one by one)."""
        return self.mode == "loop" or (self.mode == "auto" and self._batched_failed)

    def __call__(
        self,
        outputs: Tensor,
        inputs: Sequence[Tensor],
        grad_outputs: Tensor | None = None,
        *,
        retain_graph: bool = False,
    ) -> list[Tensor]:
        """(T, *x.shape) gradient for every input x."""
        if self.loops:
            return looped_task_gradients(outputs, inputs, grad_outputs, retain_graph=retain_graph)
        if self.mode == "batched" or self._batched_ok:
            return batched_task_gradients(outputs, inputs, grad_outputs, retain_graph=retain_graph)
        try:  # first batched call keeps the graph, so that the loop can still run if it fails
            grads = batched_task_gradients(outputs, inputs, grad_outputs, retain_graph=True)
        except RuntimeError:  # an op without a batching rule
            self._batched_failed = True
            return looped_task_gradients(outputs, inputs, grad_outputs, retain_graph=retain_graph)
        self._batched_ok = True
        return grads
