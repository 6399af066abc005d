"""Meters against hand-computed cases: values, dataset-level accumulation, ignore handling."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenmtl.metrics import (
    DepthMeter,
    EdgeMeter,
    NormalsMeter,
    RegressionMeter,
    SaliencyMeter,
    SemsegMeter,
)
from tokenmtl.metrics.edges import match_count, thin_boundaries


def one_hot_logits(labels: list[list[int]], num_classes: int) -> torch.Tensor:
    """(1, C, H, W) logits whose argmax is ``labels``."""
    return 10.0 * F.one_hot(torch.tensor(labels), num_classes).permute(2, 0, 1)[None].float()


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------------------------------------
# Semantic segmentation


def test_semseg_miou_hand_case():
    gt = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = one_hot_logits([[0, 1, 1], [1, 0, 2]], 3)
    meter = SemsegMeter(3)
    meter.update(pred, gt)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0
    assert meter.per_class_iou() == pytest.approx([1 / 3, 2 / 3, 0.0])
    scores = meter.compute()
    assert scores["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 0) / 3)
    assert scores["pixel_acc"] == pytest.approx(100 * 3 / 5)


def test_semseg_accumulates_dataset_level_not_mean_of_batches():
    batch_a = (one_hot_logits([[0, 0, 0, 0]], 2), torch.tensor([[[0, 0, 0, 0]]]))
    batch_b = (one_hot_logits([[1, 0, 0, 0]], 2), torch.tensor([[[1, 1, 0, 0]]]))
    meter = SemsegMeter(2)
    for pred, gt in (batch_a, batch_b):
        meter.update(pred, gt)
    # dataset: class 0 tp 6 fp 1 -> 6/7; class 1 tp 1 fn 1 -> 1/2
    assert meter.compute()["mIoU"] == pytest.approx(100 * (6 / 7 + 1 / 2) / 2)
    concat = SemsegMeter(2)
    concat.update(torch.cat([batch_a[0], batch_b[0]]), torch.cat([batch_a[1], batch_b[1]]))
    assert concat.compute()["mIoU"] == pytest.approx(meter.compute()["mIoU"])
    per_batch = []
    for pred, gt in (batch_a, batch_b):
        single = SemsegMeter(2)
        single.update(pred, gt)
        per_batch.append(single.compute()["mIoU"])
    assert per_batch == pytest.approx([50.0, 100 * (2 / 3 + 1 / 2) / 2])
    assert np.mean(per_batch) != pytest.approx(meter.compute()["mIoU"], abs=1.0)


def test_semseg_rejects_labels_outside_classes():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        SemsegMeter(2).update(one_hot_logits([[0, 1]], 2), torch.tensor([[[0, 5]]]))


def test_state_tensors_sum_like_an_all_reduce():
    torch.manual_seed(0)
    pred, gt = torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4, 5, 5))
    whole, rank0, rank1 = SemsegMeter(3), SemsegMeter(3), SemsegMeter(3)
    whole.update(pred, gt)
    rank0.update(pred[:2], gt[:2])
    rank1.update(pred[2:], gt[2:])
    for name, tensor in rank0.state_tensors().items():
        tensor += rank1.state_tensors()[name]  # what all_reduce(SUM) does in place
    assert rank0.compute() == pytest.approx(whole.compute())
    rank0.reset()
    assert int(rank0.state_tensors()["confusion"].sum()) == 0


# ---------------------------------------------------------------------------------------------
# Depth


def test_depth_hand_case_masks_zero_and_255():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gt = torch.tensor([[[[2.0, 0.0], [3.0, 255.0]]]])
    meter = DepthMeter()
    meter.update(pred, gt)
    scores = meter.compute()
    assert scores["rmse"] == pytest.approx(math.sqrt((1.0 + 0.0) / 2))
    assert scores["abs_rel"] == pytest.approx((1 / 2 + 0) / 2)
    assert scores["log_rmse"] == pytest.approx(math.log(2) / math.sqrt(2))


def test_depth_rmse_is_pixel_level_over_the_split():
    meter = DepthMeter()
    meter.update(torch.tensor([[[[1.0]]]]), torch.tensor([[[[2.0]]]]))  # 1 pixel, error 1
    meter.update(torch.full((1, 1, 1, 3), 3.0), torch.full((1, 1, 1, 3), 5.0))  # error 2
    assert meter.compute()["rmse"] == pytest.approx(math.sqrt((1 + 3 * 4) / 4))  # 1.8028
    assert meter.compute()["rmse"] != pytest.approx((1.0 + 2.0) / 2)  # mean of batches: 1.5


def test_depth_clamps_negative_predictions_at_zero():
    meter = DepthMeter()
    meter.update(torch.tensor([[[[-1.0]]]]), torch.tensor([[[[1.0]]]]))
    assert meter.compute()["rmse"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Normals


def normals_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Angles 0, 90, 45, 135 degrees on four valid pixels, plus two invalid pixels."""
    pred = torch.tensor([[0, 0, 2], [1, 0, 0], [1, 0, 1], [0, 1, -1], [1, 0, 0], [1, 0, 0]], dtype=torch.float32)
    gt = torch.tensor(
        [[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0], [255, 255, 255]],
        dtype=torch.float32,
    )
    return pred.T.reshape(1, 3, 1, 6), gt.T.reshape(1, 3, 1, 6)


