"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liu, Stone & Liu, NeurIPS 2023).

As the official ``famo.py`` (Cranial-XIX/FAMO): task logits w (init 0), ``z = softmax(w)``,
``D_t = L_t - min_t + 1e-8`` and ``c = sum_t z_t / D_t`` (no gradient), the objective is
``sum_t z_t log(D_t) / c``, whose parameter gradient is ``sum_t z_t / (c D_t) grad L_t`` (effective
weights summing to 1). After the optimiser step the same batch is re-evaluated (L_new) and the
logits take one Adam step (lr ``w_lr``, L2 weight decay ``gamma``) along
``J_softmax(w)^T delta`` with ``delta_t = log D_t(old) - log D_t(new)``.

Defaults: the official ``w_lr=0.025`` and ``gamma=0.01``, and no gradient clipping
(``max_norm=0``). The official training script calls ``clip_grad_norm_(max_norm=1.0)`` before
``backward()``, when the gradients it clips are still zero, so its clip never acts; LibMTL's port
has none. ``max_norm > 0`` clips the shared gradient to that norm after the backward pass (an
option, not the method). LibMTL also uses ``gamma=1e-3``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import LossBalancer, check_losses

_EPS = 1e-8


class FAMO(LossBalancer):
    """Loss weighting by the rate of log-loss decrease, with its own Adam on the task logits.

    The logits and the Adam moments are buffers (saved in ``state_dict``, not trained by the main
    optimiser). ``weights`` = the effective weights ``z_t / (c D_t)`` of the last call.
    Losses must exceed ``min_losses`` (0 by default), as in the official code.
    """

    name: ClassVar[str] = "famo"
    summary: ClassVar[str] = "fast adaptive multitask optimization, log-loss rates (Liu 2023)"
    needs_reevaluation: ClassVar[bool] = True

    def __init__(
        self,
        num_tasks: int,
        *,
        w_lr: float = 0.025,
        gamma: float = 0.01,
        max_norm: float = 0.0,
        min_losses: tuple[float, ...] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
    ) -> None:
        super().__init__(num_tasks)
        if max_norm < 0:
            raise ValueError(f"famo max_norm must be >= 0 (0 = no clipping), got {max_norm}")
        if min_losses is not None and len(min_losses) != num_tasks:
            raise ValueError(f"famo min_losses needs {num_tasks} values (one per task), got {len(min_losses)}")
        self.w_lr = w_lr
        self.gamma = gamma
        self.max_norm = max_norm
        self.min_losses = min_losses
        self.betas = betas
        self.adam_eps = adam_eps
        mins = torch.zeros(num_tasks) if min_losses is None else torch.tensor(min_losses)
        self.register_buffer("min_loss", mins.float())
        self.register_buffer("logits", torch.zeros(num_tasks))
        self.register_buffer("adam_m", torch.zeros(num_tasks))
        self.register_buffer("adam_v", torch.zeros(num_tasks))
        self.adam_steps = 0
        self._prev_losses: Tensor | None = None

    def weigh(self, losses: Tensor) -> Tensor:
        check_losses(losses, self.num_tasks)
        z = torch.softmax(self.logits, dim=0).to(losses)
        gap = losses - self.min_loss.to(losses) + _EPS
        c = (z / gap).sum().detach()
        self._prev_losses = losses.detach()
        self.weights = (z / (c * gap)).detach()
        return (z * torch.log(gap) / c).sum()

    def after_step(self, new_losses: Tensor) -> None:
        """One Adam step on the logits from the log-loss decrease of the batch seen by ``weigh``."""
        check_losses(new_losses, self.num_tasks)
        if self._prev_losses is None:
            raise RuntimeError("famo.after_step called before weigh(): no losses to compare with")
        mins = self.min_loss.to(new_losses)
        delta = torch.log(self._prev_losses - mins + _EPS) - torch.log(new_losses.detach() - mins + _EPS)
        z = torch.softmax(self.logits, dim=0)
        delta = delta.to(z)
        grad = z * delta - z * (z @ delta)  # J_softmax(w)^T delta; J = diag(z) - z z^T
        self._adam_step(grad)
        self._prev_losses = None

    def _adam_step(self, grad: Tensor) -> None:
        """``torch.optim.Adam`` (L2 weight decay ``gamma``) on the logits, written out."""
        beta1, beta2 = self.betas
        grad = grad + self.gamma * self.logits
        self.adam_steps += 1
        self.adam_m.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.adam_v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1**self.adam_steps
        bias2 = 1 - beta2**self.adam_steps
        denom = (self.adam_v.sqrt() / bias2**0.5).add_(self.adam_eps)
        self.logits.addcdiv_(self.adam_m, denom, value=-self.w_lr / bias1)

    def get_extra_state(self) -> dict[str, int]:
        return {"adam_steps": self.adam_steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.adam_steps = int(state["adam_steps"])
