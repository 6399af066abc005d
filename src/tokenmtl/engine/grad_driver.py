"""Back-propagate a multi-task loss through a balancer: one pass, or the T task gradients.

``GradDriver(model, balancer).backward(losses)`` fills ``.grad`` of every trainable parameter:

- loss methods (``balancer.kind == "loss"``: ew, uw, dwa, famo): one backward pass of
  ``balancer.weigh(losses)``; FAMO's ``max_norm`` clips the shared gradient afterwards.
- gradient methods: the T gradients of the losses with respect to the shared and the task
  parameters, in one batched autograd call (``torch.autograd.grad(..., is_grads_batched=True)``
  with one-hot grad outputs) or a loop of T calls. A loss transform (DB-MTL's log, IMTL-L's
  scales) is applied by the chain rule, ``grad l_t = (dl_t/dL_t) grad L_t`` at the (global) loss
  values, so it must be elementwise per task. The shared parameters get
  ``balancer.aggregate(G, losses)``, the parameters of task t get task t's gradient (times
  ``balancer.head_weights[t]`` when the method weighs the heads), the balancer's own parameters
  the gradient of ``sum_t l_t``.

Gradients are *accumulated* into ``.grad``, as ``Tensor.backward`` does: zero them before.

Distributed: with ``all_reduce`` (a callable returning the **mean** of a tensor over processes),
the task gradients, task-parameter gradients and losses of a gradient method travel in one flat
tensor and are averaged before ``aggregate``, so every process computes the update of the global
batch. The model is not wrapped in DDP: for loss methods the driver averages all gradients in one
flat all-reduce after the backward pass (before FAMO's clipping), and the loss *values* the
balancer sees are replaced by their global means (``L + (mean(L) - L).detach()``), so that every
process computes the same weights (DWA, FAMO, UW's log-variance gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tokenmtl.balancing.base import Balancer, GradientBalancer, LossBalancer

GRAD_MODES = ("auto", "batched", "loop")
AllReduce = Callable[[Tensor], Tensor]


def _unique(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _accumulate(param: Tensor, grad: Tensor) -> None:
    grad = grad.detach().reshape(param.shape).to(param.dtype)
    if param.grad is None:
        param.grad = grad.clone()  # own storage: never a view into the (T, P) matrix
    else:
        param.grad.add_(grad)


class GradDriver:
    """Computes what ``balancer`` needs from the task losses of ``model`` and sets the grads.

    ``model`` follows the MultiTaskModel contract: ``tasks``, ``shared_parameters()``,
    ``task_parameters(task)``. ``grad_mode``: "loop" (default: T ``autograd.grad`` calls, the
    faster on CPU in ``benchmarks/balancing_overhead.py``), "batched" (one vmapped call; raises if
    autograd cannot batch the graph) or "auto" (batched, falling back to the loop for good the
    first time batching fails).
    """

    def __init__(
        self,
        model: nn.Module,
        balancer: Balancer,
        *,
        grad_mode: str = "loop",
        all_reduce: AllReduce | None = None,
    ) -> None:
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        if balancer.kind not in ("loss", "gradient"):
            raise ValueError(f"balancer.kind must be 'loss' or 'gradient', got {balancer.kind!r}")
        self.model = model
        self.balancer = balancer
        self.tasks: list[str] = list(model.tasks)
        if balancer.num_tasks != len(self.tasks):
            raise ValueError(
                f"balancer was made for {balancer.num_tasks} tasks but the model has "
                f"{len(self.tasks)}: {self.tasks}"
            )
        self.grad_mode = grad_mode
        self.all_reduce = all_reduce
        self.shared = _unique(list(model.shared_parameters()))
        self.task_params = {t: _unique(list(model.task_parameters(t))) for t in self.tasks}
        self.balancer_params = _unique(list(balancer.parameters()))
        self._check_partition()
        first = next(iter(self.shared), None)
        if first is not None:
            balancer.to(first.device)
        self._batched_failed = False
        self._batched_ok = False

    # ------------------------------------------------------------------ public API
    @property
    def needs_reevaluation(self) -> bool:
        """True when the trainer must re-evaluate the batch after the step (FAMO)."""
        return self.balancer.needs_reevaluation

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        """Pass the re-evaluated losses of the same batch to the balancer (FAMO)."""
        stack = self._stack(losses).detach()
        if self.all_reduce is not None:
            stack = self.all_reduce(stack)
        self.balancer.after_step(stack)

    def backward(self, losses: Mapping[str, Tensor]) -> dict[str, Any]:
        """Set ``.grad`` of every trainable parameter from the task losses; returns info.

        Info values are detached tensors (no device synchronisation): ``"weights"`` (the
        balancer's per-task coefficients, when it has them) and ``"mode"``.
        """
        stack = self._stack(losses)
        if self.balancer.kind == "loss":
            return self._loss_backward(stack)
        assert isinstance(self.balancer, GradientBalancer)
        shortcut = self.balancer.shortcut_weights()
        if shortcut is not None and self.balancer.weight_heads:
            return self._shortcut_backward(stack, shortcut)
        return self._gradient_backward(stack)

    def task_gradients(self, losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor]:
        """(T, *shape) gradient of each loss for every input (zeros where unused)."""
        if self.grad_mode == "loop" or (self.grad_mode == "auto" and self._batched_failed):
            return self._looped(losses, inputs, retain_graph)
        if self.grad_mode == "batched":
            return self._batched(losses, inputs, retain_graph)
        if self._batched_ok:
            return self._batched(losses, inputs, retain_graph)
        try:  # first batched call keeps the graph, so that the loop can still run if it fails
            grads = self._batched(losses, inputs, True)
        except RuntimeError:
            self._batched_failed = True
            return self._looped(losses, inputs, retain_graph)
        self._batched_ok = True
        return grads

    # ------------------------------------------------------------------ internals
    def _check_partition(self) -> None:
        owner: dict[int, str] = {id(p): "shared" for p in self.shared}
        for task, params in self.task_params.items():
            for p in params:
                if id(p) in owner:
                    raise ValueError(
                        f"a parameter of shape {tuple(p.shape)} is listed for task {task!r} and "
                        f"for {owner[id(p)]!r}: shared and task parameters must be disjoint"
                    )
                owner[id(p)] = task
        if self.balancer.kind != "gradient":
            return
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in owner]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(
                f"{len(missing)} trainable parameter(s) are neither shared nor task-specific "
                f"(they would get no gradient): {shown}"
            )

    def _stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        if set(losses) != set(self.tasks):
            raise ValueError(
                f"losses must have one entry per task {self.tasks}, got {sorted(losses)}"
            )
        values = [losses[t] for t in self.tasks]
        for task, value in zip(self.tasks, values):
            if value.ndim != 0:
                raise ValueError(f"loss of task {task!r} must be a scalar, got shape {tuple(value.shape)}")
        return torch.stack(values)

    def _loss_backward(self, stack: Tensor) -> dict[str, Any]:
        assert isinstance(self.balancer, LossBalancer)
        if self.all_reduce is not None:
            local = stack.detach()
            stack = stack + (self.all_reduce(local.clone()) - local)
        total = self.balancer.weigh(stack)
        total.backward()
        if self.all_reduce is not None:  # without DDP: average every gradient before any clipping
            self._reduce_grads(list(self.shared) + [p for t in self.tasks for p in self.task_params[t]]
                               + self.balancer_params)
        if self.balancer.max_norm > 0 and self.shared:
            torch.nn.utils.clip_grad_norm_(self.shared, self.balancer.max_norm)
        return self._info("single", total)

    def _reduce_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average the .grad of `params` over processes in one flat all-reduce."""
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return
        flat = self.all_reduce(torch.cat([p.grad.reshape(-1) for p in with_grad]))
        offset = 0
        for p in with_grad:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def _inputs(self) -> tuple[list[Tensor], list[tuple[int, int]]]:
        """The shared then the task parameters, and the [start, stop) of each task's."""
        inputs: list[Tensor] = list(self.shared)
        spans = []
        for task in self.tasks:
            start = len(inputs)
            inputs.extend(self.task_params[task])
            spans.append((start, len(inputs)))
        return inputs, spans

    def _task_matrix(
        self, stack: Tensor, inputs: list[Tensor], spans: list[tuple[int, int]]
    ) -> tuple[Tensor | None, list[Tensor | None]]:
        """The (T, P) shared-parameter gradients and each task's own flat parameter gradient."""
        num, num_shared = len(self.tasks), len(self.shared)
        looped = self.grad_mode == "loop" or (self.grad_mode == "auto" and self._batched_failed)
        if not looped:
            grads = self.task_gradients(stack, inputs)
            matrix = torch.cat([g.reshape(num, -1) for g in grads[:num_shared]], dim=1) if num_shared else None
            own = [torch.cat([grads[i][t].reshape(-1) for i in range(*spans[t])]) if spans[t][1] > spans[t][0]
                   else None for t in range(num)]
            return matrix, own
        # loop: write each task's row in place (no (T, *shape) stacks, one (T, P) matrix)
        sizes = [p.numel() for p in self.shared]
        matrix = self.shared[0].new_empty((num, sum(sizes))) if num_shared else None
        own: list[Tensor | None] = []
        for t in range(num):
            wanted = self.shared + inputs[spans[t][0] : spans[t][1]]
            grads = torch.autograd.grad(stack[t], wanted, retain_graph=t < num - 1, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, wanted)]
            if matrix is not None:
                torch.cat([g.reshape(-1) for g in grads[:num_shared]], out=matrix[t])
            rest = grads[num_shared:]
            own.append(torch.cat([g.reshape(-1) for g in rest]) if rest else None)
        return matrix, own

    def _transform_chain(self, values: Tensor) -> tuple[Tensor | None, list[Tensor]]:
        """``d l_t / d L_t`` at the (global) loss values, and the balancer parameters' gradients
        of ``sum_t l_t``; (None, []) when the method does not transform its losses."""
        balancer = self.balancer
        assert isinstance(balancer, GradientBalancer)
        if type(balancer).task_loss_transform is GradientBalancer.task_loss_transform:
            return None, []
        with torch.enable_grad():
            leaf = values.detach().requires_grad_(True)
            total = balancer.task_loss_transform(leaf).sum()
            out = torch.autograd.grad(total, [leaf, *self.balancer_params], allow_unused=True)
        extra = [torch.zeros_like(p) if g is None else g for g, p in zip(out[1:], self.balancer_params)]
        return out[0], extra

    def _gradient_backward(self, stack: Tensor) -> dict[str, Any]:
        """T gradients of the raw losses, (all-reduced,) chained through the transform, combined."""
        balancer = self.balancer
        assert isinstance(balancer, GradientBalancer)
        inputs, spans = self._inputs()
        matrix, own = self._task_matrix(stack, inputs, spans)
        values = stack.detach()
        if self.all_reduce is not None:
            matrix, own, values = self._reduce(matrix, own, values)
        chain, extra = self._transform_chain(values)
        if chain is not None:  # grad l_t = (d l_t / d L_t) grad L_t: l_t depends on L_t only
            if matrix is not None:
                matrix.mul_(chain.to(matrix)[:, None])
            own = [None if g is None else g * chain[t].to(g) for t, g in enumerate(own)]
        if matrix is not None:
            self._write(self.shared, balancer.aggregate(matrix, values))
        head_weights = balancer.head_weights if balancer.weight_heads else None
        for t, g in enumerate(own):
            if g is not None:
                if head_weights is not None:
                    g = g * head_weights[t].to(g)
                self._write(inputs[spans[t][0] : spans[t][1]], g)
        for p, g in zip(self.balancer_params, extra):
            _accumulate(p, g)
        return self._info("gradients", values.sum())

    def _shortcut_backward(self, stack: Tensor, weights: Tensor) -> dict[str, Any]:
        balancer = self.balancer
        assert isinstance(balancer, GradientBalancer)
        transformed = balancer.task_loss_transform(stack)
        total = (weights.to(transformed).detach() * transformed).sum()
        params = list(self.shared) + [p for t in self.tasks for p in self.task_params[t]]
        grads = torch.autograd.grad(total, params + self.balancer_params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params + self.balancer_params)]
        flat = torch.cat([g.reshape(-1) for g in grads]) if grads else stack.new_zeros(0)
        if self.all_reduce is not None:
            flat = self.all_reduce(flat)
        num_shared = sum(p.numel() for p in self.shared)
        update = balancer.finish_shortcut(flat[:num_shared])
        self._write(self.shared, update)
        self._write(params[len(self.shared) :] + self.balancer_params, flat[num_shared:])
        return self._info("shortcut", total)

    def _reduce(
        self, matrix: Tensor | None, own: list[Tensor | None], values: Tensor
    ) -> tuple[Tensor | None, list[Tensor | None], Tensor]:
        """All-reduce (mean) the task gradients, the task-parameter gradients and the losses in
        one flat tensor."""
        assert self.all_reduce is not None
        parts = ([matrix.reshape(-1)] if matrix is not None else []) + [g for g in own if g is not None]
        dtype = parts[0].dtype if parts else values.dtype
        parts.append(values.to(dtype))
        flat = self.all_reduce(torch.cat(parts))
        pieces = list(torch.split(flat, [p.numel() for p in parts]))
        if matrix is not None:
            matrix = pieces.pop(0).view_as(matrix)
        own = [None if g is None else pieces.pop(0) for g in own]
        return matrix, own, pieces.pop(0).to(values.dtype)

    @staticmethod
    def _write(params: Sequence[Tensor], flat: Tensor) -> None:
        offset = 0
        for p in params:
            n = p.numel()
            _accumulate(p, flat[offset : offset + n])
            offset += n

    def _batched(self, losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> list[Tensor]:
        num = losses.shape[0]
        eye = torch.eye(num, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses, list(inputs), grad_outputs=eye, retain_graph=retain_graph,
            allow_unused=True, is_grads_batched=True,
        )
        return [torch.zeros((num, *p.shape), dtype=p.dtype, device=p.device) if g is None else g
                for g, p in zip(grads, inputs)]

    def _looped(self, losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> list[Tensor]:
        num = losses.shape[0]
        rows: list[list[Tensor | None]] = []
        for t in range(num):
            keep = retain_graph or t < num - 1
            rows.append(list(torch.autograd.grad(losses[t], list(inputs), retain_graph=keep, allow_unused=True)))
        out = []
        for i, p in enumerate(inputs):
            per_task = [r[i] if r[i] is not None else torch.zeros_like(p) for r in rows]
            out.append(torch.stack(per_task))
        return out

    def _info(self, mode: str, total: Tensor) -> dict[str, Any]:
        info: dict[str, Any] = {"mode": mode, "total": total.detach()}
        weights = self.balancer.weights
        if weights is not None:
            info["weights"] = weights.detach()
        return info
