"""Boundary detection F-measure (odsF) with one-to-one matching at a distance tolerance.

Definition (BSDS / SEISM, the numbers InvPT-family papers report):
1. ``prob = sigmoid(logit)``; for each threshold t (default: 99 thresholds
   ``linspace(1/100, 99/100)`` as Dollar's ``edgesEvalImg``), the boundary map is ``prob >= t``.
2. Predicted boundary pixels are matched one-to-one to ground-truth boundary pixels lying within
   ``tolerance * diagonal`` (Euclidean, <=), the diagonal of the image's valid region (pixels
   labelled 255 are padding: they are neither predictions nor ground truth).
3. Per threshold, the matched / predicted / ground-truth pixel counts are summed over the split;
   ``P = matched / predicted``, ``R = matched / gt``, ``F = 2PR / (P + R)``; **odsF** is the best F
   over thresholds at dataset scale. **oisF** picks the best threshold per image, then sums those
   counts; **ap** is the BSDS-style area under the dataset P-R curve (interpolated at recall
   0:0.01:1). Scores are in percent.

How this relates to the MATLAB numbers (SEISM, wrapping the BSDS ``correspondPixels``):
- Matching. ``correspondPixels`` solves a min-cost assignment (CSA) on a sparse graph with high
  outlier costs: it maximises the number of matched pairs within the tolerance and then prefers
  short distances. We compute a maximum-cardinality bipartite matching on the exact graph of
  pairs within the tolerance (augmenting paths and max flow, see "Computation now" below).
  Both are one-to-one; the counts agree whenever the sparse approximation of CSA finds a maximum
  matching, and can differ slightly otherwise.
- Thinning. SEISM's contour evaluation (``eval_cont.m``) calls ``edgesEvalImg(..., 'thin', 0)``:
  no thinning, hence ``thin=False`` by default. ``thin=True`` applies the BSDS benchmark's
  ``bwmorph(bmap, 'thin', inf)`` (Guo & Hall's algorithm, ``metrics/thinning.py``); it
  costs several passes per threshold map.
- Inputs. The MATLAB pipeline reads PNGs of ``255 * sigmoid``; we threshold the float
  probability, so thresholds falling between two PNG grey levels can differ by one level.
Results from this module are a Python re-implementation of the definition, not SEISM itself.

Why the previous implementation was slow on sharp maps (kept as ``tests/edge_reference.py``):
it called SciPy's ``maximum_bipartite_matching`` (Hopcroft-Karp) once per threshold. SciPy's
depth-first phase marks a vertex as used only when it lies on an augmenting path that succeeded;
a search that fails is not remembered, so a free row that cannot be augmented in a phase walks
every path of the layered graph, a number that grows exponentially with the depth. Sharp,
accurate maps make exactly that graph: predicted pixels sit on the ground-truth curves, each
joined to the ~2r ground-truth pixels along the curve, the matching is nearly perfect and the
remaining augmenting paths run far along the curves. Profiled on a 212x280 sharp map (1,550
ground-truth pixels, radius 3.9 px): one call on 1,525 rows and 13,564 edges took 55 s; blurry
maps have short augmenting paths (many free choices nearby) and stayed fast.

Computation now. Pairs within the tolerance are found by scanning the disc of integer offsets
around each ground-truth pixel. Without thinning the maps are nested (a pixel present at
threshold k is present at every lower one), so thresholds are visited from high to low and one
maximum matching is grown (``edge_matching.GrowingMatching``): new pixels take free neighbours
greedily, the rest are augmented along breadth-first trees (C-level searches, vertex-disjoint
paths flipped at once; a unit-capacity max flow finishes when a few rounds do not), and regions
proven unable to grow are skipped for every lower threshold. With thinning the maps are not
nested: each threshold starts from the previous threshold's matching minus the pixels thinning
removed, then augments from every unmatched pixel. Every step keeps a maximum matching, so the
counts equal the reference's (tests/test_edges_fast.py checks them to 1e-9);
``benchmarks/edge_eval.py`` measures the speed. Measured on one thread of a shared 2-core machine
(``benchmarks/results/edge_eval.json``): a 425x560 map in 0.48-0.54 s, sharp or blurry (the
previous code did not finish either in 60 s); with thinning, 1.5 s (sharp) to 3.9 s (blurry).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tokenmtl.metrics.dense import IGNORE_INDEX, Meter
from tokenmtl.metrics.edge_matching import GrowingMatching, pairs_within
from tokenmtl.metrics.thinning import thin as thin_boundaries

__all__ = ["EdgeMeter", "default_thresholds", "match_count", "thin_boundaries"]


def default_thresholds(count: int = 99) -> np.ndarray:
    """``count`` evenly spaced thresholds in (0, 1): ``linspace(1/(n+1), 1-1/(n+1), n)`` (BSDS)."""
    if count < 1:
        raise ValueError(f"default_thresholds: count must be >= 1, got {count}")
    return np.linspace(1.0 / (count + 1), 1.0 - 1.0 / (count + 1), count)


# ---------------------------------------------------------------------------------------------
# Matching


def _id_map(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Map of ``shape`` holding the index of each (image, y, x) point, -1 elsewhere."""
    id_map = -np.ones(shape, dtype=np.int64)
    id_map[tuple(points.T)] = np.arange(len(points))
    return id_map