def test_normals_angles_hand_case():
    meter = NormalsMeter()
    meter.update(*normals_case())
    scores = meter.compute()
    assert scores["mean"] == pytest.approx((0 + 90 + 45 + 135) / 4)
    assert scores["rmse"] == pytest.approx(math.sqrt((0 + 90**2 + 45**2 + 135**2) / 4))
    assert scores["median"] == pytest.approx(45.0, abs=0.01)  # histogram of 0.01 deg bins
    assert scores["within_11.25"] == pytest.approx(25.0)
    assert scores["within_30"] == pytest.approx(25.0)


def test_normals_opposite_vectors_are_180_degrees():
    meter = NormalsMeter()
    meter.update(torch.tensor([0.0, 0.0, -1.0]).reshape(1, 3, 1, 1), torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1))
    assert meter.compute()["mean"] == pytest.approx(180.0)


def test_normals_accumulation_equals_concatenation():
    torch.manual_seed(0)
    pred, gt = torch.randn(4, 3, 6, 6), F.normalize(torch.randn(4, 3, 6, 6), dim=1)
    gt[0, :, :3] = 0.0  # some invalid pixels, unevenly spread over batches
    split, whole = NormalsMeter(), NormalsMeter()
    split.update(pred[:1], gt[:1])
    split.update(pred[1:], gt[1:])
    whole.update(pred, gt)
    assert split.compute() == pytest.approx(whole.compute())


# ---------------------------------------------------------------------------------------------
# Saliency


def saliency_logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([logit(p) for p in probs]).reshape(1, 1, 1, -1)


def test_saliency_maxf_hand_case():
    probs, gt = [0.92, 0.62, 0.32, 0.12], torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
    meter = SaliencyMeter()
    meter.update(saliency_logits(probs), gt)
    # F(b^2=0.3) at: t<=0.1: P 1/2 R 1 -> .5652; t in (.12,.32]: P 2/3 R 1 -> .7222;
    # t in (.32,.62]: P 1/2 R 1/2 -> .5; t in (.62,.92]: P 1 R 1/2 -> 1.3*.5/.8 = .8125
    assert meter.compute()["maxF"] == pytest.approx(81.25)


def test_saliency_two_channel_scores_like_one_channel():
    probs, gt = [0.92, 0.62, 0.32, 0.12], torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
    one = saliency_logits(probs)
    two = torch.cat([torch.zeros_like(one), one], dim=1)  # softmax[:, 1] = sigmoid(logit)
    meter = SaliencyMeter()
    meter.update(two, gt)
    assert meter.compute()["maxF"] == pytest.approx(81.25)


def test_saliency_invpt_quirk_applies_a_second_sigmoid():
    probs, gt = [0.92, 0.85], torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    plain, quirk = SaliencyMeter(), SaliencyMeter(invpt_quirk=True)
    plain.update(saliency_logits(probs), gt)
    quirk.update(saliency_logits(probs), gt)
    assert plain.compute()["maxF"] == pytest.approx(100.0)  # t = 0.9 separates them
    # sigmoid(.92) = .715, sigmoid(.85) = .701: both >= .70, none >= .75 -> P 1/2, R 1
    assert quirk.compute()["maxF"] == pytest.approx(100 * 1.3 * 0.5 / (0.15 + 1))


