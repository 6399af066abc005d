"""Task specifications: what a head outputs, how it is trained and how it is scored.

A ``TaskSpec`` ties a task name to its head width, loss (InvPT conventions, ``tokenmtl.losses``),
meter factory (``tokenmtl.metrics``) and the primary metric delta-m uses. Benchmarks build their
specs with the factories below. Loss and meter callables are ``functools.partial`` objects, so
specs pickle (data-loader workers, checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from tokenmtl import losses
from tokenmtl.metrics import (
    ClassificationMeter,
    DepthMeter,
    EdgeMeter,
    Meter,
    NormalsMeter,
    RegressionMeter,
    SaliencyMeter,
    ScalarRegressionMeter,
    SemsegMeter,
)

__all__ = [
    "INVPT_LOSS_WEIGHTS",
    "TaskSpec",
    "classification_task",
    "depth_task",
    "edge_task",
    "human_parts_task",
    "normals_task",
    "regression_task",
    "saliency_task",
    "scalar_regression_task",
    "semseg_task",
]

# InvPT / TaskPrompter loss weights (their per-benchmark convention); the DTME authors' code uses all 1.0.
INVPT_LOSS_WEIGHTS: dict[str, dict[str, float]] = {
    "nyud": {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0},
    "pascal": {"semseg": 1.0, "human_parts": 2.0, "saliency": 5.0, "edge": 50.0, "normals": 10.0},
}


@dataclass(frozen=True)
class TaskSpec:
    """One task: head width, loss ``(pred (B,C,H,W), target) -> scalar``, meter factory, primary."""

    name: str
    out_channels: int
    loss: Callable[[Tensor, Tensor], Tensor]
    make_meter: Callable[[], Meter]
    primary_metric: str
    lower_is_better: bool
    loss_weight: float = 1.0


def semseg_task(num_classes: int, name: str = "semseg", loss_weight: float = 1.0) -> TaskSpec:
    """Semantic segmentation: CE ignoring 255, scored by mIoU (%, higher is better)."""
    if num_classes < 2:
        raise ValueError(f"{name}: num_classes must be >= 2, got {num_classes}")
    return TaskSpec(
        name=name,
        out_channels=num_classes,
        loss=losses.cross_entropy_loss,
        make_meter=partial(SemsegMeter, num_classes),
        primary_metric="mIoU",
        lower_is_better=False,
        loss_weight=loss_weight,
    )


def human_parts_task(num_classes: int = 7, loss_weight: float = 1.0) -> TaskSpec:
    """PASCAL-Context human parts (6 parts + background): CE ignoring 255, mIoU (%)."""
    return semseg_task(num_classes, name="human_parts", loss_weight=loss_weight)


def depth_task(loss_weight: float = 1.0) -> TaskSpec:
    """Depth: masked L1 (valid where 0 < target != 255), scored by RMSE (lower is better)."""
    return TaskSpec(
        name="depth",
        out_channels=1,
        loss=losses.depth_l1_loss,
        make_meter=DepthMeter,
        primary_metric="rmse",
        lower_is_better=True,
        loss_weight=loss_weight,
    )


def normals_task(loss_weight: float = 1.0) -> TaskSpec:
    """Surface normals: L1 on the L2-normalised prediction, scored by mean angle (deg, lower)."""
    return TaskSpec(
        name="normals",
        out_channels=3,
        loss=losses.normals_l1_loss,
        make_meter=NormalsMeter,
        primary_metric="mean",
        lower_is_better=True,
        loss_weight=loss_weight,
    )


def edge_task(
    tolerance: float = 0.011,
    pos_weight: float = 0.95,
    thresholds: int = 99,
    thin: bool = False,
    loss_weight: float = 1.0,
) -> TaskSpec:
    """Boundaries: InvPT balanced BCE (w=0.95), scored by odsF (%, higher is better).

    ``tolerance`` is the matching radius as a fraction of the image diagonal: 0.011 for NYUD,
    0.0075 for PASCAL-Context (SEISM settings). The odsF is a Python re-implementation.
    """
    return TaskSpec(
        name="edge",
        out_channels=1,
        loss=partial(losses.balanced_bce_loss, pos_weight=pos_weight),
        make_meter=partial(EdgeMeter, tolerance=tolerance, thresholds=thresholds, thin=thin),
        primary_metric="odsF",
        lower_is_better=False,
        loss_weight=loss_weight,
    )


def saliency_task(out_channels: int = 2, invpt_quirk: bool = False, loss_weight: float = 1.0) -> TaskSpec:
    """Saliency: class-balanced CE (2 channels, InvPT) or BCE (1 channel), scored by maxF (%).

    ``invpt_quirk=True`` scores like InvPT's evaluation (a second sigmoid, see SaliencyMeter).
    """
    if out_channels not in (1, 2):
        raise ValueError(f"saliency: out_channels must be 1 or 2, got {out_channels}")
    return TaskSpec(
        name="saliency",
        out_channels=out_channels,
        loss=losses.saliency_loss,
        make_meter=partial(SaliencyMeter, invpt_quirk=invpt_quirk),
        primary_metric="maxF",
        lower_is_better=False,
        loss_weight=loss_weight,
    )


def regression_task(
    name: str,
    channels: int,
    metric: str = "l1",
    loss: str = "l1",
    ignore_value: float | None = 255.0,
    loss_weight: float = 1.0,
) -> TaskSpec:
    """Generic dense regression (Taskonomy-like): masked L1 or MSE loss, scored by l1 or rmse.

    Mask rule: a pixel is invalid when any channel equals ``ignore_value`` (default 255; None
    keeps every pixel). ``metric`` ("l1" | "rmse") is the primary one, lower is better.
    """
    if channels < 1:
        raise ValueError(f"{name}: channels must be >= 1, got {channels}")
    if metric not in RegressionMeter.METRICS:
        raise ValueError(f"{name}: metric must be one of {RegressionMeter.METRICS}, got {metric!r}")
    if loss not in ("l1", "mse"):
        raise ValueError(f"{name}: loss must be 'l1' or 'mse', got {loss!r}")
    return TaskSpec(
        name=name,
        out_channels=channels,
        loss=partial(losses.regression_loss, kind=loss, ignore_value=ignore_value),
        make_meter=partial(RegressionMeter, metric=metric, ignore_value=ignore_value),
        primary_metric=metric,
        lower_is_better=True,
        loss_weight=loss_weight,
    )


CLASSIFICATION_METRICS = ("macroF1", "accuracy")


def classification_task(
    num_classes: int,
    name: str,
    primary_metric: str = "macroF1",
    ignore_index: int = losses.CLASS_IGNORE_INDEX,
    loss_weight: float = 1.0,
) -> TaskSpec:
    """One label per sequence: CE on (B, C) logits ignoring ``ignore_index``; macro-F1 and accuracy.

    Macro-F1 (%) is primary by default: real label sets are skewed (a few Debian sections hold
    most packages), and accuracy rewards predicting the big classes while macro-F1 weighs each equally.
    """
    if num_classes < 2:
        raise ValueError(f"{name}: num_classes must be >= 2, got {num_classes}")
    if primary_metric not in CLASSIFICATION_METRICS:
        raise ValueError(f"{name}: primary_metric must be one of {CLASSIFICATION_METRICS}, got {primary_metric!r}")
    return TaskSpec(
        name=name,
        out_channels=num_classes,
        loss=partial(losses.classification_loss, ignore_index=ignore_index),
        make_meter=partial(ClassificationMeter, num_classes, ignore_index=ignore_index),
        primary_metric=primary_metric,
        lower_is_better=False,
        loss_weight=loss_weight,
    )


def scalar_regression_task(name: str, scale: float = 1.0, loss: str = "l1", loss_weight: float = 1.0) -> TaskSpec:
    """One number per sequence: L1 (or MSE) on (B,) or (B, 1) predictions, NaN targets skipped.

    Scored by MAE (lower is better) times ``scale``: pass the standard deviation the targets were
    standardised with, and the MAE is reported in the original units.
    """
    if loss not in ("l1", "mse"):
        raise ValueError(f"{name}: loss must be 'l1' or 'mse', got {loss!r}")
    if not scale > 0:
        raise ValueError(f"{name}: scale must be > 0, got {scale!r}")
    return TaskSpec(
        name=name,
        out_channels=1,
        loss=partial(losses.scalar_regression_loss, kind=loss),
        make_meter=partial(ScalarRegressionMeter, scale=scale),
        primary_metric="mae",
        lower_is_better=True,
        loss_weight=loss_weight,
    )
