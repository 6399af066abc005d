"""The `tokenmtl` command end to end on a tiny config, and its errors for user mistakes."""

import json

import pytest
from typer.testing import CliRunner

from tokenmtl.cli import app

runner = CliRunner()


def _sets(tiny_sets):
    return [arg for s in tiny_sets for arg in ("--set", s)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_train_st_and_mt_then_compare_evaluate_analyze(tmp_path, tiny_sets):
    sets = _sets(tiny_sets)
    for task in ("depth", "edge"):
        result = invoke("train", "demo", "--out", tmp_path / f"st-{task}", "--tasks", task, *sets)
        assert result.exit_code == 0, result.output
    result = invoke("train", "demo", "--out", tmp_path / "mt", "--tasks", "depth,edge", *sets)
    assert result.exit_code == 0, result.output
    mt = json.loads((tmp_path / "mt" / "results.json").read_text())
    assert set(mt["tasks"]) == {"depth", "edge"}
    assert (tmp_path / "mt" / "config.yaml").is_file() and (tmp_path / "mt" / "metrics.csv").is_file()

    result = invoke("compare", tmp_path)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "comparison.md").read_text()
    st_depth = json.loads((tmp_path / "st-depth" / "results.json").read_text())["tasks"]["depth"]["rmse"]
    st_edge = json.loads((tmp_path / "st-edge" / "results.json").read_text())["tasks"]["edge"]["odsF"]
    expected = 50.0 * (
        -(mt["tasks"]["depth"]["rmse"] - st_depth) / st_depth + (mt["tasks"]["edge"]["odsF"] - st_edge) / st_edge
    )
    assert f"{expected:+.2f}" in table
    assert (tmp_path / "comparison.png").stat().st_size > 1000

    ckpt = sorted((tmp_path / "mt" / "checkpoints").glob("ckpt-*.pt"))[-1]
    result = invoke("evaluate", "demo", "--checkpoint", ckpt, "--out", tmp_path / "eval", *sets)
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["tasks"] == mt["tasks"]  # same checkpoint, same split, same numbers

    result = invoke(
        "analyze",
        "demo",
        "--checkpoint",
        ckpt,
        "--out",
        tmp_path / "an",
        "--num-batches",
        "2",
        *sets,
        "--set",
        "tasks=[depth,edge]",
    )
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "an" / "plan.json").read_text())
    assert len(plan["tm"]) == 1 and len(plan["te"]) == 1  # ratio 0.5 of 2 blocks
    assert (tmp_path / "an" / "conflicts.png").is_file() and (tmp_path / "an" / "spectra.png").is_file()

    # a run folder alone: its newest good checkpoint and the config it was trained with (no --set repeated);
    # evaluation never builds the training split: a fresh scenes cache receives the test split only
    fresh = tmp_path / "fresh-cache"
    result = invoke(
        "evaluate", tmp_path / "mt", "--out", tmp_path / "eval-dir", "--set", f"benchmark.cache_dir={fresh}"
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval-dir" / "results.json").read_text())["tasks"] == mt["tasks"]
    assert [p.name.split("-")[1] for p in fresh.glob("*.npz")] == ["test"]
    result = invoke("analyze", tmp_path / "mt", "--out", tmp_path / "an-dir", "--num-batches", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "an-dir" / "plan.json").read_text()) == plan  # same checkpoint, same analysis


def test_out_that_is_a_file_is_one_clear_line(tmp_path, tiny_sets):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    result = runner.invoke(app, ["train", "demo", "--out", str(target), *_sets(tiny_sets)])
    assert result.exit_code == 2 and "is an existing file; give a folder" in result.output
    assert "Traceback" not in result.output and target.read_text() == "not a folder"


def test_config_show_prints_resolved_values_with_docs():
    result = invoke("config", "show", "demo", "--set", "train.lr=0.002")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    lr = next(line for line in lines if line.strip().startswith("lr:"))
    assert "0.002" in lr and "# Base learning rate." in lr
    assert any(line.strip().startswith("post_iterations:") and '"remaining"' in line for line in lines)
    from tokenmtl.config import read_yaml

    assert read_yaml(result.output)["train"]["lr"] == 0.002  # the output is a valid config
    bad = runner.invoke(app, ["config", "show", "demo", "--set", "train.lrr=1"])
    assert bad.exit_code == 2 and "did you mean 'lr'" in bad.output


def test_compare_takes_allow_mixed(tmp_path):
    result = runner.invoke(app, ["compare", "--help"])
    assert "--allow-mixed" in result.output


def test_methods_lists_every_method_with_options():
    result = invoke("methods")
    assert result.exit_code == 0
    for name in (
        "ew",
        "uw",
        "dwa",
        "graddrop",
        "mgda",
        "pcgrad",
        "cagrad",
        "imtl",
        "nashmtl",
        "alignedmtl",
        "famo",
        "dbmtl",
        "recon",
    ):
        assert f"\n{name} " in "\n" + result.output
    assert "beta=0.9" in result.output  # DB-MTL's option


