"""`tokenmtl demo`: ST, MT, MT + DTME and the empty-plan control, trained in parallel processes."""

import json

from typer.testing import CliRunner

from tokenmtl.cli import app
from tokenmtl.demo import demo_runs

runner = CliRunner()


def test_demo_runs_are_dtme_control_mt_and_st_per_seed_longest_first():
    runs = demo_runs(["depth", "edge"], [0, 2])
    assert [r.name for r in runs] == [
        "mt-ew-dtme-s0",
        "mt-ew-control-s0",
        "mt-ew-s0",
        "st-depth-s0",
        "st-edge-s0",
        "mt-ew-dtme-s2",
        "mt-ew-control-s2",
        "mt-ew-s2",
        "st-depth-s2",
        "st-edge-s2",
    ]
    by_name = {r.name: r.sets for r in runs}
    assert by_name["st-edge-s2"] == ("tasks=[edge]", "dtme.enabled=false", "train.seed=2")
    assert by_name["mt-ew-control-s0"] == ("dtme.enabled=true", "dtme.mode=none", "train.seed=0")


def test_demo_trains_every_run_at_equal_budget_and_writes_table_and_conflict_map(tmp_path, tiny_sets):
    sets = tiny_sets + ["tasks=[depth,edge]", "dtme.num_batches=1", "dtme.expand_at=0.5"]
    args = ["demo", "demo", "--out", str(tmp_path), "--jobs", "2", "--no-progress"]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")}
    assert sorted(results) == ["mt-ew-control-s0", "mt-ew-dtme-s0", "mt-ew-s0", "st-depth-s0", "st-edge-s0"]
    assert {r["iterations"] for r in results.values()} == {6}  # equal budgets: DTME runs train.iterations too
    assert results["mt-ew-dtme-s0"]["params"]["added_by_dtme"] > 0
    assert results["mt-ew-control-s0"]["params"]["added_by_dtme"] == 0
    assert (tmp_path / "conflicts.png").stat().st_size > 0 and (tmp_path / "table.png").is_file()
    table = (tmp_path / "table.md").read_text()
    assert "| ST |" in table and "| EW |" in table and "| EW + TM+TE |" in table
    assert "tokenmtl train demo --out" in (tmp_path / "commands.md").read_text()
    # A second call reuses every finished run instead of training again.
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "(5 done already)" in again.output


def test_demo_rejects_bad_seeds_in_one_line(tmp_path):
    result = runner.invoke(app, ["demo", "demo", "--out", str(tmp_path / "d"), "--seeds", "a,b"])
    assert result.exit_code == 2 and "--seeds takes seeds" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()
