"""The fast EdgeMeter gives the reference implementation's odsF / oisF / AP, and one thinning.

``tests/edge_reference.py`` is the previous EdgeMeter (one SciPy Hopcroft-Karp call per
threshold), kept verbatim. Random maps come in two kinds: sharp and accurate (the case that made
the reference slow) and blurry and noisy, with thin ground-truth boundaries.
"""

import math
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

import edge_reference as reference
from tokenmtl.data.pascal import thin as pascal_thin
from tokenmtl.metrics.edge_matching import GrowingMatching, pairs_within
from tokenmtl.metrics.edges import EdgeMeter, match_count, thin_boundaries
from tokenmtl.metrics.thinning import thin, thinning_tables


def boundary_map(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Thin boundaries (~2% of pixels) between the cells of a random Voronoi partition."""
    cells = max(4, height * width // 4000)
    seeds = np.zeros((height, width), dtype=bool)
    seeds[rng.integers(0, height, cells), rng.integers(0, width, cells)] = True
    _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    label = iy * width + ix
    edge = np.zeros((height, width), dtype=bool)
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    edge[:-1] |= label[1:] != label[:-1]
    return edge


def prediction_logits(gt: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``sharp``: confident on the boundary, low noise; ``blurry``: smoothed and noisy."""
    if kind == "sharp":
        return np.where(gt, 3.0, -4.0) + 0.7 * rng.standard_normal(gt.shape)
    if kind == "blurry":
        smooth = ndimage.gaussian_filter(gt.astype(np.float64), 2.0)
        return 8.0 * smooth / max(smooth.max(), 1e-12) - 3.0 + 1.2 * rng.standard_normal(gt.shape)
    raise ValueError(f"prediction_logits: kind must be 'sharp' or 'blurry', got {kind!r}")


def synthetic_batch(
    height: int, width: int, kind: str, seed: int, images: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of shape (images, 1, H, W) for EdgeMeter.update."""
    rng = np.random.default_rng(seed)
    gts = [boundary_map(height, width, rng) for _ in range(images)]
    logits = np.stack([prediction_logits(gt, kind, rng) for gt in gts])
    targets = torch.from_numpy(np.stack(gts))[:, None].float()
    return torch.from_numpy(logits)[:, None].float(), targets


def assert_same_scores(batches, **options) -> None:
    """Fast and reference meters agree on every count and on odsF, oisF, AP to 1e-9."""
    fast, slow = EdgeMeter(**options), reference.EdgeMeter(**options)
    for pred, target in batches:
        fast.update(pred, target)
        slow.update(pred, target)
    for name, value in slow.state_tensors().items():
        assert torch.equal(fast.state_tensors()[name], value), name
    got, want = fast.compute(), slow.compute()
    for name in ("odsF", "oisF", "ap", "ods_threshold"):
        assert got[name] == pytest.approx(want[name], abs=1e-9), name


# ---------------------------------------------------------------------------------------------
# Scores equal the reference's


def line(size: int, column: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., 4:-4, column] = True
    return mask


def logits_of(mask: torch.Tensor, prob: float = 0.9) -> torch.Tensor:
    return torch.where(mask, math.log(prob / (1 - prob)), -math.log(prob / (1 - prob))).float()


def padded_case() -> tuple[torch.Tensor, torch.Tensor]:
    gt = torch.zeros(1, 1, 40, 40)
    gt[..., 20:, :] = 255.0
    gt[..., 5, 3:17] = 1.0
    pred = torch.zeros_like(gt, dtype=torch.bool)
    pred[..., 6, 3:17] = True
    pred[..., 30, :] = True
    return logits_of(pred), gt


def hand_cases():
    """The inputs of the EdgeMeter tests in tests/test_metrics.py, with their options."""
    torch.manual_seed(0)
    random_gt = (torch.rand(4, 1, 16, 16) < 0.1).float()
    random_pred = torch.randn(4, 1, 16, 16) + 3 * random_gt
    thick = line(24, 12) | line(24, 11) | line(24, 13)
    one_to_one = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    one_to_one[..., 5, 5] = True
    two_preds = one_to_one.clone()
    two_preds[..., 5, 6] = True
    return [
        ([(logits_of(line(32, 10)), line(32, 10).float())], {"tolerance": 0.0075}),
        ([(logits_of(line(32, 11)), line(32, 10).float())], {"tolerance": 1.2 / (32 * 2**0.5)}),
        ([(logits_of(line(32, 11)), line(32, 10).float())], {"tolerance": 0.9 / (32 * 2**0.5)}),
        ([(logits_of(two_preds), one_to_one.float())], {"tolerance": 1.5 / (12 * 2**0.5)}),
        ([padded_case()], {"tolerance": 1.1 / math.hypot(20, 40)}),
        ([(random_pred[:1], random_gt[:1]), (random_pred[1:], random_gt[1:])], {"tolerance": 0.05}),
        ([(logits_of(thick), line(24, 12).float())], {"tolerance": 0.01, "thin": False}),
        ([(logits_of(thick), line(24, 12).float())], {"tolerance": 0.01, "thin": True}),
    ]


@pytest.mark.parametrize("case", range(len(hand_cases())))
def test_hand_cases_score_as_the_reference(case):
    batches, options = hand_cases()[case]
    assert_same_scores(batches, **options)


@pytest.mark.parametrize("kind", ["sharp", "blurry"])
@pytest.mark.parametrize(
    ("height", "width", "tolerance", "seed"),
    [
        (48, 64, 0.011, 0),
        (48, 64, 0.03, 1),
        (106, 140, 0.011, 2),
        (106, 140, 0.0075, 3),
        (106, 140, 0.02, 4),
        (75, 100, 0.05, 5),
    ],
)
def test_random_maps_score_as_the_reference(kind, height, width, tolerance, seed):
    batches = [synthetic_batch(height, width, kind, seed, images=2)]
    assert_same_scores(batches, tolerance=tolerance)


@pytest.mark.parametrize("kind", ["sharp", "blurry"])
@pytest.mark.parametrize(
    ("height", "width", "tolerance", "seed"), [(40, 56, 0.011, 10), (64, 84, 0.03, 11), (53, 70, 0.02, 12)]
)
def test_random_maps_with_thinning_score_as_the_reference(kind, height, width, tolerance, seed):
    batches = [synthetic_batch(height, width, kind, seed)]
    assert_same_scores(batches, tolerance=tolerance, thin=True, thresholds=33)


def test_padded_batches_and_explicit_thresholds_score_as_the_reference():
    pred, target = synthetic_batch(64, 80, "sharp", seed=20, images=3)
    target[0, :, 40:, :] = 255.0  # padding: neither prediction nor ground truth
    target[2, :, :, 60:] = 255.0
    blurry = synthetic_batch(64, 80, "blurry", seed=21, images=2)
    options = {"tolerance": 0.02, "thresholds": [0.05, 0.3, 0.5, 0.51, 0.9]}
    assert_same_scores([(pred, target), blurry], **options)


def test_empty_prediction_and_empty_ground_truth_score_as_the_reference():
    pred, target = synthetic_batch(32, 40, "sharp", seed=30, images=2)
    pred[0] = -20.0  # nothing predicted
    target[1] = 0.0  # no ground truth
    assert_same_scores([(pred, target)], tolerance=0.05)
    assert_same_scores([(pred, target)], tolerance=0.05, thin=True, thresholds=9)


def test_sharp_map_that_stalled_the_reference_takes_well_under_ten_seconds():
    """212x280 sharp map: the reference's Hopcroft-Karp took minutes (module docstring)."""
    pred, target = synthetic_batch(212, 280, "sharp", seed=0)
    meter = EdgeMeter(tolerance=0.011)
    start = time.process_time()
    meter.update(pred, target)
    assert time.process_time() - start < 10.0
    assert meter.compute()["odsF"] == pytest.approx(100.0)  # sharp and exact: F = 1 somewhere


# ---------------------------------------------------------------------------------------------
# The growing matching itself


def random_pairs(rng: np.random.Generator, points: int, radius: float):
    """Random pixels of a small image, and their pairs within ``radius``."""
    cells = np.array([(y, x) for y in range(12) for x in range(12)])
    pred = cells[rng.permutation(len(cells))[:points]]
    gt = cells[rng.permutation(len(cells))[: points // 2]]
    id_map = -np.ones((1, 12, 12), np.int64)
    id_map[0, pred[:, 0], pred[:, 1]] = np.arange(len(pred))
    gt3 = np.concatenate([np.zeros((len(gt), 1), np.int64), gt], axis=1)
    cols, rows = pairs_within(gt3, id_map, np.array([radius**2 * (1 + 1e-9)]))
    order = np.argsort(rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(pred)))])
    return pred, gt, indptr, cols[order]


@pytest.mark.parametrize("tree_rounds", [0, 1, 4])  # 0: max flow only
@pytest.mark.parametrize("seed", range(4))
def test_rows_added_and_removed_keep_a_maximum_matching(seed, tree_rounds):
    """Non-nested sequence of present sets: matched count equals a fresh matching each time."""
    rng = np.random.default_rng(seed)
    pred, gt, indptr, cols = random_pairs(rng, points=60, radius=2.3)
    matching = GrowingMatching(indptr, cols, len(gt), nested=False, tree_rounds=tree_rounds)
    present = np.zeros(len(pred), dtype=bool)
    for _ in range(8):
        wanted = rng.random(len(pred)) < rng.uniform(0.2, 0.9)
        matching.remove(np.flatnonzero(present & ~wanted))
        matching.add(np.flatnonzero(wanted & ~present))
        present = wanted
        rows = matching.matched_rows()
        assert present[rows].all()
        assert len(np.unique(matching.row_mate[rows])) == len(rows)  # one-to-one
        expected = reference.match_count(pred[present], gt, 2.3)
        assert len(rows) == expected


@pytest.mark.parametrize("tree_rounds", [0, 1, 4])
@pytest.mark.parametrize("seed", range(4))
def test_nested_growth_matches_a_fresh_matching_at_every_step(seed, tree_rounds):
    rng = np.random.default_rng(seed)
    pred, gt, indptr, cols = random_pairs(rng, points=80, radius=1.5)
    matching = GrowingMatching(indptr, cols, len(gt), nested=True, tree_rounds=tree_rounds)
    order = rng.permutation(len(pred))
    for chunk in np.array_split(order, 7):
        matching.add(chunk)
        expected = reference.match_count(pred[matching.present], gt, 1.5)
        assert len(matching.matched_rows()) == expected
    with pytest.raises(ValueError, match="nested"):
        matching.remove(order[:1])


def curve_graph(rng: np.random.Generator, radius: float):
    """Ground truth along a long curve and a jittered copy as prediction, with their pairs."""
    t = np.linspace(0, 6, 400)
    curve = np.stack([40 + 30 * np.sin(t), 10 + 13 * t], axis=1).round().astype(np.int64)
    gt = np.unique(curve, axis=0)
    pred = np.unique(gt + rng.integers(-1, 2, gt.shape), axis=0)
    id_map = -np.ones((1, 80, 100), np.int64)
    id_map[0, pred[:, 0], pred[:, 1]] = np.arange(len(pred))
    gt3 = np.concatenate([np.zeros((len(gt), 1), np.int64), gt], axis=1)
    cols, rows = pairs_within(gt3, id_map, np.array([radius**2 * (1 + 1e-9)]))
    order = np.argsort(rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(pred)))])
    return pred, gt, indptr, cols[order]


