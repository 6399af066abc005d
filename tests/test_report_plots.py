"""Report plots and their data: task weights over steps from metrics.csv, conflicts before vs after."""

import csv

import pytest

from tokenmtl.dtme.analysis import ConflictReport
from tokenmtl.report.conflict_change import conflict_change
from tokenmtl.report.dtme_plots import plot_conflict_change
from tokenmtl.report.training_curves import plot_task_series, read_task_series


def write_long_csv(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "phase", "key", "value"])
        writer.writerows(rows)
    return folder


def weights_log(folder, scale=1.0):
    """Two tasks' weights and DTME norms at steps 2, 1, 3 (out of order), mixed with other keys."""
    rows = []
    for step in (2, 1, 3):
        rows += [
            (step, "train", "loss/depth", 0.5),
            (step, "train", "weight/depth", scale * step),
            (step, "train", "weight/edge", 2.0 - 0.5 * step),
            (step, "train", "dtme/added_norm/depth", 0.1 * step),
            (step, "train", "dtme_norm/edge", 0.2 * step),
            (step, "train", "lr", 0.001),
        ]
    rows.append((3, "val", "depth/rmse", 1.0))
    return write_long_csv(folder, rows)


def test_read_task_series_from_long_metrics_csv_in_step_order(tmp_path):
    folder = weights_log(tmp_path / "run")
    weights = read_task_series(folder, "weight")
    assert weights == {"depth": ([1, 2, 3], [1.0, 2.0, 3.0]), "edge": ([1, 2, 3], [1.5, 1.0, 0.5])}
    ((steps, norms),) = read_task_series(folder / "metrics.csv", "dtme/added_norm").values()
    assert steps == [1, 2, 3] and norms == pytest.approx([0.1, 0.2, 0.3])
    assert read_task_series(folder, "dtme_norm")["edge"][1] == pytest.approx([0.2, 0.4, 0.6])
    assert read_task_series(folder, "nothing") == {}


def test_read_task_series_from_wide_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,weight/depth,weight/edge,loss/depth\n10,0.7,0.3,1\n20,0.6,,1\n")
    assert read_task_series(path, "weight") == {"depth": ([10, 20], [0.7, 0.6]), "edge": ([10], [0.3])}


def test_plot_task_series_of_several_runs_writes_png(tmp_path):
    a, b = weights_log(tmp_path / "ew"), weights_log(tmp_path / "dbmtl", scale=2.0)
    path = plot_task_series({"EW": a, "DB-MTL": b}, tmp_path / "weights.png")
    assert path.stat().st_size > 5000
    only_weights = plot_task_series([a], tmp_path / "one.png", prefixes=("weight",))
    assert only_weights.stat().st_size > 3000


def test_plot_task_series_without_logged_weights_is_a_clear_error(tmp_path):
    folder = write_long_csv(tmp_path / "run", [(1, "train", "loss/depth", 0.5)])
    with pytest.raises(ValueError, match=r"no weight/<task>, dtme/added_norm/<task>, dtme_norm/<task> values"):
        plot_task_series([folder], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        read_task_series(tmp_path / "missing", "weight")


def report(rates):
    """A ConflictReport with (range, null) conflict rates per layer 0..L-1."""
    layers = [
        {
            "layer": i,
            "dim": 8,
            "k": 4,
            "range_conflict_rate": r,
            "null_conflict_rate": n,
            "range_mean_cosine": 0.0,
            "null_mean_cosine": 0.0,
            "pairs_counted": 100.0,
            "eigenvalues": [1.0] * 8,
        }
        for i, (r, n) in enumerate(rates)
    ]
    return ConflictReport.from_dict(
        {
            "tasks": ["depth", "edge"],
            "num_blocks": len(rates),
            "layers": layers,
            "r": 100.0,
            "energy_fraction": None,
            "num_batches": 2,
            "num_tokens": 64.0,
            "exclude_prefix": False,
        }
    )


def test_conflict_change_means_and_plan_layers(tmp_path):
    before = report([(0.50, 0.40), (0.60, 0.30), (0.40, 0.45), (0.55, 0.35)])
    after = report([(0.45, 0.40), (0.50, 0.32), (0.42, 0.35), (0.55, 0.33)])
    before.to_json(tmp_path / "before.json")
    change = conflict_change(tmp_path / "before.json", after.to_dict(), plan={"tm": [1, 3], "te": [2]})
    assert change.mean("range", "before") == pytest.approx(0.5125)
    assert change.change("range") == pytest.approx((0.45 + 0.50 + 0.42 + 0.55 - 2.05) / 4)
    assert change.change("null") == pytest.approx((0.40 + 0.32 + 0.35 + 0.33 - 1.50) / 4)
    assert change.change("range", change.tm) == pytest.approx(((0.50 - 0.60) + (0.55 - 0.55)) / 2)
    assert change.change("null", change.te) == pytest.approx(-0.10)
    text = change.to_markdown()
    assert "| 1 M | 0.6000 | 0.5000 | -0.1000 |" in text
    assert "TE layers [2] (E): null -0.1000." in text
    assert plot_conflict_change(change, tmp_path / "change.png").stat().st_size > 5000


def test_conflict_change_refuses_reports_of_different_layers(tmp_path):
    with pytest.raises(ValueError, match=r"different layers: \[0, 1\] vs \[0, 1, 2\]"):
        conflict_change(report([(0.5, 0.5)] * 2), report([(0.5, 0.5)] * 3))
    with pytest.raises(FileNotFoundError, match="no conflicts report"):
        conflict_change(tmp_path / "nope.json", report([(0.5, 0.5)]))
