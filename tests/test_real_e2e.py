"""`tokenmtl train configs/<paper config> --data-root FIXTURE` runs end to end on CPU."""

import json

import pytest
from typer.testing import CliRunner

from fixtures_real import write_nyud, write_pascal, write_taskonomy
from tokenmtl.cli import app

TINY_MODEL = [
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "train.batch_size=2",
    "eval.batch_size=2",
    "train.eval_every=5",
    "train.checkpoint_every=5",
    "train.num_workers=0",
    "log.tensorboard=false",
]


@pytest.mark.parametrize(
    "config, writer, size, tasks",
    [
        ("configs/nyud_vit_t.yaml", write_nyud, (32, 32), {"semseg", "depth", "normals", "edge"}),
        ("configs/pascal_vit_t.yaml", write_pascal, (32, 32), {"semseg", "human_parts", "saliency", "normals", "edge"}),
        ("configs/taskonomy_vit_b.yaml", write_taskonomy, (32, 32), None),
    ],
)
def test_paper_config_trains_on_a_fixture_dataset(tmp_path, config, writer, size, tasks):
    root = writer(tmp_path / "data")
    sets = TINY_MODEL + [
        f"benchmark.image_size=[{size[0]},{size[1]}]",
        f"model.img_size=[{size[0]},{size[1]}]",
        "train.iterations=5",
    ]
    args = [
        "train",
        config,
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "run"),
        "--no-pretrained",
        "--no-progress",
    ] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    if tasks is not None:
        assert set(results["tasks"]) == tasks
    assert results["timing"]["iterations"] == 5
    assert all(v == v for metrics in results["tasks"].values() for v in metrics.values())  # no NaN
