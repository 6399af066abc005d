"""benchmarks/st_convergence.py and pretrained_vs_scratch.py on hand-made results.json folders."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def run(root: Path, name: str, task: str, metric: str, lower: bool, seed: int, iterations: int, value: float) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    results = {
        "tasks": {task: {metric: value, "other": -1.0}},
        "primary": {task: [metric, lower]},
        "seed": seed,
        "iterations": iterations,
    }
    (folder / "results.json").write_text(json.dumps(results))


def rows(markdown: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()[2:] if line.startswith("|")
    ]


def test_convergence_verdict_compares_the_gain_with_the_seed_std(tmp_path):
    module = load("st_convergence")
    # acc: 300 its on seeds 0-2 = 50, 52, 54 (std 2); 600 its seed 0 = 51.5: gain 1.5 < 2 -> converged.
    for seed, value in enumerate([50.0, 52.0, 54.0]):
        run(tmp_path, f"short/acc-{seed}", "acc", "macroF1", False, seed, 300, value)
    run(tmp_path, "long/acc", "acc", "macroF1", False, 0, 600, 51.5)
    # err (lower is better): 1.0, 1.1, 1.2 (std 0.1); 600 its seed 1 = 0.9: gain 0.2 > 0.1 -> not.
    for seed, value in enumerate([1.0, 1.1, 1.2]):
        run(tmp_path, f"short/err-{seed}", "err", "mae", True, seed, 300, value)
    run(tmp_path, "long/err", "err", "mae", True, 1, 600, 0.9)
    table = module.report(module.collect([str(tmp_path / "short/*")]), module.collect([str(tmp_path / "long/*")]))
    acc, err = rows(table)
    assert acc[0] == "acc" and acc[3] == "52.000 ± 2.000" and acc[5] == "+1.500" and acc[6] == "yes"
    assert err[0] == "err" and err[4] == "600, 1, 0.900" and err[5] == "+0.200" and err[6] == "no"


def test_pretrained_gain_is_paired_by_seed_and_signed_by_direction(tmp_path):
    module = load("pretrained_vs_scratch")
    for seed, (s, p) in enumerate([(70.0, 71.0), (72.0, 72.5), (71.0, 70.0)]):
        run(tmp_path, f"scratch/seg-{seed}", "seg", "mIoU", False, seed, 600, s)
        run(tmp_path, f"pre/seg-{seed}", "seg", "mIoU", False, seed, 600, p)
    for seed, (s, p) in enumerate([(14.0, 13.0), (13.0, 12.8)]):
        run(tmp_path, f"scratch/depth-{seed}", "depth", "rmse", True, seed, 600, s)
        run(tmp_path, f"pre/depth-{seed}", "depth", "rmse", True, seed, 600, p)
    run(tmp_path, "pre/depth-5", "depth", "rmse", True, 5, 600, 1.0)  # no scratch partner: ignored
    table = module.report(module.collect([str(tmp_path / "scratch/*")]), module.collect([str(tmp_path / "pre/*")]))
    depth, seg = rows(table)
    assert depth[2] == "0,1" and depth[5] == "0.600 ± 0.566" and depth[6] == "2/2 seeds"
    assert seg[2] == "0,1,2" and seg[5] == "0.167 ± 1.041" and seg[6] == "2/3 seeds"


def val_log(root: Path, name: str, key: str, values: list[tuple[int, float]]) -> None:
    """A metrics.csv with validation rows (step, value) for key, plus a train row to skip."""
    lines = ["step,phase,key,value", "1,train,loss/x,9.0"] + [f"{s},val,{key},{v}" for s, v in values]
    (root / name / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_recipes_are_chosen_per_task_on_val_not_on_test(tmp_path, capsys):
    module = load("pretrained_vs_scratch")
    # seg (mIoU, higher better). Scratch "a": test 70, 70 / last val 60, 61; "b": test 75, 75 / val 59, 59.
    # Val picks "a" although "b" is better on test; the earlier val row (step 300) of "b" is ignored.
    for seed in (0, 1):
        run(tmp_path, f"sa/seg-{seed}", "seg", "mIoU", False, seed, 600, 70.0)
        val_log(tmp_path, f"sa/seg-{seed}", "seg/mIoU", [(300, 10.0), (600, 60.0 + seed)])
        run(tmp_path, f"sb/seg-{seed}", "seg", "mIoU", False, seed, 600, 75.0)
        val_log(tmp_path, f"sb/seg-{seed}", "seg/mIoU", [(300, 99.0), (600, 59.0)])
        run(tmp_path, f"pa/seg-{seed}", "seg", "mIoU", False, seed, 600, 71.0 + seed)
        val_log(tmp_path, f"pa/seg-{seed}", "seg/mIoU", [(600, 50.0)])
    # depth (rmse, lower better): pretrained "a" val 2.0 vs "b" val 1.0 -> "b" (test 3.0 vs scratch 4.0).
    run(tmp_path, "sa/depth-0", "depth", "rmse", True, 0, 600, 4.0)
    val_log(tmp_path, "sa/depth-0", "depth/rmse", [(600, 4.0)])
    run(tmp_path, "pa/depth-0", "depth", "rmse", True, 0, 600, 1.0)
    val_log(tmp_path, "pa/depth-0", "depth/rmse", [(600, 2.0)])
    run(tmp_path, "pb/depth-0", "depth", "rmse", True, 0, 600, 3.0)
    val_log(tmp_path, "pb/depth-0", "depth/rmse", [(600, 1.0)])
    argv = ["--scratch", f"a={tmp_path}/sa/*", f"b={tmp_path}/sb/*"]
    argv += ["--pretrained", f"a={tmp_path}/pa/seg-*", f"a={tmp_path}/pa/depth-*", f"b={tmp_path}/pb/*"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    gains, choices = out.split("\n\n")
    depth, seg = rows(gains)
    assert depth[3].startswith("4.000") and depth[4].startswith("3.000") and depth[6] == "1/1 seeds"
    assert seg[3] == "70.000 ± 0.000" and seg[5] == "1.500 ± 0.707" and seg[6] == "2/2 seeds"
    depth_choice, seg_choice = rows(choices)
    assert depth_choice[1:] == ["a (4.000, 1)", "b (1.000, 1)"]
    assert seg_choice[1:] == ["a (60.500, 2)", "a (50.000, 2)"]


def test_a_multi_task_folder_is_refused(tmp_path):
    module = load("st_convergence")
    folder = tmp_path / "mt"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"tasks": {"a": {}, "b": {}}}))
    with pytest.raises(ValueError, match="not a single-task run"):
        module.read_run(folder)


def test_semseg_error_location_patch_majority_and_miou_by_hand():
    """A 4x4 target in 2x2 patches: two pure patches, two mixed ones with known majorities."""
    import torch

    from tokenmtl.metrics.dense import SemsegMeter

    module = load("semseg_error_location")
    target = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [2, 2, 0, 1],
            [2, 0, 1, 1],
        ]
    )[None]
    majority, pure = module._patch_majority(target, patch=2, classes=3)
    assert majority[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]]
    assert pure[0].tolist() == [[True, True, True, True]] * 2 + [[False, False, False, False]] * 2
    # Majority labelling errs on the two minority pixels: class 0 -> IoU 4/6, class 1 -> 7/8, class 2 -> 3/4.
    meter = SemsegMeter(3)
    meter.update(module.as_logits(majority, 3), target)
    assert meter.compute()["mIoU"] == pytest.approx(100 * (4 / 6 + 7 / 8 + 3 / 4) / 3)
    # Ignored pixels (255) are left out of the confusion and of the class shares.
    target[0, 3, 1] = module.IGNORE
    majority, pure = module._patch_majority(target, patch=2, classes=3)
    assert majority[0, 3, 0] == 2 and not pure[0, 3, 0]
    assert int(pure.sum()) == 8 and module.as_logits(majority, 3).argmax(1).equal(majority)
