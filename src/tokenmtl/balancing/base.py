"""Base classes of the balancers: what every method exposes, whatever its kind.

A balancer turns T task losses (``kind == "loss"``) or the T task gradients of the shared
parameters (``kind == "gradient"``) into one update. Balancers are ``nn.Module``s so that their
state (EMA buffers, learnable log-variances, Nash weights) moves with ``.to(device)`` and travels
in ``state_dict()``. ``balancer.parameters()`` are the parameters the *main* optimiser must train
(UW's log-variances, IMTL-L's loss scales); methods that own an inner optimiser (FAMO) keep their
variables in buffers instead.

Gradient methods return an explicit :class:`BalanceResult` from ``balance(grads, losses)``: the
update, the per-task weights of this step and the weights for the task-specific (head)
gradients. ``aggregate(grads, losses)`` (the documented public contract) returns its ``update``.
The ``weights`` / ``head_weights`` attributes still hold the last step's values, for users who
read them; ``engine.grad_driver`` only uses the returned result.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn


@dataclass(frozen=True)
class BalanceResult:
    """What a gradient method computed from one (T, P) gradient matrix.

    ``update``: the (P,) update of the shared parameters. ``task_weights``: the (T,) per-task
    coefficients of this step (meaning documented per method; None when the method has none, e.g.
    GradDrop). ``head_weights``: (T,) factors for the task-specific gradients, None for 1.
    """

    update: Tensor
    task_weights: Tensor | None = None
    head_weights: Tensor | None = None


def check_matrix(grads: Tensor, num_tasks: int) -> None:
    """Raise a ValueError unless ``grads`` is a (num_tasks, P) matrix."""
    if grads.ndim != 2 or grads.shape[0] != num_tasks:
        raise ValueError(f"expected task gradients of shape ({num_tasks}, P), got {tuple(grads.shape)}")


def check_losses(losses: Tensor, num_tasks: int) -> None:
    """Raise a ValueError unless ``losses`` is a (num_tasks,) vector."""
    if losses.ndim != 1 or losses.shape[0] != num_tasks:
        raise ValueError(f"expected losses of shape ({num_tasks},), got {tuple(losses.shape)}")


def gramian(grads: Tensor) -> Tensor:
    """The T x T Gramian ``G G^T`` of the task gradients, in float64 (the solvers' precision).

    The product runs in the gradients' dtype (a float64 copy of a (T, P) matrix would double its
    memory); only the small result is promoted.
    """
    return (grads @ grads.T).double()


class Balancer(nn.Module):
    """Common part of every balancer: its name, kind, and number of tasks."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: FAMO re-evaluates the losses of the same batch after the optimiser step.
    needs_reevaluation: ClassVar[bool] = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks
        #: Per-task coefficients of the last step (meaning documented per method), or None.
        self.weights: Tensor | None = None

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The keyword options of this method and their defaults (from ``__init__``)."""
        params = inspect.signature(cls.__init__).parameters
        return {
            name: p.default
            for name, p in params.items()
            if name not in ("self", "num_tasks") and p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def after_step(self, new_losses: Tensor) -> None:
        """Called with the re-evaluated losses of the same batch after the optimiser step."""

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k, v)!r}" for k, v in self.options().items())
        return f"num_tasks={self.num_tasks}" + (f", {opts}" if opts else "")


class LossBalancer(Balancer, ABC):
    """A method that weighs the losses: the driver back-propagates ``weigh(losses)`` once."""

    kind: ClassVar[str] = "loss"
    #: Norm to which the driver clips the shared parameters' gradient after backward (0 = off).
    max_norm: float = 0.0

    @abstractmethod
    def weigh(self, losses: Tensor) -> Tensor:
        """Differentiable scalar total loss from the (T,) task losses."""


class GradientBalancer(Balancer, ABC):
    """A method that combines the (T, P) task gradients of the shared parameters.

    ``weight_heads``: when True the driver multiplies task t's head gradient by
    ``head_weights[t]`` (the authors' code back-propagates ``sum_t w_t L_t``); when False the head
    gets the plain gradient of its (transformed) loss.
    """

    kind: ClassVar[str] = "gradient"
    weight_heads: bool = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        #: Weights the driver applies to the task-specific gradients, or None for 1.
        self.head_weights: Tensor | None = None

    def task_loss_transform(self, losses: Tensor) -> Tensor:
        """Losses whose gradients the method combines (identity; DB-MTL: log)."""
        return losses

    def balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        """The update of the shared parameters and this step's weights, from the (T, P) gradients
        and (T,) losses.

        ``losses`` are the raw (untransformed) loss values; the gradients are those of
        ``task_loss_transform(losses)``. Also stores the weights in ``weights``/``head_weights``.
        """
        check_matrix(grads, self.num_tasks)
        check_losses(losses, self.num_tasks)
        result = self._balance(grads, losses.detach())
        self.weights, self.head_weights = result.task_weights, result.head_weights
        return result

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The (P,) update of the shared parameters: ``balance(grads, losses).update``."""
        return self.balance(grads, losses).update

    @abstractmethod
    def _balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        """The method's result from validated (T, P) gradients and detached (T,) losses."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A method written against the older hook ``_aggregate(grads, losses) -> update`` (which
        sets ``weights``/``head_weights`` itself) gets a ``_balance`` that wraps it."""
        super().__init_subclass__(**kwargs)
        if "_aggregate" in cls.__dict__ and "_balance" not in cls.__dict__:
            cls._balance = _balance_via_aggregate  # type: ignore[method-assign]

    def shortcut_weights(self) -> Tensor | None:
        """Weights known before the gradients, or None (the default).

        When a method returns weights w here, its next update is ``finish_shortcut(w @ grads)``, so
        the driver may get ``w @ grads`` from one backward pass of ``sum_t w_t l_t`` instead of
        T gradients (Nash-MTL between two weight updates).
        """
        return None

    def finish_shortcut(self, combined: Tensor) -> BalanceResult:
        """Advance the state after a shortcut step; the final update and the weights used."""
        raise RuntimeError(f"{self.name} has no shortcut step")


def _balance_via_aggregate(self: GradientBalancer, grads: Tensor, losses: Tensor) -> BalanceResult:
    """``_balance`` of a method that implements ``_aggregate`` and sets its weight attributes."""
    update = self._aggregate(grads, losses)  # type: ignore[attr-defined]
    return BalanceResult(update, self.weights, self.head_weights if self.weight_heads else None)


class GramianBalancer(GradientBalancer):
    """A gradient method whose update is ``w @ grads`` with weights w from the T x T Gramian."""

    def _balance(self, grads: Tensor, losses: Tensor) -> BalanceResult:
        weights = self.weights_from_gramian(gramian(grads), losses.double()).to(grads.dtype)
        update = weights.to(grads.device) @ grads
        return BalanceResult(update, weights, weights if self.weight_heads else None)

    @abstractmethod
    def weights_from_gramian(self, gram: Tensor, losses: Tensor) -> Tensor:
        """(T,) float64 weights from the float64 Gramian and losses."""
