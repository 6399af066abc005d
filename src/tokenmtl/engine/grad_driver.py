"""Back-propagate a multi-task loss through a balancer: one pass, or the T task gradients.

``GradDriver(model, balancer).backward(losses)`` fills ``.grad`` of every trainable parameter and
returns a :class:`BackwardResult` (mode, total loss, the balancer's task weights):

- loss methods (``balancer.kind == "loss"``: ew, uw, dwa, famo): one backward pass of
  ``balancer.weigh(losses)``; FAMO's ``max_norm`` clips the shared gradient afterwards.
- gradient methods: the T gradients of the losses with respect to the shared and the task
  parameters (``engine.task_gradients``: a loop of T autograd calls, or one batched call). A loss
  transform (DB-MTL's log, IMTL-L's scales) is applied by the chain rule,
  ``grad l_t = (dl_t/dL_t) grad L_t`` at the (global) loss values, so it must be elementwise per
  task. The shared parameters get ``balancer.balance(G, losses).update``, the parameters of task t
  get task t's gradient (times the result's ``head_weights[t]`` when the method weighs the
  heads), the balancer's own parameters the gradient of ``sum_t l_t``.

Gradients are *accumulated* into ``.grad``, as ``Tensor.backward`` does: zero them before.

Precision: losses and task gradients in float16/bfloat16 (autocast, or a half-precision model)
are promoted to float32 before any balancer sees them. With a ``grad_scaler`` (fp16,
``torch.amp.GradScaler``), the losses are scaled by S before the backward pass and the task
gradients divided by S again before aggregation (S is a power of two, so both are exact): every
method sees the true magnitudes. If any task gradient is then non-finite, aggregation and the
balancer's state update are skipped and the shared parameters get the (non-finite) sum of the
task gradients, so that ``scaler.step`` skips the step and ``scaler.update`` lowers S. Otherwise
``.grad`` receives S times the update, which ``scaler.step`` divides by S before the optimiser
step (``engine.precision.Precision.step``).

Distributed: with ``all_reduce`` (a callable returning the **mean** of a tensor over processes),
the task gradients, task-parameter gradients and losses of a gradient method travel in one flat
tensor and are averaged before ``balance``, so every process computes the update of the global
batch. The model is not wrapped in DDP: for loss methods the driver averages all gradients in one
flat all-reduce after the backward pass (before FAMO's clipping), and the loss *values* the
balancer sees are replaced by their global means (``L + (mean(L) - L).detach()``), so that every
process computes the same weights (DWA, FAMO, UW's log-variance gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tokenmtl.balancing.base import Balancer, BalanceResult, GradientBalancer, LossBalancer
from tokenmtl.engine.task_gradients import MODES, TaskGradients, task_gradient_rows

GRAD_MODES = MODES
AllReduce = Callable[[Tensor], Tensor]
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class BackwardResult:
    """What one ``GradDriver.backward`` did. Tensors are detached and stay on their device.

    ``mode``: "single" (one backward pass), "gradients" (T task gradients) or "shortcut" (Nash-MTL
    between weight updates). ``skipped``: the scaled task gradients were non-finite, so nothing
    was aggregated and the grad scaler will skip the step.
    """

    mode: str
    total: Tensor
    weights: Tensor | None
    tasks: tuple[str, ...]
    skipped: bool = False

    @property
    def task_weights(self) -> dict[str, float] | None:
        """``{task: weight}`` of this step (meaning documented per method), or None.

        Reading it synchronises with the device (``.tolist()``): do it when logging.
        """
        if self.weights is None:
            return None
        return dict(zip(self.tasks, self.weights.detach().double().cpu().tolist()))


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


def _at_least_fp32(tensor: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; other dtypes unchanged (no copy)."""
    return tensor.float() if tensor.dtype in _HALF else tensor


def _all_finite(tensors: Sequence[Tensor | None]) -> bool:
    present = [t for t in tensors if t is not None]
    if not present:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in present]).all())


