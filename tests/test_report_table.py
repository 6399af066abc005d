"""Comparison tables from synthetic run folders: settings as rows, paired delta-m, refusals of mixed runs."""

import json
import math
import statistics

import pytest

from tokenmtl.config import dump_config, load_config
from tokenmtl.report.compare import compare_runs
from tokenmtl.report.compatibility import MixedComparisonError
from tokenmtl.report.runs import load_runs
from tokenmtl.report.settings import settings_hash
from tokenmtl.report.table import build_comparison

PRIMARY = {"depth": ["rmse", True], "edge": ["odsF", False]}


def write_run(
    folder,
    metrics,
    seed=0,
    sets=(),
    iterations=600,
    params=1000,
    added=0,
    plan=None,
    timing=(10.0, 0.0, 1.0),
    extra=None,
):
    """A run folder as the trainer leaves it: config.yaml (resolved) and results.json."""
    tasks = list(metrics)
    cfg = load_config(
        None, [f"tasks=[{','.join(tasks)}]", f"train.seed={seed}", f"train.iterations={iterations}", *sets]
    )
    folder.mkdir(parents=True)
    dump_config(cfg, folder / "config.yaml")
    train_s, dtme_s, eval_s = timing
    results = {
        "tasks": {t: {PRIMARY[t][0]: v, "other": 123.0} for t, v in metrics.items()},
        "delta_m": None,
        "params": {"total": params, "added_by_dtme": added, "added_by_recon": 0},
        "method": cfg["method"]["name"],
        "dtme": plan,
        "seed": seed,
        "split": "test",
        "timing": {
            "train_seconds": train_s,
            "dtme_seconds": dtme_s,
            "final_eval_seconds": eval_s,
            "iterations": iterations,
        },
        "primary": {t: PRIMARY[t] for t in tasks},
        "name": cfg["name"],
        **(extra or {}),
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def row(comparison, label):
    matches = [r for r in comparison.rows if r.label == label]
    assert len(matches) == 1, [r.label for r in comparison.rows]
    return matches[0]


def st_pair(tmp_path, seeds=(0, 1), depth=(2.0, 4.0), edge=(50.0, 40.0), **kw):
    for seed, d, e in zip(seeds, depth, edge):
        write_run(tmp_path / f"st-depth-{seed}", {"depth": d}, seed=seed, **kw)
        write_run(tmp_path / f"st-edge-{seed}", {"edge": e}, seed=seed, **kw)


def test_delta_m_is_paired_by_seed_then_mean_and_std(tmp_path):
    st_pair(tmp_path)
    write_run(tmp_path / "mt-0", {"depth": 1.8, "edge": 55.0}, seed=0)
    write_run(tmp_path / "mt-1", {"depth": 4.4, "edge": 38.0}, seed=1)
    comparison = build_comparison(load_runs([tmp_path]))
    mt = row(comparison, "EW")
    # seed 0: 50 * (0.2/2 + 5/50) = +10; seed 1: 50 * (-0.4/4 - 2/40) = -7.5
    assert mt.delta_m_per_seed == pytest.approx([10.0, -7.5])
    assert mt.delta_m == pytest.approx((1.25, 17.5 / math.sqrt(2)))
    assert mt.pairing == "paired"
    assert mt.task_change == pytest.approx({"depth": (10.0 - 10.0) / 2, "edge": (10.0 - 5.0) / 2})
    assert mt.metrics["depth"] == pytest.approx((3.1, statistics.stdev([1.8, 4.4])))
    table = comparison.markdown
    assert "+1.25 ± 12.37" in table
    assert "same seed (paired)" in table
    st = row(comparison, "ST")
    assert st.metrics["edge"] == pytest.approx((45.0, statistics.stdev([50.0, 40.0])))
    assert st.params == 2000 and st.delta_m == (0.0, 0.0)


def test_delta_m_against_seed_mean_when_no_st_run_of_that_seed(tmp_path):
    st_pair(tmp_path)  # ST seed-mean: depth 3.0, edge 45.0
    write_run(tmp_path / "mt-5", {"depth": 2.7, "edge": 49.5}, seed=5)
    write_run(tmp_path / "mt-6", {"depth": 3.3, "edge": 40.5}, seed=6)
    comparison = build_comparison(load_runs([tmp_path]))
    mt = row(comparison, "EW")
    assert mt.delta_m_per_seed == pytest.approx([10.0, -10.0])
    assert mt.delta_m == pytest.approx((0.0, math.sqrt(200.0)))
    assert mt.pairing == "seed-mean"
    assert "seed-mean of the single-task runs" in comparison.markdown


def test_ablations_are_separate_rows_and_name_or_log_keys_are_not(tmp_path):
    st_pair(tmp_path)
    plan = {"tm": [1], "te": [], "strategy": "conflict"}
    for seed, (tm_d, te_d) in enumerate([(1.0, 3.0), (2.0, 5.0)]):
        write_run(
            tmp_path / f"tm-{seed}",
            {"depth": tm_d, "edge": 50.0},
            seed=seed,
            added=64,
            plan=plan,
            sets=["dtme.enabled=true", "dtme.mode=tm", f"name=tm-run-{seed}", f"log.progress={seed == 0}"],
        )
        write_run(
            tmp_path / f"te-{seed}",
            {"depth": te_d, "edge": 50.0},
            seed=seed,
            added=96,
            plan={"tm": [], "te": [0], "strategy": "conflict"},
            sets=["dtme.enabled=true", "dtme.mode=te", "name=same-name"],
        )
        for ratio in (0.25, 0.75):
            write_run(
                tmp_path / f"r{ratio}-{seed}",
                {"depth": 3.0 * ratio + seed, "edge": 50.0},
                seed=seed,
                plan=plan,
                sets=["dtme.enabled=true", "dtme.mode=tm", f"dtme.ratio={ratio}"],
            )
    comparison = build_comparison(load_runs([tmp_path]))
    tm, te = row(comparison, "EW + TM (dtme.ratio=0.5)"), row(comparison, "EW + TE")
    assert tm.seeds == [0, 1] and te.seeds == [0, 1]  # name and log.progress differ: still one setting
    assert tm.metrics["depth"][0] == pytest.approx(1.5) and te.metrics["depth"][0] == pytest.approx(4.0)
    assert tm.added_by_dtme == 64 and te.added_by_dtme == 96
    low, high = row(comparison, "EW + TM (dtme.ratio=0.25)"), row(comparison, "EW + TM (dtme.ratio=0.75)")
    assert low.metrics["depth"][0] == pytest.approx(0.75 + 0.5) and high.metrics["depth"][0] == pytest.approx(2.75)
    assert len([r for r in comparison.rows if r.kind == "MT"]) == 4


def test_empty_plan_control_and_strategy_get_their_own_labels(tmp_path):
    st_pair(tmp_path, seeds=(0,), depth=(2.0,), edge=(50.0,))
    write_run(
        tmp_path / "ctl",
        {"depth": 2.0, "edge": 50.0},
        plan={"tm": [], "te": []},
        sets=["dtme.enabled=true", "dtme.ratio=0.01"],
    )
    write_run(
        tmp_path / "rnd",
        {"depth": 1.0, "edge": 50.0},
        plan={"tm": [0], "te": [1]},
        added=10,
        sets=["dtme.enabled=true", "dtme.strategy=random"],
    )
    comparison = build_comparison(load_runs([tmp_path]))
    assert row(comparison, "EW + DTME empty plan").delta_m == pytest.approx((0.0, 0.0))
    assert row(comparison, "EW + TM+TE (random)").delta_m == pytest.approx((25.0, 0.0))


def test_table_shows_iterations_params_and_wall_time(tmp_path):
    st_pair(tmp_path, timing=(4.0, 0.0, 1.0))
    write_run(
        tmp_path / "mt-0",
        {"depth": 2.0, "edge": 50.0},
        seed=0,
        params=5000,
        added=300,
        timing=(20.0, 3.0, 1.0),
        plan={"tm": [0], "te": [1]},
        sets=["dtme.enabled=true"],
    )
    write_run(
        tmp_path / "mt-1",
        {"depth": 4.0, "edge": 40.0},
        seed=1,
        params=5000,
        added=300,
        timing=(22.0, 5.0, 1.0),
        plan={"tm": [0], "te": [1]},
        sets=["dtme.enabled=true"],
    )
    comparison = build_comparison(load_runs([tmp_path]))
    mt = row(comparison, "EW + TM+TE")
    assert mt.iterations == [600] and mt.wall_seconds == pytest.approx((26.0, statistics.stdev([24.0, 28.0])))
    line = next(l for l in comparison.markdown.splitlines() if l.startswith("| EW + TM+TE |"))
    assert line.split(" | ")[1:3] == ["2", "600"]
    assert "5,000" in line and "| 300 |" in line and "26 ± 2.8" in line
    st_line = next(l for l in comparison.markdown.splitlines() if l.startswith("| ST |"))
    assert "| 10 ± 0 |" in st_line  # two ST models of 5 s each, summed


def test_iterations_from_results_top_level_win_and_wall_time_counts_edits(tmp_path):
    timing = {"train_seconds": 2.0, "recon_seconds": 0.5, "final_eval_seconds": 0.25, "iterations": 600}
    write_run(tmp_path / "a", {"depth": 2.0, "edge": 5.0}, extra={"iterations": 750, "timing": timing})
    (run,) = load_runs([tmp_path])
    assert run.iterations == 750 and run.wall_seconds == 2.75


def test_refuses_different_budgets_unless_allow_mixed(tmp_path):
    st_pair(tmp_path)
    write_run(tmp_path / "a", {"depth": 2.0, "edge": 50.0}, iterations=600)
    write_run(
        tmp_path / "b",
        {"depth": 2.0, "edge": 50.0},
        iterations=750,
        sets=["dtme.enabled=true"],
        plan={"tm": [0], "te": [0]},
    )
    with pytest.raises(MixedComparisonError, match=r"iterations 600 vs 750.*allow_mixed"):
        build_comparison(load_runs([tmp_path]))
    comparison = build_comparison(load_runs([tmp_path]), allow_mixed=True)
    assert "MIXED" in comparison.markdown and "iterations 600 vs 750" in comparison.markdown


def test_mixed_notes_name_each_difference_once_with_the_runs_it_concerns(tmp_path):
    st_pair(tmp_path / "st")
    for seed in (0, 1):
        write_run(tmp_path / "long" / f"seed{seed}", {"depth": 2.0, "edge": 50.0}, iterations=1200, seed=seed)
        write_run(tmp_path / "short" / f"seed{seed}", {"depth": 2.0, "edge": 50.0}, iterations=600, seed=seed)
    comparison = build_comparison(load_runs([tmp_path / "long", tmp_path / "short", tmp_path / "st"]), allow_mixed=True)
    others = "short/seed0, short/seed1, st/st-depth-0, st/st-depth-1, st/st-edge-0, st/st-edge-1"
    assert comparison.notes == [f"iterations 1200 vs 600 (long/seed0 vs {others})"]


def test_refuses_models_and_benchmarks_that_differ(tmp_path):
    write_run(tmp_path / "a", {"depth": 2.0, "edge": 50.0})
    write_run(tmp_path / "b", {"depth": 2.0, "edge": 50.0}, sets=["model.depth=6"])
    with pytest.raises(MixedComparisonError, match=r"model\.depth None vs 6"):
        build_comparison(load_runs([tmp_path]))
    other = tmp_path / "bench"
    write_run(other / "a", {"depth": 2.0, "edge": 50.0})
    write_run(other / "b", {"depth": 2.0, "edge": 50.0}, sets=["benchmark.image_size=32"], seed=1)
    with pytest.raises(MixedComparisonError, match=r"benchmark\.image_size"):
        build_comparison(load_runs([other]))


def test_single_task_reference_must_match_the_multi_task_budget(tmp_path):
    st_pair(tmp_path, iterations=300)
    write_run(tmp_path / "mt", {"depth": 2.0, "edge": 50.0}, iterations=600)
    with pytest.raises(MixedComparisonError, match=r"single-task reference .* iterations 600 vs 300"):
        build_comparison(load_runs([tmp_path]))
    assert build_comparison(load_runs([tmp_path]), allow_mixed=True).rows[-1].delta_m is not None


def test_mixed_references_pick_the_matching_budget(tmp_path):
    st_pair(tmp_path / "short", iterations=300, depth=(1.0, 1.0), edge=(10.0, 10.0))
    st_pair(tmp_path / "long", iterations=600)
    write_run(tmp_path / "mt-0", {"depth": 1.8, "edge": 55.0}, seed=0, iterations=600)
    write_run(tmp_path / "mt-1", {"depth": 4.4, "edge": 38.0}, seed=1, iterations=600)
    comparison = build_comparison(load_runs([tmp_path]), allow_mixed=True)
    assert row(comparison, "EW").delta_m == pytest.approx((1.25, 17.5 / math.sqrt(2)))
    assert {r.label for r in comparison.rows if r.kind == "ST"} == {"ST (300 it)", "ST (600 it)"}


def test_two_runs_of_one_setting_and_seed_are_an_error(tmp_path):
    write_run(tmp_path / "a", {"depth": 2.0, "edge": 50.0})
    write_run(tmp_path / "b", {"depth": 3.0, "edge": 50.0}, sets=["name=again"])
    with pytest.raises(ValueError, match="same setting and seed 0"):
        build_comparison(load_runs([tmp_path]))
    assert len(load_runs([tmp_path / "a", tmp_path / "a" / "results.json", tmp_path])) == 2  # no double count


def test_settings_hash_ignores_seed_name_and_output_keys_only():
    base = load_config(None, ["tasks=[depth,edge]"])
    same = load_config(
        None,
        [
            "tasks=[depth,edge]",
            "train.seed=7",
            "name=x",
            "log.tensorboard=false",
            "train.checkpoint_every=5",
            "benchmark.cache_dir=/tmp/elsewhere",
        ],
    )
    assert settings_hash(base) == settings_hash(same)
    for change in ("train.lr=0.01", "dtme.mode=tm", "tasks=[edge,depth]", "method.name=dbmtl", "model.depth=3"):
        assert settings_hash(load_config(None, ["tasks=[depth,edge]", change])) != settings_hash(base), change
    defaults = load_config(None, [])
    assert settings_hash(defaults, ["semseg", "depth"]) == settings_hash(
        load_config(None, ["tasks=[semseg,depth]"]), ["semseg", "depth"]
    )  # tasks: null resolved = listed


def test_runs_from_before_a_config_key_existed_group_with_runs_at_its_default(tmp_path):
    """A config.yaml without dtme.te_gate (an older run) is the same setting as te_gate: false,
    whatever settings_hash the older trainer stored; te_gate: true stays its own row."""
    st_pair(tmp_path, seeds=(0, 1))
    sets = ["dtme.enabled=true", "dtme.mode=te"]
    old = write_run(tmp_path / "te-0", {"depth": 1.0, "edge": 50.0}, seed=0, sets=sets, extra={"settings_hash": "old"})
    text = (old / "config.yaml").read_text()
    assert "te_gate: false" in text
    (old / "config.yaml").write_text("".join(l for l in text.splitlines(True) if "te_gate" not in l))
    write_run(tmp_path / "te-1", {"depth": 3.0, "edge": 50.0}, seed=1, sets=sets)
    write_run(tmp_path / "gated-0", {"depth": 2.0, "edge": 50.0}, seed=0, sets=[*sets, "dtme.te_gate=true"])
    runs = load_runs([tmp_path])
    assert len({r.setting for r in runs if r.dir.name.startswith("te-")}) == 1
    assert next(r for r in runs if r.dir.name == "te-0").config["dtme"]["te_gate"] is False  # filled in
    comparison = build_comparison(runs)
    plain = row(comparison, "EW + TE (dtme.te_gate=False)")
    assert plain.seeds == [0, 1]
    assert plain.metrics["depth"][0] == pytest.approx(2.0)
    assert row(comparison, "EW + TE (dtme.te_gate=True)").seeds == [0]


def test_missing_config_is_one_clear_error(tmp_path):
    write_run(tmp_path / "a", {"depth": 2.0, "edge": 50.0})
    (tmp_path / "a" / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.yaml"):
        load_runs([tmp_path])


def test_compare_runs_writes_markdown_and_png(tmp_path):
    st_pair(tmp_path / "runs")
    write_run(tmp_path / "runs" / "mt-0", {"depth": 1.8, "edge": 55.0}, seed=0)
    write_run(tmp_path / "runs" / "mt-1", {"depth": 4.4, "edge": 38.0}, seed=1)
    comparison = compare_runs([tmp_path / "runs"], tmp_path / "out")
    assert (tmp_path / "out" / "comparison.md").read_text() == comparison.markdown
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 5000