def test_data_preview_writes_a_png(tmp_path, tiny_sets):
    result = invoke("data", "preview", "demo", "--out", tmp_path / "p.png", "--n", "2", *_sets(tiny_sets))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "depth,colour"], "unknown task(s) 'colour' for benchmark 'scenes'; available: semseg, depth"),
        (["--method", "gradnorm"], "unknown balancing method 'gradnorm'; available: ew, uw"),
        (["--set", "benchmark.name=imagenet"], "unknown benchmark 'imagenet'; available: nyud, "),
        (["--set", "train.iteratons=3"], "did you mean 'iterations'"),
        (["--set", "method.betaa=0.3", "--method", "dbmtl"], "unknown option(s) ['betaa'] for method 'dbmtl'"),
        (["--set", "benchmark.colour=1"], "benchmark 'scenes' does not take colour"),
        (["--set", "model.backbone=vit_tinny_patch16_224"], "unknown timm backbone 'vit_tinny_patch16_224'"),
    ],
)
def test_user_mistakes_give_one_clear_line(tmp_path, tiny_sets, args, message):
    result = runner.invoke(app, ["train", "demo", "--out", str(tmp_path / "x"), *_sets(tiny_sets), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_dataset_root_names_the_path(tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "configs/nyud_vit_t.yaml",
            "--out",
            str(tmp_path / "x"),
            "--data-root",
            str(tmp_path / "nowhere"),
            "--no-pretrained",
        ],
    )
    assert result.exit_code == 2
    assert str(tmp_path / "nowhere") in result.output and "Traceback" not in result.output


def test_sweep_trains_st_and_each_method_with_and_without_dtme(tmp_path, tiny_sets):
    sets = _sets(
        tiny_sets
        + [
            "train.iterations=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "tasks=[depth,edge]",
            "dtme.num_batches=1",
            "dtme.expand_at=0.5",
        ]
    )
    result = invoke("sweep", "demo", "--out", tmp_path, "--methods", "ew,dbmtl", "--dtme", *sets)
    assert result.exit_code == 0, result.output
    runs = sorted(p.parent.name for p in tmp_path.glob("*/results.json"))
    assert runs == [
        "dbmtl-dtme-s0",
        "dbmtl-s0",
        "ew-dtme-control-s0",
        "ew-dtme-s0",
        "ew-s0",
        "st-depth-s0",
        "st-edge-s0",
    ]
    control = json.loads((tmp_path / "ew-dtme-control-s0" / "results.json").read_text())
    dtme = json.loads((tmp_path / "ew-dtme-s0" / "results.json").read_text())
    assert control["dtme"]["tm"] == [] and control["dtme"]["te"] == [] and control["params"]["added_by_dtme"] == 0
    assert control["iterations"] == dtme["iterations"] and dtme["params"]["added_by_dtme"] > 0
    table = (tmp_path / "comparison.md").read_text()
    for label in ("| ST |", "| EW |", "| DBMTL |", "| EW + TM+TE |", "| DBMTL + TM+TE |"):
        assert label in table, label
    bad = runner.invoke(app, ["sweep", "demo", "--out", str(tmp_path / "x"), "--methods", "ew,adam"])
    assert bad.exit_code == 2 and "unknown method(s) ['adam']" in bad.output


def test_pretrain_command_calls_tokenmtl_pretrain():
    result = runner.invoke(app, ["pretrain", "--help"])
    assert result.exit_code == 0 and "--out" in result.output
    bad = runner.invoke(app, ["pretrain", "no_such_config"])
    assert bad.exit_code == 2 and "config file not found" in bad.output


def test_train_progress_bars_follow_config_unless_the_flag_is_given(tmp_path, tiny_sets):
    """`--set log.progress=false` silences the bars; `--progress` turns them back on."""
    sets = [*_sets(tiny_sets), "--set", "log.progress=false"]
    quiet = invoke("train", "demo", "--out", tmp_path / "quiet", "--tasks", "depth", *sets)
    loud = invoke("train", "demo", "--out", tmp_path / "loud", "--tasks", "depth", *sets, "--progress")
    assert quiet.exit_code == 0 and loud.exit_code == 0, quiet.output + loud.output
    assert "train:" not in quiet.output + quiet.stderr
    assert "train:" in loud.output + loud.stderr


def test_pretrain_progress_follows_config_unless_the_flag_is_given(monkeypatch, tmp_path):
    import tokenmtl.pretrain

    seen = []
    monkeypatch.setattr(tokenmtl.pretrain, "pretrain", lambda cfg, out, progress: seen.append(progress) or "w")
    for flags in ([], ["--set", "log.progress=false"], ["--set", "log.progress=false", "--progress"]):
        result = runner.invoke(app, ["pretrain", "scenes_pretrain", *flags])
        assert result.exit_code == 0, result.output
    assert seen == [True, False, True]