class GradDriver:
    """Computes what ``balancer`` needs from the task losses of ``model`` and sets the grads.

    ``model`` follows the MultiTaskModel contract: ``tasks``, ``shared_parameters()``,
    ``task_parameters(task)``. ``grad_mode``: "loop" (default), "batched" or "auto"
    (``engine.task_gradients``). ``grad_scaler``: a ``torch.amp.GradScaler`` for fp16 training
    (then step with ``scaler.step(optimizer)``; see the module doc).
    """

    def __init__(
        self,
        model: nn.Module,
        balancer: Balancer,
        *,
        grad_mode: str = "loop",
        all_reduce: AllReduce | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if balancer.kind not in ("loss", "gradient"):
            raise ValueError(f"balancer.kind must be 'loss' or 'gradient', got {balancer.kind!r}")
        self.model = model
        self.balancer = balancer
        self.tasks: list[str] = list(model.tasks)
        if balancer.num_tasks != len(self.tasks):
            raise ValueError(
                f"balancer was made for {balancer.num_tasks} tasks but the model has {len(self.tasks)}: {self.tasks}"
            )
        self._gradients = TaskGradients(grad_mode)
        self.grad_mode = grad_mode
        self.all_reduce = all_reduce
        self.grad_scaler = grad_scaler if grad_scaler is not None and grad_scaler.is_enabled() else None
        self.shared = _unique(list(model.shared_parameters()))
        self.task_params = {t: _unique(list(model.task_parameters(t))) for t in self.tasks}
        self.balancer_params = _unique(list(balancer.parameters()))
        self._check_partition()
        first = next(iter(self.shared), None)
        if first is not None:
            balancer.to(first.device)

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

    def backward(self, losses: Mapping[str, Tensor]) -> BackwardResult:
        """Set ``.grad`` of every trainable parameter from the task losses (see the module doc)."""
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
        return self._gradients(losses, inputs, retain_graph=retain_graph)

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
            raise ValueError(f"losses must have one entry per task {self.tasks}, got {sorted(losses)}")
        values = [losses[t] for t in self.tasks]
        for task, value in zip(self.tasks, values):
            if value.ndim != 0:
                raise ValueError(f"loss of task {task!r} must be a scalar, got shape {tuple(value.shape)}")
        return torch.stack([_at_least_fp32(v) for v in values])

    def _scaled(self, loss: Tensor) -> Tensor:
        """``loss`` times the grad scaler's scale S (unchanged without a scaler)."""
        return loss if self.grad_scaler is None else self.grad_scaler.scale(loss)

    def _result(self, mode: str, total: Tensor, weights: Tensor | None, skipped: bool = False) -> BackwardResult:
        return BackwardResult(
            mode, total.detach(), None if weights is None else weights.detach(), tuple(self.tasks), skipped
        )

    def _loss_backward(self, stack: Tensor) -> BackwardResult:
        balancer = self.balancer
        assert isinstance(balancer, LossBalancer)
        if self.all_reduce is not None:
            local = stack.detach()
            stack = stack + (self.all_reduce(local.clone()) - local)
        total = balancer.weigh(stack)
        self._scaled(total).backward()
        if self.all_reduce is not None:  # without DDP: average every gradient before any clipping
            self._reduce_grads(
                list(self.shared) + [p for t in self.tasks for p in self.task_params[t]] + self.balancer_params
            )
        if balancer.max_norm > 0 and self.shared:
            self._clip_shared(balancer.max_norm)
        return self._result("single", total, balancer.weights)

    def _clip_shared(self, max_norm: float) -> None:
        """Clip the shared gradient to ``max_norm`` (on the true gradient when it is scaled)."""
        if self.grad_scaler is None:
            torch.nn.utils.clip_grad_norm_(self.shared, max_norm)
            return
        scale = self.grad_scaler.get_scale()  # a power of two: dividing and multiplying are exact
        grads = [p.grad for p in self.shared if p.grad is not None]
        torch._foreach_mul_(grads, 1.0 / scale)
        torch.nn.utils.clip_grad_norm_(self.shared, max_norm)
        torch._foreach_mul_(grads, scale)

    def _reduce_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average the .grad of `params` over processes in one flat all-reduce."""
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return
        flat = self.all_reduce(torch.cat([p.grad.reshape(-1) for p in with_grad]))
        offset = 0
        for p in with_grad:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
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
        if not self._gradients.loops:
            grads = self._gradients(stack, inputs)
            matrix = torch.cat([g.reshape(num, -1) for g in grads[:num_shared]], dim=1) if num_shared else None
            own = [
                torch.cat([grads[i][t].reshape(-1) for i in range(*spans[t])]) if spans[t][1] > spans[t][0] else None
                for t in range(num)
            ]
            return matrix, own
        # loop: write each task's row in place (no (T, *shape) stacks, one (T, P) matrix)
        matrix = self.shared[0].new_empty((num, sum(p.numel() for p in self.shared))) if num_shared else None
        own: list[Tensor | None] = []
        rows = task_gradient_rows(stack, lambda t: self.shared + inputs[spans[t][0] : spans[t][1]])
        for t, grads in enumerate(rows):
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

    def _unscale(self, parts: Sequence[Tensor | None]) -> tuple[float, bool]:
        """Divide the scaled gradients by S in place; returns (S, whether all are finite)."""
        assert self.grad_scaler is not None
        scale = self.grad_scaler.get_scale()
        present = [t for t in parts if t is not None]
        if present:
            torch._foreach_mul_(present, 1.0 / scale)
        return scale, _all_finite(present)

    def _gradient_backward(self, stack: Tensor) -> BackwardResult:
        """T gradients of the raw losses, (all-reduced,) chained through the transform, combined."""
        balancer = self.balancer
        assert isinstance(balancer, GradientBalancer)
        inputs, spans = self._inputs()
        matrix, own = self._task_matrix(self._scaled(stack), inputs, spans)
        matrix = None if matrix is None else _at_least_fp32(matrix)
        own = [None if g is None else _at_least_fp32(g) for g in own]
        values = stack.detach()
        if self.all_reduce is not None:
            matrix, own, values = self._reduce(matrix, own, values)
        scale = 1.0
        if self.grad_scaler is not None:
            scale, finite = self._unscale([matrix, *own])
            if not finite:
                return self._skip(values, matrix, own, inputs, spans)
        chain, extra = self._transform_chain(values)
        if chain is not None:  # grad l_t = (d l_t / d L_t) grad L_t: l_t depends on L_t only
            if matrix is not None:
                matrix.mul_(chain.to(matrix)[:, None])
            own = [None if g is None else g * chain[t].to(g) for t, g in enumerate(own)]
        result = balancer.balance(matrix, values) if matrix is not None else None
        if result is not None:
            self._write(self.shared, self._rescaled(result.update, scale))
        head_weights = result.head_weights if result is not None and balancer.weight_heads else None
        for t, g in enumerate(own):
            if g is not None:
                if head_weights is not None:
                    g = g * head_weights[t].to(g)
                self._write(inputs[spans[t][0] : spans[t][1]], self._rescaled(g, scale))
        for p, g in zip(self.balancer_params, extra):
            _accumulate(p, self._rescaled(g, scale))
        return self._result("gradients", values.sum(), None if result is None else result.task_weights)

    @staticmethod
    def _rescaled(grad: Tensor, scale: float) -> Tensor:
        """``grad`` times the grad scaler's S, which ``scaler.step`` divides out again."""
        return grad if scale == 1.0 else grad * scale

    def _skip(
        self,
        values: Tensor,
        matrix: Tensor | None,
        own: list[Tensor | None],
        inputs: list[Tensor],
        spans: list[tuple[int, int]],
    ) -> BackwardResult:
        """Non-finite scaled gradients: no aggregation, no balancer state update; the non-finite
        task-gradient sum goes into ``.grad`` so that the grad scaler skips the step."""
        if matrix is not None:
            self._write(self.shared, matrix.sum(dim=0))
        for t, g in enumerate(own):
            if g is not None:
                self._write(inputs[spans[t][0] : spans[t][1]], g)
        return self._result("gradients", values.sum(), None, skipped=True)

    def _shortcut_backward(self, stack: Tensor, weights: Tensor) -> BackwardResult:
        balancer = self.balancer
        assert isinstance(balancer, GradientBalancer)
        transformed = balancer.task_loss_transform(stack)
        total = (weights.to(transformed).detach() * transformed).sum()
        params = list(self.shared) + [p for t in self.tasks for p in self.task_params[t]]
        grads = torch.autograd.grad(self._scaled(total), params + self.balancer_params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params + self.balancer_params)]
        flat = _at_least_fp32(torch.cat([g.reshape(-1) for g in grads])) if grads else stack.new_zeros(0)
        if self.all_reduce is not None:
            flat = self.all_reduce(flat)
        num_shared = sum(p.numel() for p in self.shared)
        scale = 1.0
        if self.grad_scaler is not None:
            scale, finite = self._unscale([flat])
            if not finite:  # leave the non-finite gradient for the scaler; the weights stay as they are
                self._write(params + self.balancer_params, flat)
                return self._result("shortcut", total, None, skipped=True)
        result: BalanceResult = balancer.finish_shortcut(flat[:num_shared])
        self._write(self.shared, self._rescaled(result.update, scale))
        self._write(params[len(self.shared) :] + self.balancer_params, self._rescaled(flat[num_shared:], scale))
        return self._result("shortcut", total, result.task_weights)

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
