"""Dense-prediction meters with the InvPT / ATRC conventions (their metric definitions).

Every meter keeps dataset-level running sums only (confusion counts, squared-error sums, pixel
counts, per-threshold counts), so a split's score is computed once over all its pixels, and
distributed evaluation can all-reduce ``state_tensors()`` (SUM) in place before ``compute()``.
State lives on the CPU by default; ``meter.to(device)`` moves it (e.g. to CUDA before an NCCL
all-reduce) and later updates accumulate on that device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255

__all__ = [
    "DepthMeter",
    "Meter",
    "NormalsMeter",
    "RegressionMeter",
    "SaliencyMeter",
    "SemsegMeter",
]


class Meter(ABC):
    """Base of all meters: running-sum state tensors plus ``update``/``compute``/``reset``.

    Subclasses implement ``_initial_state()`` (name -> zero tensor), ``update`` and ``compute``.
    """

    def __init__(self) -> None:
        self._device = torch.device("cpu")
        self._state: dict[str, Tensor] = {}
        self.reset()

    @abstractmethod
    def _initial_state(self) -> dict[str, Tensor]:
        """Name -> zero tensor (float64 sums, int64 counts) of every running sum."""

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Accumulate one batch: raw head output (B, C, H, W) and the batch target."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Scores over everything seen since the last reset."""

    def reset(self) -> None:
        """Zero every running sum."""
        self._state = {k: v.to(self._device) for k, v in self._initial_state().items()}

    def state_tensors(self) -> dict[str, Tensor]:
        """The running-sum tensors themselves (float64/int64): all-reduce them in place (SUM)."""
        return self._state

    def to(self, device: torch.device | str) -> Meter:
        """Move the running sums to ``device``; later updates accumulate there."""
        self._device = torch.device(device)
        self._state = {k: v.to(self._device) for k, v in self._state.items()}
        return self

    def _add(self, name: str, value: Tensor) -> None:
        """Add ``value`` to the running sum ``name`` (cast to its dtype and device)."""
        state = self._state[name]
        state += value.to(device=state.device, dtype=state.dtype)


def _check_batch(pred: Tensor, target: Tensor, meter: str, channels: int | None = None) -> None:
    """Raise when pred is not (B, C, H, W) with C == channels or when sizes disagree."""
    if pred.dim() != 4:
        raise ValueError(f"{meter}: pred must be (B, C, H, W), got shape {tuple(pred.shape)}")
    if channels is not None and pred.shape[1] != channels:
        raise ValueError(f"{meter}: pred must have {channels} channels, got {pred.shape[1]}")
    if target.shape[0] != pred.shape[0] or target.shape[-2:] != pred.shape[-2:]:
        raise ValueError(
            f"{meter}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must share batch size and (H, W)"
        )


def _label_map(target: Tensor, meter: str) -> Tensor:
    """int64 (B, H, W) labels from a (B, H, W) or (B, 1, H, W) target."""
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 3:
        raise ValueError(f"{meter}: target must be (B, H, W) labels, got {tuple(target.shape)}")
    return target.long()


