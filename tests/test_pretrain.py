"""Locally pretrained backbones: training, timm key names, the settings-hash cache, loading."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import TINY_SETS
from tokenmtl import pretrain as pretrain_module
from tokenmtl.config import dump_config, load_config
from tokenmtl.data.base import create_benchmark
from tokenmtl.models.factory import build_model
from tokenmtl.pretrain import pretrain, resolve_weights, settings_hash


@pytest.fixture
def tiny_pretrain_cfg(scenes_cache):
    """configs/scenes_pretrain.yaml shrunk to seconds (tiny images, model and iteration count)."""
    return load_config("scenes_pretrain", TINY_SETS + [f"benchmark.cache_dir={scenes_cache}"])


@pytest.fixture
def train_calls(monkeypatch):
    """Counts the training runs `pretrain` starts (the real trainer still runs)."""
    calls = []

    def counting_train(cfg, out_dir, **kwargs):
        calls.append(out_dir)
        return real_train(cfg, out_dir, **kwargs)

    real_train = pretrain_module.train
    monkeypatch.setattr(pretrain_module, "train", counting_train)
    return calls


def fresh_timm_vit(model_cfg):
    return timm.create_model(
        model_cfg["backbone"],
        pretrained=False,
        num_classes=0,
        img_size=model_cfg["img_size"],
        patch_size=model_cfg["patch_size"],
        depth=model_cfg["depth"],
        embed_dim=model_cfg["embed_dim"],
        num_heads=model_cfg["num_heads"],
    )


def test_pretrain_saves_the_encoder_under_timm_names_and_reuses_the_cache(tiny_pretrain_cfg, tmp_path, train_calls):
    path = pretrain(tiny_pretrain_cfg, progress=False, cache_dir=tmp_path)
    assert path == tmp_path / settings_hash(tiny_pretrain_cfg) / "encoder.safetensors"
    saved = load_file(str(path))
    reference = fresh_timm_vit(tiny_pretrain_cfg["model"]).state_dict()
    assert sorted(saved) == sorted(reference)  # timm's names, nothing else
    assert all(saved[k].shape == reference[k].shape for k in saved)
    assert not torch.equal(saved["blocks.0.attn.qkv.weight"], reference["blocks.0.attn.qkv.weight"])
    assert len(train_calls) == 1 and not (tmp_path / "run").exists()  # temporary run folder removed
    mtime = path.stat().st_mtime_ns

    again = pretrain(tiny_pretrain_cfg, progress=False, cache_dir=tmp_path)
    assert again == path and len(train_calls) == 1 and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.parent.name]


def test_out_dir_keeps_the_run_and_a_copy_of_the_weights(tiny_pretrain_cfg, tmp_path, train_calls):
    out = tmp_path / "run"
    path = pretrain(tiny_pretrain_cfg, out_dir=out, progress=False, cache_dir=tmp_path / "cache")
    assert (out / "results.json").is_file() and (out / "settings.json").is_file()
    assert (out / "encoder.safetensors").read_bytes() == path.read_bytes()


def test_every_setting_that_shapes_the_weights_changes_the_hash(tiny_pretrain_cfg):
    base = settings_hash(tiny_pretrain_cfg)
    changed = [
        ["benchmark.seed=7"],
        ["tasks=[reshading]"],
        ["model.depth=3"],
        ["train.iterations=7"],
        ["train.lr=0.002"],
        ["benchmark.scene.noise_std=0.05"],
        ["loss_weights.weights.curvature=2.0"],
    ]
    hashes = {settings_hash(_with(tiny_pretrain_cfg, sets)) for sets in changed}
    assert base not in hashes and len(hashes) == len(changed)
    for same in (
        ["train.eval_every=2"],
        ["benchmark.cache_dir=/elsewhere"],
        ["log.progress=true"],
        ["train.checkpoint_every=1"],
        ["eval.batch_size=3"],
    ):
        assert settings_hash(_with(tiny_pretrain_cfg, same)) == base, same


def _with(cfg, sets):
    return load_config(None, sets, extra=cfg)


def test_fine_tuning_loads_the_pretrained_encoder_and_keeps_its_own_init(
    tiny_pretrain_cfg, tmp_path, monkeypatch, train_calls, tiny_sets
):
    monkeypatch.setenv("TOKENMTL_CACHE", str(tmp_path))
    recipe = tmp_path / "tiny_pretrain.yaml"
    dump_config(tiny_pretrain_cfg, recipe)
    cfg = load_config("scenes_pretrained", tiny_sets + [f"model.weights=pretrained:{recipe}"])
    bench = create_benchmark(cfg["benchmark"], progress=False)
    specs = {t: bench.task_spec(t) for t in cfg["tasks"]}

    torch.manual_seed(0)
    first = build_model(cfg["model"], specs)  # cache miss: pretrains here
    assert len(train_calls) == 1
    saved = load_file(str(tmp_path / "pretrained" / settings_hash(tiny_pretrain_cfg) / "encoder.safetensors"))
    state = first.encoder.vit.state_dict()
    assert sorted(state) == sorted(saved)
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)

    torch.manual_seed(0)
    second = build_model(cfg["model"], specs)  # cache hit: no training
    assert len(train_calls) == 1
    # Building the weights on first use must not shift the run's RNG: heads initialise alike.
    for (name, a), b in zip(first.heads.state_dict().items(), second.heads.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_packaged_pretraining_shares_no_task_or_image_with_fine_tuning():
    pre, fine = load_config("scenes_pretrain"), load_config("scenes_pretrained")
    assert fine["model"]["weights"] == "pretrained:scenes_pretrain"
    assert not set(pre["tasks"]) & set(fine["tasks"])
    assert pre["benchmark"]["seed"] != fine["benchmark"]["seed"]
    assert {k: v for k, v in pre["model"].items() if k != "weights"} == {
        k: v for k, v in fine["model"].items() if k != "weights"
    }
    demo = load_config("demo")
    # The same recipe as scratch; only DTME expands earlier from a pretrained backbone.
    early = {"expand_at": demo["dtme"]["expand_at"]}
    assert {**fine, "model": {**fine["model"], "weights": None}, "dtme": {**fine["dtme"], **early}} == demo
    assert fine["dtme"]["expand_at"] < demo["dtme"]["expand_at"]


def test_bad_requests_say_what_is_allowed(tiny_pretrain_cfg, tmp_path):
    with pytest.raises(ValueError, match="dtme.enabled must be false"):
        pretrain(_with(tiny_pretrain_cfg, ["dtme.enabled=true"]), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="pretrained:scenes_pretrain"):
        resolve_weights("pretrained:")
    with pytest.raises(ValueError, match="of the form"):
        resolve_weights("weights.safetensors")
