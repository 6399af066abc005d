"""Batch norm over the global batch when several processes train together.

torch's SyncBatchNorm runs only on GPUs; `GlobalBatchNorm` does the same on any device with a
differentiable all-reduce of the per-channel sums, so N processes with batch b normalise exactly
as one process with batch N*b (what makes multi-process training equal single-process training).
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """SUM over processes whose backward is the SUM of the output gradients over processes.

    Rank q's output feeds every rank's loss, so d(sum_r L_r)/d(input_q) = sum_r dL_r/d(output).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - autograd signature
        out = tensor.clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable SUM of `tensor` over the processes of the default group (a copy)."""
    return _AllReduceSum.apply(tensor)


def _distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are the mean/variance over every process's batch.

    Per-channel sums of x and x^2 and the element count are summed over processes in one
    all-reduce, in float64 so that ``var = E[x^2] - E[x]^2`` keeps float32 precision. Outside
    training, or alone, it is a plain BatchNorm (running statistics).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0] + list(range(2, input.dim()))
        wide = input.double()
        count = wide.new_tensor([input.numel() / input.shape[1]])
        stats = all_reduce_sum(torch.cat([wide.sum(dims), (wide * wide).sum(dims), count]))
        channels = input.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps).to(input.dtype)
        out = (input - mean.to(input.dtype).view(shape)) * scale.view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm of `module` by SyncBatchNorm (CUDA) or GlobalBatchNorm (else), in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, (GlobalBatchNorm, nn.SyncBatchNorm)
        ):
            on_cuda = any(p.is_cuda for p in child.parameters()) or (
                child.running_mean is not None and child.running_mean.is_cuda
            )
            cls = nn.SyncBatchNorm if on_cuda else GlobalBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(iter(child.buffers()), torch.empty(0)).device)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


__all__ = ["GlobalBatchNorm", "all_reduce_sum", "convert_batchnorm"]