class SemsegMeter(Meter):
    """mIoU the ATRC/InvPT 'macro' way: dataset-level tp/fp/fn per class over valid pixels.

    ``IoU_c = tp_c / max(tp_c + fp_c + fn_c, 1e-8)``; ``mIoU`` = mean over all ``num_classes``
    (a class absent from both prediction and ground truth counts as IoU 0, as in ATRC).
    Also ``pixel_acc`` = correct valid pixels / valid pixels. Prediction = argmax over channels.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"SemsegMeter: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        n = self.num_classes
        return {"confusion": torch.zeros(n, n, dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the batch's (gt, pred) confusion counts over pixels whose label is not ignored."""
        _check_batch(pred, target, "SemsegMeter", self.num_classes)
        labels = _label_map(target, "SemsegMeter")
        valid = labels != self.ignore_index
        gt = labels[valid]
        if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= self.num_classes):
            raise ValueError(
                f"SemsegMeter: labels must be in [0, {self.num_classes}) or "
                f"{self.ignore_index} (ignore), saw values in [{int(gt.min())}, {int(gt.max())}]"
            )
        guess = pred.argmax(dim=1)[valid]
        n = self.num_classes
        counts = torch.bincount(gt * n + guess, minlength=n * n).reshape(n, n)
        self._add("confusion", counts)

    def per_class_iou(self) -> list[float]:
        """IoU of every class, ``tp / max(tp + fp + fn, 1e-8)``."""
        conf = self._state["confusion"].double()
        tp = conf.diag()
        fp = conf.sum(dim=0) - tp
        fn = conf.sum(dim=1) - tp
        return (tp / (tp + fp + fn).clamp(min=1e-8)).tolist()

    def compute(self) -> dict[str, float]:
        conf = self._state["confusion"].double()
        iou = self.per_class_iou()
        total = float(conf.sum())
        return {
            "mIoU": 100.0 * sum(iou) / len(iou),
            "pixel_acc": 100.0 * float(conf.diag().sum()) / max(total, 1.0),
        }


class DepthMeter(Meter):
    """Depth errors pixel-level over the whole split (InvPT ``DepthMeter``), invalid pixels masked.

    ``rmse = sqrt(sum (g - p)^2 / n)``, ``log_rmse = sqrt(sum (log g - log p)^2 / n)``,
    ``abs_rel = sum |g - p| / g / n``, ``sq_rel = sum (g - p)^2 / g / n`` over valid pixels
    (0 < g != 255). The prediction is clamped at 0 (InvPT ``get_output``), at 1e-9 for the log.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        names = ("sq_err", "log_sq_err", "abs_rel", "sq_rel")
        state = {k: torch.zeros((), dtype=torch.float64) for k in names}
        state["n_valid"] = torch.zeros((), dtype=torch.int64)
        return state

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the batch's error sums over valid depth pixels."""
        _check_batch(pred, target, "DepthMeter", 1)
        if target.dim() == 3:
            target = target[:, None]
        gt = target.double()
        valid = (gt > 0) & (gt != self.ignore_index)
        g = gt[valid]
        p = pred.double()[valid].clamp(min=0.0)
        err = g - p
        self._add("sq_err", err.square().sum())
        self._add("log_sq_err", (g.log() - p.clamp(min=1e-9).log()).square().sum())
        self._add("abs_rel", (err.abs() / g).sum())
        self._add("sq_rel", (err.square() / g).sum())
        self._add("n_valid", valid.sum())

    def compute(self) -> dict[str, float]:
        n = max(int(self._state["n_valid"]), 1)
        s = self._state
        return {
            "rmse": math.sqrt(float(s["sq_err"]) / n),
            "log_rmse": math.sqrt(float(s["log_sq_err"]) / n),
            "abs_rel": float(s["abs_rel"]) / n,
            "sq_rel": float(s["sq_rel"]) / n,
        }


