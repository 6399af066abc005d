"""delta-m (Maninis/DTME) and delta-p (LibMTL) against the DTME paper's Table 1 and hand cases."""

import pytest

from tokenmtl.metrics import delta_m, delta_p

NYUD_PRIMARY = {
    "semseg": ("mIoU", False),
    "depth": ("rmse", True),
    "normals": ("mean", True),
    "edge": ("odsF", False),
}
NYUD_SINGLE_TASK = {"semseg": 39.35, "depth": 0.6611, "normals": 22.14, "edge": 59.68}
NYUD_TM_TE = {"semseg": 38.27, "depth": 0.6370, "normals": 21.64, "edge": 57.90}
PASCAL_PRIMARY = {
    "semseg": ("mIoU", False),
    "human_parts": ("mIoU", False),
    "saliency": ("maxF", False),
    "normals": ("mean", True),
    "edge": ("odsF", False),
}


def table(values: dict[str, float], primary: dict) -> dict[str, dict[str, float]]:
    return {task: {primary[task][0]: value} for task, value in values.items()}


def test_delta_m_reproduces_dtme_table1_nyud():
    single = table(NYUD_SINGLE_TASK, NYUD_PRIMARY)
    tm_te = table(NYUD_TM_TE, NYUD_PRIMARY)
    # (-2.7446 + 3.6454 + 2.2584 - 2.9826) / 4 = +0.0442 %; the paper prints +0.044
    value = delta_m(tm_te, single, NYUD_PRIMARY)
    assert value == pytest.approx(0.044155, abs=1e-6)
    assert round(value, 3) == 0.044


def test_delta_m_reproduces_dtme_table1_pascal():
    single = table(
        {"semseg": 67.96, "human_parts": 58.90, "saliency": 83.76, "normals": 15.65, "edge": 47.70},
        PASCAL_PRIMARY,
    )
    tm_te = table(
        {"semseg": 66.18, "human_parts": 56.29, "saliency": 83.41, "normals": 15.26, "edge": 47.00},
        PASCAL_PRIMARY,
    )
    # (-2.619 - 4.431 - 0.418 + 2.492 - 1.468) / 5 = -1.289 %
    assert round(delta_m(tm_te, single, PASCAL_PRIMARY), 3) == -1.289


def test_delta_m_sign_positive_means_better():
    primary = {"depth": ("rmse", True), "semseg": ("mIoU", False)}
    single = {"depth": {"rmse": 1.0}, "semseg": {"mIoU": 50.0}}
    better = {"depth": {"rmse": 0.9}, "semseg": {"mIoU": 55.0}}  # -10 % error, +10 % mIoU
    assert delta_m(better, single, primary) == pytest.approx(10.0)


def test_delta_p_averages_metrics_within_a_task_first():
    directions = {"depth": {"rmse": True, "abs_rel": True}, "semseg": {"mIoU": False}}
    single = {"depth": {"rmse": 1.0, "abs_rel": 0.2}, "semseg": {"mIoU": 50.0}}
    multi = {"depth": {"rmse": 0.9, "abs_rel": 0.25}, "semseg": {"mIoU": 45.0}}
    # depth: (+10 % - 25 %) / 2 = -7.5 %; semseg: -10 %; mean over tasks: -8.75 %
    assert delta_p(multi, single, directions) == pytest.approx(-8.75)


def test_delta_p_with_one_metric_per_task_equals_delta_m():
    single = table(NYUD_SINGLE_TASK, NYUD_PRIMARY)
    multi = table(NYUD_TM_TE, NYUD_PRIMARY)
    directions = {task: {metric: lower} for task, (metric, lower) in NYUD_PRIMARY.items()}
    assert delta_p(multi, single, directions) == pytest.approx(delta_m(multi, single, NYUD_PRIMARY))


def test_missing_task_and_metric_are_named():
    primary = {"depth": ("rmse", True)}
    with pytest.raises(KeyError, match="'depth'"):
        delta_m({"semseg": {"mIoU": 1.0}}, {"depth": {"rmse": 1.0}}, primary)
    with pytest.raises(KeyError, match="'rmse'"):
        delta_m({"depth": {"abs_rel": 1.0}}, {"depth": {"rmse": 1.0}}, primary)


def test_zero_reference_is_an_error():
    primary = {"edge": ("odsF", False)}
    with pytest.raises(ZeroDivisionError, match="edge/odsF"):
        delta_m({"edge": {"odsF": 1.0}}, {"edge": {"odsF": 0.0}}, primary)


def test_empty_primary_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        delta_m({}, {}, {})
