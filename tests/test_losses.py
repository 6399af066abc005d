"""Task losses against hand-computed values (InvPT conventions)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tokenmtl.losses import (
    balanced_bce_loss,
    cross_entropy_loss,
    depth_l1_loss,
    normals_l1_loss,
    regression_loss,
    saliency_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_balanced_bce_matches_hand_computed_2x2():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 255.0]]]])  # last pixel ignored
    w = 0.95
    # positives: -w log s(x) = w softplus(-x); negatives: -(1-w) log(1-s(x)) = (1-w) softplus(x)
    terms = [w * softplus(-0.0), (1 - w) * softplus(2.0), (1 - w) * softplus(-1.0)]
    expected = sum(terms) / 3  # = (0.658490 + 0.106346 + 0.015663) / 3
    assert expected == pytest.approx(0.260166, abs=1e-6)
    loss = balanced_bce_loss(logits, target, pos_weight=w)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_balanced_bce_equals_invpt_pos_weight_then_divide():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 5)
    target = (torch.rand(2, 1, 5, 5) > 0.7).float()
    w = 0.95
    invpt = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(w / (1 - w))) / (1 / (1 - w))
    assert balanced_bce_loss(logits, target, pos_weight=w).item() == pytest.approx(invpt.item())


def test_balanced_bce_rejects_pos_weight_of_one():
    with pytest.raises(ValueError, match="pos_weight"):
        balanced_bce_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), pos_weight=1.0)


def test_cross_entropy_ignores_255_pixels():
    torch.manual_seed(0)
    pred = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 2], [255, 1]]])
    log_p = pred.log_softmax(dim=1)[0]
    expected = -(log_p[0, 0, 0] + log_p[2, 0, 1] + log_p[1, 1, 1]) / 3
    assert cross_entropy_loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = pred.clone()
    changed[0, :, 1, 0] = torch.tensor([50.0, -50.0, 3.0])  # the ignored pixel
    assert cross_entropy_loss(changed, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_entropy_accepts_channel_dim_target():
    pred = torch.zeros(1, 4, 2, 2)
    target = torch.tensor([[[[0, 1], [2, 3]]]])
    assert cross_entropy_loss(pred, target).item() == pytest.approx(math.log(4))


def test_depth_l1_masks_zero_and_255():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [5.0, 255.0]]]])
    assert depth_l1_loss(pred, target).item() == pytest.approx((1.0 + 2.0) / 2)


def test_normals_loss_is_invariant_to_prediction_scale():
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 4, 4)
    target = F.normalize(torch.randn(2, 3, 4, 4), dim=1)
    assert normals_l1_loss(pred, target).item() == pytest.approx(normals_l1_loss(7.5 * pred, target).item(), rel=1e-6)


def test_normals_loss_sums_channels_and_skips_invalid_pixels():
    pred = torch.zeros(1, 3, 1, 3)
    pred[0, :, 0, 0] = torch.tensor([0.0, 0.0, 2.0])  # = target after normalising: 0
    pred[0, :, 0, 1] = torch.tensor([3.0, 0.0, 0.0])  # (1,0,0) vs (0,0,1): |1| + |0| + |-1| = 2
    pred[0, :, 0, 2] = torch.tensor([1.0, 1.0, 1.0])
    target = torch.zeros(1, 3, 1, 3)
    target[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    target[0, :, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # third pixel: zero vector = invalid
    assert normals_l1_loss(pred, target).item() == pytest.approx((0.0 + 2.0) / 2)
    target[0, :, 0, 1] = 255.0  # now ignored too
    assert normals_l1_loss(pred, target).item() == pytest.approx(0.0, abs=1e-7)


def test_saliency_two_channel_balanced_ce_hand_value():
    pred = torch.zeros(1, 2, 2, 2)  # CE = ln 2 at every pixel
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # w_pos = negative fraction = 3/4: weights (class 0, class 1) = (1/4, 3/4); sum / n_valid
    expected = (0.75 * math.log(2) + 3 * 0.25 * math.log(2)) / 4
    assert saliency_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_saliency_one_channel_uses_batch_balanced_bce():
    logits = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    w = 0.75  # negative fraction
    expected = (w * math.log(2) + 3 * (1 - w) * math.log(2)) / 4
    assert saliency_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_l1_and_mse_with_ignore():
    pred = torch.tensor([[[[1.0, 2.0, 0.0]], [[3.0, 4.0, 0.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[[0.0, 2.0, 255.0]], [[1.0, 5.0, 7.0]]]])  # last pixel invalid
    assert regression_loss(pred, target, kind="l1").item() == pytest.approx((1 + 0 + 2 + 1) / 4)
    assert regression_loss(pred, target, kind="mse").item() == pytest.approx((1 + 0 + 4 + 1) / 4)
    with pytest.raises(ValueError, match="kind"):
        regression_loss(pred, target, kind="huber")


ALL_IGNORED = [
    (cross_entropy_loss, torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255)),
    (depth_l1_loss, torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),
    (normals_l1_loss, torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)),
    (balanced_bce_loss, torch.randn(2, 1, 4, 4), torch.full((2, 1, 4, 4), 255.0)),
    (saliency_loss, torch.randn(2, 2, 4, 4), torch.full((2, 1, 4, 4), 255.0)),
    (saliency_loss, torch.randn(2, 1, 4, 4), torch.full((2, 1, 4, 4), 255.0)),
    (regression_loss, torch.randn(2, 2, 4, 4), torch.full((2, 2, 4, 4), 255.0)),
]


@pytest.mark.parametrize("loss_fn, pred, target", ALL_IGNORED)
def test_all_ignored_batch_gives_zero_loss_with_grad(loss_fn, pred, target):
    pred = pred.clone().requires_grad_(True)
    loss = loss_fn(pred, target)
    assert loss.grad_fn is not None
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_spatial_mismatch_is_reported():
    with pytest.raises(ValueError, match="upsample"):
        cross_entropy_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