class NormalsMeter(Meter):
    """Angular error of surface normals in degrees over the valid pixels of the split (InvPT).

    Both vectors are L2-normalised; ``angle = 2 atan2(||p - g||, ||p + g||)`` (stable near 0 and
    180 deg). Reports ``mean``, ``rmse``, ``median`` (from a histogram with ``bin_deg`` bins, so it
    stays a sum; exact to half a bin) and the % of pixels within 11.25, 22.5 and 30 degrees.
    A pixel is invalid when its target is the zero vector or any channel is 255.
    """

    WITHIN = (11.25, 22.5, 30.0)

    def __init__(self, bin_deg: float = 0.01, ignore_index: int = IGNORE_INDEX) -> None:
        if not 0.0 < bin_deg <= 1.0:
            raise ValueError(f"NormalsMeter: bin_deg must be in (0, 1] degrees, got {bin_deg}")
        self.bin_deg = bin_deg
        self.num_bins = int(math.ceil(180.0 / bin_deg))
        self.ignore_index = ignore_index
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        return {
            "sum_deg": torch.zeros((), dtype=torch.float64),
            "sum_sq_deg": torch.zeros((), dtype=torch.float64),
            "n_valid": torch.zeros((), dtype=torch.int64),
            "within": torch.zeros(len(self.WITHIN), dtype=torch.int64),
            "histogram": torch.zeros(self.num_bins, dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the batch's angle sums, threshold counts and histogram over valid pixels."""
        _check_batch(pred, target, "NormalsMeter", 3)
        gt = target.double()
        valid = (gt != 0).any(dim=1) & (gt != self.ignore_index).all(dim=1)
        p = F.normalize(pred.double(), dim=1).permute(0, 2, 3, 1)[valid]
        g = F.normalize(gt, dim=1).permute(0, 2, 3, 1)[valid]
        deg = torch.rad2deg(2.0 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))
        self._add("sum_deg", deg.sum())
        self._add("sum_sq_deg", deg.square().sum())
        self._add("n_valid", valid.sum())
        limits = torch.tensor(self.WITHIN, dtype=deg.dtype, device=deg.device)
        self._add("within", (deg[:, None] < limits).sum(dim=0))
        bins = (deg / self.bin_deg).long().clamp(0, self.num_bins - 1)
        self._add("histogram", torch.bincount(bins, minlength=self.num_bins))

    def _median(self) -> float:
        """Centre of the histogram bin holding the middle valid pixel."""
        hist = self._state["histogram"].cpu()
        n = int(hist.sum())
        if n == 0:
            return 0.0
        index = int(torch.searchsorted(hist.cumsum(0), torch.tensor((n + 1) // 2)))
        return (index + 0.5) * self.bin_deg

    def compute(self) -> dict[str, float]:
        s = self._state
        n = max(int(s["n_valid"]), 1)
        scores = {
            "mean": float(s["sum_deg"]) / n,
            "rmse": math.sqrt(float(s["sum_sq_deg"]) / n),
            "median": self._median(),
        }
        for limit, count in zip(self.WITHIN, s["within"].tolist()):
            scores[f"within_{limit:g}"] = 100.0 * count / n
        return scores


def _f_beta(tp: Tensor, predicted: Tensor, actual: Tensor, beta_sq: float) -> Tensor:
    """``F = (1 + b^2) P R / (b^2 P + R)`` per entry, with 0 where it is undefined (InvPT)."""
    precision = tp / predicted
    recall = tp / actual
    score = (1.0 + beta_sq) * precision * recall / (beta_sq * precision + recall)
    return torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)


class SaliencyMeter(Meter):
    """maxF of saliency (InvPT ``SaliencyMeter``): dataset-level counts at thresholds 0.05..0.95.

    Probability = softmax(pred)[:, 1] (2 channels) or sigmoid(pred) (1 channel); at each
    threshold t, ``prob >= t`` is positive; ``F = (1 + b^2) P R / (b^2 P + R)`` with b^2 = 0.3;
    ``maxF`` = max over thresholds. ``invpt_quirk=True`` applies a second sigmoid to the
    probability, as InvPT's evaluation does (it feeds ``255 * prob``, divides by 255 and squashes
    again, so thresholds act on sigmoid(prob) in [0.5, 0.73]); use it only to compare with
    InvPT-family numbers. Default False: thresholds act on the probability itself.
    """

    def __init__(
        self,
        step: float = 0.05,
        beta_sq: float = 0.3,
        invpt_quirk: bool = False,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if not 0.0 < step < 1.0:
            raise ValueError(f"SaliencyMeter: step must be in (0, 1), got {step}")
        self.thresholds = torch.arange(step, 1.0, step, dtype=torch.float32)
        self.beta_sq = beta_sq
        self.invpt_quirk = invpt_quirk
        self.ignore_index = ignore_index
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        t = len(self.thresholds)
        return {k: torch.zeros(t, dtype=torch.int64) for k in ("tp", "predicted", "actual")}

    def probability(self, pred: Tensor) -> Tensor:
        """(B, H, W) saliency probability from the raw head output (see the class docstring)."""
        if pred.shape[1] == 2:
            prob = pred.float().softmax(dim=1)[:, 1]
        elif pred.shape[1] == 1:
            prob = pred.float().sigmoid()[:, 0]
        else:
            raise ValueError(f"SaliencyMeter: pred needs 1 (logit) or 2 (class scores) channels, got {pred.shape[1]}")
        return prob.sigmoid() if self.invpt_quirk else prob

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add per-threshold true-positive, predicted-positive and actual-positive counts."""
        _check_batch(pred, target, "SaliencyMeter")
        labels = _label_map(target, "SaliencyMeter")
        valid = labels != self.ignore_index
        prob = self.probability(pred)[valid]
        positive = labels[valid] > 0
        thresholds = self.thresholds.to(prob.device)
        levels = torch.bucketize(prob, thresholds, right=True)  # number of thresholds <= prob
        t = len(thresholds)
        self._add("predicted", _count_at_least(levels, t))
        self._add("tp", _count_at_least(levels[positive], t))
        self._add("actual", positive.sum().expand(t))

    def compute(self) -> dict[str, float]:
        s = {k: v.double() for k, v in self._state.items()}
        f = _f_beta(s["tp"], s["predicted"], s["actual"], self.beta_sq)
        return {"maxF": 100.0 * float(f.max())}


def _count_at_least(levels: Tensor, num_thresholds: int) -> Tensor:
    """For k in [0, T): how many entries have level > k, i.e. are positive at threshold k."""
    hist = torch.bincount(levels, minlength=num_thresholds + 1)
    return hist.flip(0).cumsum(0).flip(0)[1:]


class RegressionMeter(Meter):
    """Mean absolute and root-mean-square error over valid elements of a dense regression task.

    ``l1 = sum |p - g| / n``, ``rmse = sqrt(sum (p - g)^2 / n)`` with n the number of valid
    elements (pixels x channels); a pixel is invalid when any channel equals ``ignore_value``.
    ``metric`` names the primary score and is listed first; both are always reported.
    """

    METRICS = ("l1", "rmse")

    def __init__(self, metric: str = "l1", ignore_value: float | None = IGNORE_INDEX) -> None:
        if metric not in self.METRICS:
            raise ValueError(f"RegressionMeter: metric must be one of {self.METRICS}, got {metric!r}")
        self.metric = metric
        self.ignore_value = ignore_value
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        return {
            "abs_err": torch.zeros((), dtype=torch.float64),
            "sq_err": torch.zeros((), dtype=torch.float64),
            "n_valid": torch.zeros((), dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add absolute and squared error sums over valid elements."""
        _check_batch(pred, target, "RegressionMeter")
        if pred.shape != target.shape:
            raise ValueError(
                f"RegressionMeter: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
            )
        gt = target.double()
        if self.ignore_value is None:
            valid = torch.ones_like(gt, dtype=torch.bool)
        else:
            valid = (gt != self.ignore_value).all(dim=1, keepdim=True).expand_as(gt)
        err = (pred.double() - gt)[valid]
        self._add("abs_err", err.abs().sum())
        self._add("sq_err", err.square().sum())
        self._add("n_valid", valid.sum())

    def compute(self) -> dict[str, float]:
        n = max(int(self._state["n_valid"]), 1)
        scores = {
            "l1": float(self._state["abs_err"]) / n,
            "rmse": math.sqrt(float(self._state["sq_err"]) / n),
        }
        return {self.metric: scores[self.metric], **scores}
