"""Task losses with the InvPT / ATRC conventions.

Every loss takes the raw head output ``pred`` (B, C, H, W) and the batch target laid out as in
``docs/internals.md``, and returns a scalar. Invalid pixels never contribute; a batch whose
pixels are all invalid gives an exact zero that still has a ``grad_fn`` (never NaN), so the
balancers and the gradient driver can treat it like any other loss.

Reductions follow InvPT: sums over the valid pixels divided by ``max(n_valid, 1)``. For the
normals and depth L1 losses the channels are *summed* per pixel (InvPT's ``L1Loss`` divides by
the number of valid pixels, not elements); the generic regression loss averages over elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
CLASS_IGNORE_INDEX = -100
"""Ignore label of sequence-level classification targets (PyTorch's cross-entropy default)."""

__all__ = [
    "CLASS_IGNORE_INDEX",
    "IGNORE_INDEX",
    "balanced_bce_loss",
    "classification_loss",
    "cross_entropy_loss",
    "depth_l1_loss",
    "normals_l1_loss",
    "regression_loss",
    "saliency_loss",
    "scalar_regression_loss",
]


def _check_spatial(pred: Tensor, target: Tensor, loss_name: str) -> None:
    """Raise when pred and target disagree on batch or spatial size (heads must upsample)."""
    if pred.dim() != 4:
        raise ValueError(f"{loss_name}: pred must be (B, C, H, W), got shape {tuple(pred.shape)}")
    if target.shape[0] != pred.shape[0] or target.shape[-2:] != pred.shape[-2:]:
        raise ValueError(
            f"{loss_name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must share "
            "batch size and (H, W); the head is expected to upsample to the target size"
        )


def _class_map(target: Tensor, loss_name: str) -> Tensor:
    """Return an int64 (B, H, W) label map from a (B, H, W) or (B, 1, H, W) target."""
    if target.dim() == 4:
        if target.shape[1] != 1:
            raise ValueError(f"{loss_name}: a 4-d class target must have one channel, got {tuple(target.shape)}")
        target = target[:, 0]
    if target.dim() != 3:
        raise ValueError(f"{loss_name}: target must be (B, H, W), got {tuple(target.shape)}")
    return target.long()


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Sum of ``values`` over ``valid`` divided by max(#valid, 1): exact zero when none is valid."""
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1)


def cross_entropy_loss(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixel-wise cross-entropy, mean over pixels whose label is not ``ignore_index`` (InvPT).

    ``L = sum_{valid p} -log softmax(pred_p)[y_p] / max(n_valid, 1)``; semseg and human parts.
    """
    _check_spatial(pred, target, "cross_entropy_loss")
    labels = _class_map(target, "cross_entropy_loss")
    total = F.cross_entropy(pred, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def depth_l1_loss(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Masked L1 on depth, mean over valid pixels; a pixel is valid where 0 < target != 255.

    Depth 0 marks missing sensor values (internals.md); 255 marks padding (InvPT's ignore value).
    """
    _check_spatial(pred, target, "depth_l1_loss")
    if pred.shape != target.shape:
        raise ValueError(
            f"depth_l1_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    valid = ((target > 0) & (target != ignore_index)).all(dim=1, keepdim=True)
    return _masked_sum_per_pixel((pred - target).abs(), valid)


def _masked_sum_per_pixel(values: Tensor, pixel_valid: Tensor) -> Tensor:
    """Sum over channels and valid pixels / number of valid pixels (InvPT ``L1Loss``).

    ``pixel_valid`` is (B, 1, H, W); an all-invalid batch gives an exact zero with a grad_fn.
    """
    total = torch.where(pixel_valid, values, torch.zeros_like(values)).sum()
    return total / pixel_valid.sum().clamp(min=1)


def normals_l1_loss(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """L1 between the L2-normalised prediction and the unit target normal (InvPT ``L1Loss``).

    ``L = sum_{valid p} ||pred_p/||pred_p|| - n_p||_1 / max(n_valid, 1)``; a pixel is invalid when
    its target is the zero vector or any channel is 255. Invariant to the prediction's scale.
    """
    _check_spatial(pred, target, "normals_l1_loss")
    if pred.shape[1] != 3 or target.shape[1] != 3:
        raise ValueError(f"normals_l1_loss: pred and target need 3 channels, got {pred.shape[1]} and {target.shape[1]}")
    nonzero = (target != 0).any(dim=1, keepdim=True)
    valid = nonzero & (target != ignore_index).all(dim=1, keepdim=True)
    unit = F.normalize(pred, p=2, dim=1)
    return _masked_sum_per_pixel((unit - target).abs(), valid)


def balanced_bce_loss(
    pred: Tensor,
    target: Tensor,
    pos_weight: float | None = 0.95,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """InvPT ``BalancedBinaryCrossEntropyLoss``: BCE on logits, positives weighted w, negatives 1-w.

    Implemented as InvPT does: ``pos_weight = w/(1-w)`` then divided by ``1/(1-w)``, i.e.
    ``L = mean_{valid} [-w y log s(x) - (1-w)(1-y) log(1-s(x))]``. ``pos_weight=None`` takes w as
    the batch's negative fraction (HED-style); InvPT then returns 0 for a batch with no positives.
    """
    _check_spatial(pred, target, "balanced_bce_loss")
    if pred.shape != target.shape:
        raise ValueError(
            f"balanced_bce_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must "
            "have the same shape (one logit per target pixel)"
        )
    valid = target != ignore_index
    labels = torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
    if pos_weight is None:
        n_valid = valid.sum().clamp(min=1)
        w = ((1.0 - labels) * valid).sum() / n_valid
        if bool(w >= 1.0):
            return pred.sum() * 0.0
    else:
        if not 0.0 <= pos_weight < 1.0:
            raise ValueError(f"balanced_bce_loss: pos_weight must be in [0, 1), got {pos_weight}")
        w = torch.as_tensor(pos_weight, dtype=pred.dtype, device=pred.device)
    per_pixel = F.binary_cross_entropy_with_logits(pred, labels, pos_weight=w / (1.0 - w), reduction="none")
    return _masked_mean(per_pixel, valid) * (1.0 - w)


def saliency_loss(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Class-balanced saliency loss as InvPT: 2-channel balanced CE, or 1-channel balanced BCE.

    Two channels (InvPT default): CE with class weights ``(1 - w_pos, w_pos)``, ``w_pos`` = the
    batch's negative fraction, summed and divided by the valid pixel count. One channel: the
    HED-style ``balanced_bce_loss(pos_weight=None)``.
    """
    _check_spatial(pred, target, "saliency_loss")
    if pred.shape[1] == 1:
        return balanced_bce_loss(pred, target, pos_weight=None, ignore_index=ignore_index)
    if pred.shape[1] != 2:
        raise ValueError(f"saliency_loss: pred needs 1 (logit) or 2 (class scores) channels, got {pred.shape[1]}")
    labels = _class_map(target, "saliency_loss")
    valid = labels != ignore_index
    if bool(((labels > 1) & valid).any()):
        raise ValueError("saliency_loss: saliency targets must be 0, 1 or 255 (ignore)")
    n_valid = valid.sum().clamp(min=1)
    w_pos = ((1 - labels) * valid).sum().to(pred.dtype) / n_valid
    class_weight = torch.stack((1.0 - w_pos, w_pos))
    total = F.cross_entropy(pred, labels, weight=class_weight, ignore_index=ignore_index, reduction="sum")
    return total / n_valid


def regression_loss(
    pred: Tensor,
    target: Tensor,
    kind: str = "l1",
    ignore_value: float | None = IGNORE_INDEX,
) -> Tensor:
    """Masked dense regression loss, mean over valid elements (pixels x channels).

    ``kind="l1"``: mean |pred - target|; ``kind="mse"``: mean (pred - target)^2. A pixel is invalid
    when any channel equals ``ignore_value`` (None: every pixel is valid).
    """
    _check_spatial(pred, target, "regression_loss")
    if pred.shape != target.shape:
        raise ValueError(
            f"regression_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    diff = pred - target
    if kind == "l1":
        per_element = diff.abs()
    elif kind == "mse":
        per_element = diff.square()
    else:
        raise ValueError(f"regression_loss: kind must be 'l1' or 'mse', got {kind!r}")
    if ignore_value is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = (target != ignore_value).all(dim=1, keepdim=True).expand_as(target)
    return _masked_mean(per_element, valid)


def classification_loss(pred: Tensor, target: Tensor, ignore_index: int = CLASS_IGNORE_INDEX) -> Tensor:
    """Cross-entropy of (B, C) logits against (B,) class ids, mean over targets != ``ignore_index``.

    ``L = sum_{valid i} -log softmax(pred_i)[y_i] / max(n_valid, 1)``: a batch with no labelled
    example gives an exact zero with a grad_fn (text tasks whose label is missing for a package).
    """
    if pred.dim() != 2:
        raise ValueError(f"classification_loss: pred must be (B, C) logits, got shape {tuple(pred.shape)}")
    labels = target.reshape(-1).long()
    if labels.shape[0] != pred.shape[0]:
        raise ValueError(
            f"classification_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
            "must have the same batch size (one class id per example)"
        )
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= pred.shape[1]))[valid].any()):
        bad = labels[valid & ((labels < 0) | (labels >= pred.shape[1]))][:5].tolist()
        raise ValueError(
            f"classification_loss: class ids {bad} out of range [0, {pred.shape[1]}) (ignore label: {ignore_index})"
        )
    total = F.cross_entropy(pred, labels, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp(min=1)


def scalar_regression_loss(pred: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """L1 (or MSE) between (B,) or (B, 1) predictions and (B,) targets, mean over non-NaN targets.

    A NaN target is a missing value: it never contributes, and its gradient is exactly zero.
    """
    values = _scalar_batch(pred, "scalar_regression_loss")
    goal = _scalar_batch(target, "scalar_regression_loss", what="target").to(values.dtype)
    if goal.shape[0] != values.shape[0]:
        raise ValueError(
            f"scalar_regression_loss: pred {tuple(pred.shape)} and target "
            f"{tuple(target.shape)} must have the same batch size"
        )
    valid = ~torch.isnan(goal)
    diff = values - torch.where(valid, goal, torch.zeros_like(goal))  # no NaN reaches autograd
    if kind == "l1":
        per_example = diff.abs()
    elif kind == "mse":
        per_example = diff.square()
    else:
        raise ValueError(f"scalar_regression_loss: kind must be 'l1' or 'mse', got {kind!r}")
    return _masked_mean(per_example, valid)


def _scalar_batch(values: Tensor, loss_name: str, what: str = "pred") -> Tensor:
    """(B,) from a (B,) or (B, 1) tensor; any other shape is an error naming it."""
    if values.dim() == 2 and values.shape[1] == 1:
        return values[:, 0]
    if values.dim() != 1:
        raise ValueError(f"{loss_name}: {what} must be (B,) or (B, 1), got shape {tuple(values.shape)}")
    return values