@pytest.mark.parametrize("tree_rounds", [0, 1, 4])
def test_nested_growth_along_a_curve_matches_the_reference(tree_rounds):
    """Rows arrive in random batches along one long curve: long augmenting paths."""
    rng = np.random.default_rng(7)
    pred, gt, indptr, cols = curve_graph(rng, radius=2.5)
    matching = GrowingMatching(indptr, cols, len(gt), nested=True, tree_rounds=tree_rounds)
    for chunk in np.array_split(rng.permutation(len(pred)), 12):
        matching.add(chunk)
        expected = reference.match_count(pred[matching.present], gt, 2.5)
        assert len(matching.matched_rows()) == expected


@pytest.mark.parametrize("seed", range(3))
def test_match_count_equals_the_reference_on_long_thin_curves(seed):
    """Points along a curve, the graph shape that made the reference slow."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 6, 400)
    curve = np.stack([40 + 30 * np.sin(t), 10 + 13 * t], axis=1).round().astype(np.int64)
    gt = np.unique(curve, axis=0)
    pred = np.unique(gt + rng.integers(-1, 2, gt.shape), axis=0)
    for radius in (1.0, 2.5, 4.0):
        assert match_count(pred, gt, radius) == reference.match_count(pred, gt, radius)


# ---------------------------------------------------------------------------------------------
# One thinning


def test_one_thinning_serves_the_metric_and_the_pascal_loader():
    assert pascal_thin is thin
    assert thin_boundaries is thin


def test_thinning_tables_are_the_two_previous_copies():
    first, second = thinning_tables()
    assert (first == reference._THIN_FIRST).all()
    assert (second == reference._THIN_SECOND).all()
    assert first.sum() > 0 and second.sum() > 0 and (first != second).any()


@pytest.mark.parametrize("seed", range(5))
def test_thinning_equals_the_reference_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(8, 50, size=2)
    maps = rng.random((4, height, width)) < rng.uniform(0.03, 0.5)
    maps = ndimage.binary_dilation(maps, structure=np.ones((1, 3, 3)), iterations=int(seed % 3))
    thinned = thin(maps)
    assert (thinned == reference.thin_boundaries(maps)).all()
    assert (thin(maps[1]) == thinned[1]).all()  # a single (H, W) map works the same


def test_thinning_a_filled_square_leaves_its_centre():
    square = np.zeros((9, 9), dtype=bool)
    square[2:7, 2:7] = True
    thinned = thin(square)
    assert thinned.sum() == 1 and thinned[4, 4]


def test_thinning_rejects_a_vector():
    with pytest.raises(ValueError, match="got shape"):
        thin(np.ones(5, dtype=bool))
