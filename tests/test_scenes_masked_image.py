"""The `masked_image` pretraining task of `scenes`: masked-patch reconstruction of the input."""

from __future__ import annotations

import pytest
import torch

from tokenmtl.data.scenes import ScenesBenchmark
from tokenmtl.data.scenes.dataset import MASK_IGNORE, MASKED_IMAGE


def bench(tmp_path, **kwargs) -> ScenesBenchmark:
    options = dict(image_size=24, train_size=5, val_size=3, test_size=2, cache_dir=tmp_path, progress=False)
    options.update(kwargs)
    return ScenesBenchmark(**options)


def test_hidden_squares_are_blank_in_the_input_and_the_only_scored_target(tmp_path):
    b = bench(tmp_path, mask_ratio=0.25, mask_patch=8)
    clean = b.dataset("val", train=False, tasks=["depth"])[1]["image"]
    item = b.dataset("val", train=False, tasks=["depth", MASKED_IMAGE])[1]
    target, image = item[MASKED_IMAGE], item["image"]
    assert target.shape == (3, 24, 24) and image.shape == (3, 24, 24)
    hidden = target != MASK_IGNORE
    # Whole 8x8 squares, the same in every channel: 9 squares, round(0.25 * 9) = 2 hidden.
    assert (hidden == hidden[:1]).all()
    squares = hidden[0].view(3, 8, 3, 8).permute(0, 2, 1, 3).reshape(9, 64)
    assert ((squares.all(1)) | (~squares.any(1))).all() and int(squares.all(1).sum()) == 2
    torch.testing.assert_close(target[hidden], clean[hidden])
    assert (image[hidden] == 0).all()
    torch.testing.assert_close(image[~hidden], clean[~hidden])
    # Other targets are untouched by the mask.
    assert torch.equal(item["depth"], b.dataset("val", train=False, tasks=["depth"])[1]["depth"])


def test_evaluation_masks_are_fixed_per_index_and_training_masks_vary(tmp_path):
    b = bench(tmp_path, mask_ratio=0.5, mask_patch=4)
    evaluation = b.dataset("val", train=False, tasks=[MASKED_IMAGE])
    assert torch.equal(evaluation[0][MASKED_IMAGE], evaluation[0][MASKED_IMAGE])
    masks = {tuple((evaluation[i][MASKED_IMAGE][0] != MASK_IGNORE).flatten().tolist()) for i in range(3)}
    assert len(masks) == 3
    training = b.dataset("train", train=True, tasks=[MASKED_IMAGE])
    torch.manual_seed(0)
    drawn = {tuple((training[0][MASKED_IMAGE][0] != MASK_IGNORE).flatten().tolist()) for _ in range(6)}
    assert len(drawn) > 1
    assert all(sum(m) == 18 * 16 for m in drawn)  # round(0.5 * 36) squares of 4x4 pixels


def test_the_loss_scores_only_hidden_pixels(tmp_path):
    b = bench(tmp_path, mask_ratio=0.5, mask_patch=8)
    spec = b.task_spec(MASKED_IMAGE)
    target = torch.stack([b.dataset("val", train=False, tasks=[MASKED_IMAGE])[i][MASKED_IMAGE] for i in range(2)])
    pred = torch.randn_like(target)
    hidden = target != MASK_IGNORE
    expected = ((pred - target)[hidden] ** 2).mean()
    torch.testing.assert_close(spec.loss(pred, target), expected)
    # Changing the prediction on visible pixels changes nothing.
    moved = torch.where(hidden, pred, pred + 100.0)
    torch.testing.assert_close(spec.loss(moved, target), expected)


def test_default_tasks_never_mask_and_bad_mask_options_are_refused(tmp_path):
    b = bench(tmp_path)
    assert MASKED_IMAGE in b.available_tasks and MASKED_IMAGE not in b.tasks
    assert MASKED_IMAGE not in b.dataset("val", train=False)[0]
    with pytest.raises(ValueError, match="mask_ratio"):
        bench(tmp_path, mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask_patch"):
        bench(tmp_path, mask_patch=0)