def _in_image_zero(points: np.ndarray) -> np.ndarray:
    """(N, 2) pixel coordinates -> (N, 3) (image 0, y, x)."""
    return np.concatenate([np.zeros((len(points), 1), np.int64), points], axis=1)


def match_count(pred_points: np.ndarray, gt_points: np.ndarray, max_distance: float) -> int:
    """Size of a maximum one-to-one matching between two point sets within ``max_distance``.

    Points are (N, 2) integer pixel coordinates; pairs at distance <= max_distance may match.
    """
    pred_points = np.asarray(pred_points, dtype=np.int64).reshape(-1, 2)
    gt_points = np.asarray(gt_points, dtype=np.int64).reshape(-1, 2)
    if len(pred_points) == 0 or len(gt_points) == 0:
        return 0
    size = int(max(pred_points.max(), gt_points.max())) + 1
    pred_id = _id_map(_in_image_zero(pred_points), (1, size, size))
    radius_sq = np.array([max_distance**2 * (1 + 1e-9)])
    cols, rows = pairs_within(_in_image_zero(gt_points), pred_id, radius_sq)
    graph = _PairGraph(rows, cols, len(pred_points), len(gt_points), nested=True)
    graph.matching.add(np.arange(len(graph.candidates)))
    return len(graph.matching.matched_rows())


