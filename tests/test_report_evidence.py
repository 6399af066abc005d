"""benchmarks/dtme_evidence.py: the plan of the grid, and a tiny grid trained, resumed and tabulated."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from tokenmtl.config import load_config, read_yaml
from tokenmtl.report.settings import settings_hash

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dtme_evidence.py"


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("dtme_evidence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dtme_evidence"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def driver_sets(tiny_sets):
    return [arg for s in tiny_sets + ["tasks=[depth,edge]", "dtme.num_batches=2"] for arg in ("--set", s)]


def test_dry_run_plans_variants_seeds_and_one_budget(evidence, tmp_path, tiny_sets, capsys):
    sets = tiny_sets + ["tasks=[depth,edge]", "dtme.post_iterations=full"]
    code = evidence.main(
        [
            "--seeds",
            "2",
            "--variants",
            "st,mt-ew,mt-ew-empty-plan",
            "--out",
            str(tmp_path / "g"),
            "--dry-run",
            *[a for s in sets for a in ("--set", s)],
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "8 runs (3 variants x 2 seeds, ST per task), 8 to train" in out
    assert "every run 8 iterations" in out  # DTME: round(0.25 * 6) = 2 warm-up + 6 after expansion
    assert not (tmp_path / "g").exists()
    runs = evidence.plan_runs("demo", [0, 1], ["st", "mt-ew", "mt-ew-empty-plan"], sets, tmp_path / "g")
    assert [r.out.relative_to(tmp_path / "g").as_posix() for r in runs[:4]] == [
        "st-depth/seed0",
        "st-edge/seed0",
        "st-depth/seed1",
        "st-edge/seed1",
    ]
    configs = {(r.variant, r.seed): load_config("demo", r.sets) for r in runs}
    assert configs[("st-edge", 1)]["tasks"] == ["edge"] and configs[("st-edge", 1)]["train"]["seed"] == 1
    for (variant, _), cfg in configs.items():  # the same budget for every row
        dtme = cfg["dtme"]["enabled"]
        assert (cfg["train"]["iterations"], dtme) == ((6, True) if variant == "mt-ew-empty-plan" else (8, False))
        assert evidence.dtme_iterations(cfg) == 8 or not dtme
    control = configs[("mt-ew-empty-plan", 0)]
    assert control["dtme"]["enabled"] and control["dtme"]["mode"] == "none"  # the empty-plan control


def test_unknown_variant_or_bad_seeds_are_one_line_errors(evidence, tmp_path, capsys):
    assert evidence.main(["--variants", "mt-ew,nope", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "unknown variant 'nope'; variants: st, mt-ew," in capsys.readouterr().err
    assert evidence.main(["--seeds", "two", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "--seeds takes a count (3) or a list (0,2); got 'two'" in capsys.readouterr().err


def test_grid_trains_skips_finished_runs_and_never_averages_ablations(evidence, tmp_path, tiny_sets, capsys):
    out = tmp_path / "grid"
    args = ["--seeds", "2", "--variants", "st,mt-ew-tm,mt-ew-te", "--out", str(out), *driver_sets(tiny_sets)]
    assert evidence.main(args) == 0
    results = {
        p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.glob("*/seed*/results.json")
    }
    assert len(results) == 8
    for name, run in results.items():  # the trainer's hash is the one compare recomputes from config.yaml
        config = read_yaml((out / name / "config.yaml").read_text())
        assert run["settings_hash"] == settings_hash(config, list(run["tasks"])), name
    assert len({r["settings_hash"] for r in results.values()}) == 4  # st-depth, st-edge, TM, TE
    table = (out / "table.md").read_text()
    assert (out / "table.png").stat().st_size > 5000
    commands = (out / "commands.md").read_text()
    assert commands.count("tokenmtl train demo --out") == 8 and "--set train.seed=1" in commands
    for variant, label in (("mt-ew-tm", "EW + TM"), ("mt-ew-te", "EW + TE")):
        per_seed = []
        for seed in (0, 1):
            mt, st_d, st_e = (results[f"{v}/seed{seed}"]["tasks"] for v in (variant, "st-depth", "st-edge"))
            per_seed.append(
                50.0
                * (
                    -(mt["depth"]["rmse"] - st_d["depth"]["rmse"]) / st_d["depth"]["rmse"]
                    + (mt["edge"]["odsF"] - st_e["edge"]["odsF"]) / st_e["edge"]["odsF"]
                )
            )
        line = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
        assert f"{statistics.fmean(per_seed):+.2f} ± {statistics.stdev(per_seed):.2f}" in line
        assert line.split(" | ")[1] == "2"  # two seeds of this variant, not four of both
    assert "same seed (paired)" in table
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/results.json")}
    capsys.readouterr()
    assert evidence.main(args) == 0
    assert capsys.readouterr().out.count("done, skipped") == 8
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/results.json")} == mtimes


def test_every_variant_resolves_to_a_valid_config_and_gated_ones_set_the_gate(evidence):
    for name in evidence.VARIANTS:
        cfg = load_config("scenes_pretrained", evidence.variant_sets(name))
        assert cfg["dtme"]["te_gate"] is name.endswith("-gated")
        assert cfg["dtme"]["enabled"] is (name not in ("st", "mt-ew", "dbmtl", "famo", "uw", "dwa"))
    assert load_config("demo", evidence.variant_sets("mt-ew-te-gated"))["dtme"]["mode"] == "te"