def test_saliency_ignores_255():
    gt = torch.tensor([1.0, 255.0]).reshape(1, 1, 1, 2)
    meter = SaliencyMeter()
    meter.update(saliency_logits([0.9, 0.9]), gt)
    assert meter.compute()["maxF"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# Regression


def test_regression_l1_and_rmse_hand_case():
    pred = torch.tensor([[[[1.0, 2.0, 9.0]], [[3.0, 4.0, 9.0]]]])
    gt = torch.tensor([[[[0.0, 2.0, 255.0]], [[1.0, 5.0, 0.0]]]])  # last pixel invalid
    meter = RegressionMeter(metric="rmse")
    meter.update(pred, gt)
    scores = meter.compute()
    assert list(scores)[0] == "rmse"
    assert scores["l1"] == pytest.approx((1 + 0 + 2 + 1) / 4)
    assert scores["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4 + 1) / 4))
    with pytest.raises(ValueError, match="metric"):
        RegressionMeter(metric="mae")


# ---------------------------------------------------------------------------------------------
# Edges (odsF)


def edge_logits(mask: torch.Tensor, prob: float = 0.99) -> torch.Tensor:
    """Logits that are ``prob`` on the mask and 1 - prob elsewhere."""
    return torch.where(mask, logit(prob), -logit(prob)).float()


def vertical_line(size: int, column: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., 4:-4, column] = True
    return mask


def test_odsf_perfect_prediction_is_100():
    gt = vertical_line(32, 10)
    meter = EdgeMeter(tolerance=0.0075)
    meter.update(edge_logits(gt), gt.float())
    scores = meter.compute()
    assert scores["odsF"] == pytest.approx(100.0)
    assert scores["oisF"] == pytest.approx(100.0)


def test_odsf_one_pixel_shift_matches_only_within_tolerance():
    gt, pred = vertical_line(32, 10), vertical_line(32, 11)
    diagonal = 32 * math.sqrt(2)  # 45.25 px
    within, below = EdgeMeter(tolerance=1.2 / diagonal), EdgeMeter(tolerance=0.9 / diagonal)
    for meter in (within, below):
        meter.update(edge_logits(pred), gt.float())
    assert within.compute()["odsF"] == pytest.approx(100.0)
    assert below.compute()["odsF"] == pytest.approx(0.0)


def test_odsf_matching_is_one_to_one():
    gt = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    gt[..., 5, 5] = True
    pred = gt.clone()
    pred[..., 5, 6] = True  # two predicted pixels next to one gt pixel
    meter = EdgeMeter(tolerance=1.5 / (12 * math.sqrt(2)))
    meter.update(edge_logits(pred), gt.float())
    # one match: P = 1/2, R = 1 -> F = 2/3
    assert meter.compute()["odsF"] == pytest.approx(100 * 2 / 3)


def brute_force_matching(pred: list, gt: list, radius: float) -> int:
    """Maximum one-to-one matching by exhaustive search over each predicted pixel's choice."""
    adjacent = [[j for j, g in enumerate(gt) if math.dist(p, g) <= radius] for p in pred]

    def best(i: int, used: frozenset) -> int:
        if i == len(pred):
            return 0
        options = [best(i + 1, used)]
        options += [1 + best(i + 1, used | {j}) for j in adjacent[i] if j not in used]
        return max(options)

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(6))
def test_match_count_equals_brute_force_on_random_points(seed):
    rng = np.random.default_rng(seed)
    cells = [tuple(c) for c in itertools.product(range(6), range(6))]
    pick = rng.permutation(len(cells))
    pred = [cells[i] for i in pick[:7]]
    gt = [cells[i] for i in rng.permutation(len(cells))[:6]]
    for radius in (1.0, 1.5, 2.3):
        assert match_count(np.array(pred), np.array(gt), radius) == brute_force_matching(pred, gt, radius)


@pytest.mark.parametrize("seed", range(3))
def test_edge_meter_counts_equal_a_separate_matching_per_threshold(seed):
    """The single weighted assignment gives a maximum matching at every threshold at once."""
    rng = np.random.default_rng(seed)
    images, size, thresholds = 2, 16, [0.2, 0.4, 0.6, 0.8]
    gt = rng.random((images, size, size)) < 0.15
    prob = np.clip(rng.random((images, size, size)) * 0.6 + 0.35 * gt, 0.01, 0.99)
    meter = EdgeMeter(tolerance=1.5 / (size * math.sqrt(2)), thresholds=thresholds)
    pred_logits = torch.from_numpy(np.log(prob / (1 - prob)))[:, None]
    meter.update(pred_logits, torch.from_numpy(gt.astype(np.float32))[:, None])
    counts = meter.state_tensors()
    for k, t in enumerate(thresholds):
        per_image = [(np.argwhere(prob[i] >= t), np.argwhere(gt[i])) for i in range(images)]
        expected = sum(match_count(pred, true, 1.5) for pred, true in per_image)
        assert int(counts["matched"][k]) == expected
        assert int(counts["predicted"][k]) == sum(len(pred) for pred, _ in per_image)
    assert int(counts["actual"]) == int(gt.sum())


def test_edge_meter_ignores_255_padding_and_uses_valid_diagonal():
    gt = torch.zeros(1, 1, 40, 40)
    gt[..., 20:, :] = 255.0  # bottom half is padding
    gt[..., 5, 3:17] = 1.0
    pred = torch.zeros_like(gt, dtype=torch.bool)
    pred[..., 6, 3:17] = True  # shifted by one row
    pred[..., 30, :] = True  # inside the padding: not a prediction
    diagonal_valid = math.hypot(20, 40)  # 44.7 px, vs 56.6 for the padded image
    meter = EdgeMeter(tolerance=1.1 / diagonal_valid)
    meter.update(edge_logits(pred), gt)
    assert meter.compute()["odsF"] == pytest.approx(100.0)


def test_edge_meter_accumulation_equals_concatenation():
    torch.manual_seed(0)
    gt = (torch.rand(4, 1, 16, 16) < 0.1).float()
    pred = torch.randn(4, 1, 16, 16) + 3 * gt
    split, whole = EdgeMeter(tolerance=0.05), EdgeMeter(tolerance=0.05)
    split.update(pred[:1], gt[:1])
    split.update(pred[1:], gt[1:])
    whole.update(pred, gt)
    assert split.compute() == pytest.approx(whole.compute())


def test_thinning_reduces_a_thick_line_and_keeps_a_thin_one():
    thick = np.zeros((1, 9, 20), dtype=bool)
    thick[0, 3:6, 2:18] = True
    thinned = thin_boundaries(thick)
    assert thinned[0, :, 5:15].sum(axis=0).tolist() == [1] * 10  # one pixel per column
    assert thinned[0, 4, 5:15].all()  # on the medial row
    line = np.zeros((1, 9, 20), dtype=bool)
    line[0, 4, 2:18] = True
    assert (thin_boundaries(line) == line).all()


def test_thinning_raises_precision_of_thick_predictions():
    gt = vertical_line(24, 12)
    thick = gt | vertical_line(24, 11) | vertical_line(24, 13)
    plain, thin = EdgeMeter(tolerance=0.01, thin=False), EdgeMeter(tolerance=0.01, thin=True)
    for meter in (plain, thin):
        meter.update(edge_logits(thick), gt.float())
    assert plain.compute()["odsF"] == pytest.approx(100 * 2 * (1 / 3) / (1 / 3 + 1))  # P = 1/3
    # thinning keeps the middle column, one pixel shorter at each end: P = 1, R = 14/16
    assert thin.compute()["odsF"] == pytest.approx(100 * 2 * 0.875 / 1.875)


# ---------------------------------------------------------------------------------------------
# Task factories: every spec's loss and meter run on a batch laid out as in internals.md


def task_batches() -> dict:
    torch.manual_seed(0)
    b, h, w = 2, 8, 8
    normals = F.normalize(torch.randn(b, 3, h, w), dim=1)
    return {
        "semseg": torch.randint(0, 5, (b, h, w)),
        "human_parts": torch.randint(0, 7, (b, h, w)),
        "depth": torch.rand(b, 1, h, w) + 0.5,
        "normals": normals,
        "edge": (torch.rand(b, 1, h, w) < 0.2).float(),
        "saliency": (torch.rand(b, 1, h, w) < 0.4).float(),
        "curvature": torch.randn(b, 2, h, w),
    }


def test_task_factories_loss_and_meter_run_end_to_end():
    from tokenmtl.tasks import (
        INVPT_LOSS_WEIGHTS,
        depth_task,
        edge_task,
        human_parts_task,
        normals_task,
        regression_task,
        saliency_task,
        semseg_task,
    )

    specs = [
        semseg_task(5),
        human_parts_task(),
        depth_task(),
        normals_task(),
        edge_task(tolerance=0.0075),
        saliency_task(),
        regression_task("curvature", 2, metric="rmse"),
    ]
    targets = task_batches()
    for spec in specs:
        target = targets[spec.name]
        pred = torch.randn(target.shape[0], spec.out_channels, 8, 8, requires_grad=True)
        loss = spec.loss(pred, target)
        loss.backward()
        assert loss.dim() == 0 and torch.isfinite(loss), spec.name
        meter = spec.make_meter()
        meter.update(pred.detach(), target)
        assert spec.primary_metric in meter.compute(), spec.name
    assert INVPT_LOSS_WEIGHTS["pascal"]["edge"] == 50.0
    assert set(INVPT_LOSS_WEIGHTS["nyud"]) == {"semseg", "depth", "normals", "edge"}