class _PairGraph:
    """The candidate/ground-truth pairs as a ``GrowingMatching`` over the connected candidates.

    Candidates without any ground-truth pixel in reach never match and are left out;
    ``candidates`` maps the matching's rows back to candidate indices.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, num_candidates: int, num_gt: int, nested: bool) -> None:
        order = np.argsort(rows, kind="stable")
        rows, cols = rows[order], cols[order]
        self.candidates, local = np.unique(rows, return_inverse=True)
        counts = np.bincount(local, minlength=len(self.candidates))
        indptr = np.concatenate([[0], np.cumsum(counts)])
        self.row_of = np.full(num_candidates, -1, dtype=np.int64)
        self.row_of[self.candidates] = np.arange(len(self.candidates))
        self.matching = GrowingMatching(indptr, cols, num_gt, nested=nested)


def _matched_nested(levels: np.ndarray, image_of: np.ndarray, graph: _PairGraph, num_t: int, batch: int) -> np.ndarray:
    """(T, B) maximum matching sizes when the map at threshold k is {candidates: level > k}.

    Thresholds are visited from high to low, adding each level's candidates to one growing
    maximum matching; matched candidates stay matched, so each level adds its newly matched.
    """
    matched = np.zeros((num_t, batch), np.int64)
    count = np.zeros(batch, np.int64)
    cand_levels = levels[graph.candidates]
    order = np.argsort(-cand_levels, kind="stable")
    bounds = np.searchsorted(-cand_levels[order], -np.arange(num_t, 0, -1), side="right")
    start = 0
    for k, stop in zip(range(num_t - 1, -1, -1), bounds):
        if stop > start:
            new = order[start:stop]
            graph.matching.add(new)
            won = new[graph.matching.row_mate[new] >= 0]
            count += np.bincount(image_of[graph.candidates[won]], minlength=batch)
            start = stop
        matched[k] = count
    return matched


def _count_by_level(image_of: np.ndarray, levels: np.ndarray, batch: int, num_thresholds: int) -> np.ndarray:
    """(T, B) counts of pixels with level > k per image: the pixels present at threshold k."""
    hist = np.bincount(levels * batch + image_of, minlength=(num_thresholds + 1) * batch).reshape(
        num_thresholds + 1, batch
    )
    return hist[::-1].cumsum(axis=0)[::-1][1:]


def _f_measure(matched: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """BSDS F: ``R = m / (gt + [gt==0])``, ``P = m / (pred + [pred==0])``, ``F = 2PR/(P+R)``."""
    recall = matched / np.where(actual == 0, 1, actual)
    precision = matched / np.where(predicted == 0, 1, predicted)
    total = precision + recall
    return 2 * precision * recall / np.where(total == 0, 1, total)


class EdgeMeter(Meter):
    """odsF / oisF / AP of boundary maps from dataset-level per-threshold match counts.

    ``tolerance``: matching radius as a fraction of the valid region's diagonal (0.011 NYUD,
    0.0075 PASCAL-Context); ``thresholds``: a count (evenly spaced, BSDS) or explicit values in
    (0, 1]; ``thin``: thin each thresholded map first (BSDS), off by default as in SEISM;
    ``max_pairs_per_call`` bounds memory when thinning (map pixels thinned per call). See the
    module docstring for the exact definition and how it relates to the MATLAB numbers.
    """

    def __init__(
        self,
        tolerance: float = 0.011,
        thresholds: int | Sequence[float] = 99,
        thin: bool = False,
        ignore_index: int = IGNORE_INDEX,
        max_pairs_per_call: int = 4_000_000,
    ) -> None:
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"EdgeMeter: tolerance is a fraction of the diagonal in [0, 1), got {tolerance}")
        if isinstance(thresholds, int):
            values = default_thresholds(thresholds)
        else:
            values = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float64)
            if values.size == 0 or values[0] <= 0.0 or values[-1] > 1.0:
                raise ValueError(f"EdgeMeter: thresholds must be a count or values in (0, 1], got {thresholds}")
        self.tolerance = tolerance
        self.thresholds = values
        self.thin = thin
        self.ignore_index = ignore_index
        self.max_pairs_per_call = max_pairs_per_call
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        t = len(self.thresholds)
        state = {k: torch.zeros(t, dtype=torch.int64) for k in ("matched", "predicted")}
        for name in ("actual", "ois_matched", "ois_predicted", "ois_actual"):
            state[name] = torch.zeros((), dtype=torch.int64)
        return state

    def _radius_sq(self, valid: np.ndarray) -> np.ndarray:
        """Squared matching radius per image: (tolerance * diagonal of the valid bounding box)^2."""
        rows = valid.any(axis=2)
        cols = valid.any(axis=1)
        height = rows.shape[1] - rows.argmax(axis=1) - rows[:, ::-1].argmax(axis=1)
        width = cols.shape[1] - cols.argmax(axis=1) - cols[:, ::-1].argmax(axis=1)
        diag_sq = np.where(rows.any(axis=1), height**2 + width**2, 0).astype(np.float64)
        return self.tolerance**2 * diag_sq * (1 + 1e-9)

    def _thinned_maps(self, prob: np.ndarray, valid: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """(len(ks), B, H, W) thinned boundary maps at thresholds ``ks``."""
        maps = (prob[None] >= self.thresholds[ks][:, None, None, None]) & valid[None]
        return thin_boundaries(maps)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add per-threshold matched / predicted / gt counts (and the per-image best, for oisF)."""
        if pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"EdgeMeter: pred must be (B, 1, H, W) logits, got {tuple(pred.shape)}")
        if target.dim() == 3:
            target = target[:, None]
        if target.shape != pred.shape:
            raise ValueError(f"EdgeMeter: target {tuple(target.shape)} must match pred {tuple(pred.shape)}")
        prob = pred[:, 0].float().sigmoid().cpu().numpy().astype(np.float64)
        gt = target[:, 0].float().cpu().numpy()
        valid = gt != self.ignore_index
        gt_edge = valid & (gt >= 0.5)
        matched, predicted = self._count(prob, valid, gt_edge)
        actual = gt_edge.reshape(len(gt), -1).sum(axis=1)
        self._accumulate(matched, predicted, actual)

    def _count(self, prob: np.ndarray, valid: np.ndarray, gt_edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Matched and predicted counts per (threshold, image), each (T, B)."""
        num_t, batch = len(self.thresholds), prob.shape[0]
        levels_map = np.where(valid, np.searchsorted(self.thresholds, prob, side="right"), 0)
        cand = np.argwhere(levels_map > 0)
        levels = levels_map[tuple(cand.T)]
        gt_points = np.argwhere(gt_edge)
        cols, rows = pairs_within(gt_points, _id_map(cand, gt_edge.shape), self._radius_sq(valid))
        image_of = cand[:, 0]
        if not self.thin:
            predicted = _count_by_level(image_of, levels, batch, num_t)
            if not len(rows):
                return np.zeros_like(predicted), predicted
            graph = _PairGraph(rows, cols, len(cand), len(gt_points), nested=True)
            return _matched_nested(levels, image_of, graph, num_t, batch), predicted
        matched = np.zeros((num_t, batch), np.int64)
        predicted = np.zeros((num_t, batch), np.int64)
        graph = _PairGraph(rows, cols, len(cand), len(gt_points), nested=False)
        was_present = np.zeros(len(graph.candidates), dtype=bool)
        per_call = max(1, self.max_pairs_per_call // max(prob.size, 1))
        for stop in range(num_t, 0, -per_call):  # high to low: neighbouring maps differ little
            ks = np.arange(max(0, stop - per_call), stop)
            thinned = self._thinned_maps(prob, valid, ks)
            for local in range(len(ks) - 1, -1, -1):
                k = ks[local]
                on_map = thinned[local][tuple(cand.T)]
                predicted[k] = np.bincount(image_of[on_map], minlength=batch)
                present = on_map[graph.candidates]
                graph.matching.remove(np.flatnonzero(was_present & ~present))
                graph.matching.add(np.flatnonzero(present & ~was_present))
                was_present = present
                won = graph.candidates[graph.matching.matched_rows()]
                matched[k] = np.bincount(image_of[won], minlength=batch)
        return matched, predicted

    def _accumulate(self, matched: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> None:
        """Add dataset-level sums and each image's counts at its own best threshold."""
        self._add("matched", torch.from_numpy(matched.sum(axis=1)))
        self._add("predicted", torch.from_numpy(predicted.sum(axis=1)))
        self._add("actual", torch.tensor(int(actual.sum())))
        best = _f_measure(matched, predicted, actual[None, :]).argmax(axis=0)
        images = np.arange(matched.shape[1])
        self._add("ois_matched", torch.tensor(int(matched[best, images].sum())))
        self._add("ois_predicted", torch.tensor(int(predicted[best, images].sum())))
        self._add("ois_actual", torch.tensor(int(actual.sum())))

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Dataset-level precision and recall per threshold."""
        s = {k: v.cpu().numpy().astype(np.float64) for k, v in self._state.items()}
        recall = s["matched"] / max(s["actual"], 1.0)
        precision = s["matched"] / np.where(s["predicted"] == 0, 1.0, s["predicted"])
        return precision, recall

    def _average_precision(self, precision: np.ndarray, recall: np.ndarray) -> float:
        """BSDS AP: precision interpolated at recall 0:0.01:1 (0 outside the curve), mean."""
        unique_recall, first = np.unique(recall, return_index=True)
        if unique_recall.size < 2:
            return 0.0
        grid = np.linspace(0.0, 1.0, 101)
        interp = np.interp(grid, unique_recall, precision[first], left=0.0, right=0.0)
        return float(interp.sum() * 0.01)

    def compute(self) -> dict[str, float]:
        s = {k: v.cpu().numpy().astype(np.float64) for k, v in self._state.items()}
        f = _f_measure(s["matched"], s["predicted"], s["actual"])
        best = int(f.argmax())
        ois = _f_measure(s["ois_matched"], s["ois_predicted"], s["ois_actual"])
        precision, recall = self.precision_recall()
        return {
            "odsF": 100.0 * float(f[best]),
            "oisF": 100.0 * float(ois),
            "ap": 100.0 * self._average_precision(precision, recall),
            "ods_threshold": float(self.thresholds[best]),
        }
