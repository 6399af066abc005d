"""Config loading: defaults, YAML, --set overrides and errors that name the key."""

import pytest

from tokenmtl.config import ConfigError, load_config, parse_assignment


def test_demo_config_resolves_with_defaults():
    cfg = load_config("demo")
    assert cfg["benchmark"]["name"] == "scenes"
    assert cfg["tasks"] == ["semseg", "depth", "normals", "edge"]
    assert cfg["train"]["poly_power"] == 0.9  # from DEFAULTS, not in the file


def test_set_overrides_parse_yaml_values():
    cfg = load_config(
        "demo", overrides=["train.iterations=20", "train.lr=3e-4", "dtme.enabled=true", "tasks=[depth,edge]"]
    )
    assert cfg["train"]["iterations"] == 20
    assert cfg["train"]["lr"] == pytest.approx(3e-4)
    assert cfg["dtme"]["enabled"] is True
    assert cfg["tasks"] == ["depth", "edge"]


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError, match=r"train.iteratons.*did you mean 'iterations'.*valid keys"):
        load_config("demo", overrides=["train.iteratons=5"])


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config("demo", overrides=["trian.x=1"])


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("train.iterations=-5", "train.iterations must be > 0"),
        ("train.iterations=abc", "train.iterations. must be int"),
        ("train.batch_size=0", "train.batch_size must be > 0"),
        ("train.lr=-1", "train.lr must be >= 0"),
        ("dtme.strategy=best", "dtme.strategy must be one of conflict, random, reverse, swap"),
        ("dtme.ratio=1.5", r"dtme.ratio must be in \(0, 1\]"),
        ("dtme.expand_at=1.0", r"dtme.expand_at must be in \[0, 1\)"),
        ("tasks=[]", "tasks must be a non-empty list"),
        ("tasks=[depth,depth]", "lists a task twice"),
        ("train=5", "must be a mapping"),
    ],
)
def test_bad_values_fail_with_the_key_named(assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides=[assignment])


def test_bad_assignment_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignment("train.iterations")


def test_missing_config_file_lists_packaged_configs(tmp_path):
    with pytest.raises(ConfigError, match="config file not found.*demo"):
        load_config(str(tmp_path / "nope.yaml"))


def test_yaml_file_with_unknown_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbon: vit_small_patch16_224\n")
    with pytest.raises(ConfigError, match="model.backbon.*did you mean 'backbone'"):
        load_config(str(path))


def test_benchmark_and_method_sections_are_open():
    cfg = load_config("demo", overrides=["method.beta=0.5", "benchmark.train_size=64"])
    assert cfg["method"]["beta"] == 0.5
    assert cfg["benchmark"]["train_size"] == 64


def test_sections_are_typed_objects_and_mappings():
    from collections.abc import Mapping

    cfg = load_config("demo", overrides=["train.lr=1", "dtme.lr_mult=5"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # an int where a float is declared
    assert isinstance(cfg.dtme.lr_mult, float) and cfg["dtme"]["lr_mult"] == 5.0
    assert isinstance(cfg.model, Mapping) and cfg.model.get("patch_size") == 8 and "backbone" in dict(cfg.model)
    assert dict(cfg.benchmark)["scene"] == {"depth_scale": 10.0}  # open section: extra keys kept
    cfg["train"]["seed"] = 7
    assert cfg.train.seed == 7
    with pytest.raises(ConfigError, match=r"unknown config key 'train.sede'.*did you mean 'seed'"):
        cfg["train"]["sede"] = 1
    assert load_config(cfg.to_dict()) == cfg  # a stored config loads back to the same settings


def test_declared_keys_for_hf_models_precision_and_compile():
    cfg = load_config()
    assert (cfg.model.family, cfg.model.name, cfg.model.tokenizer, cfg.model.pooling, cfg.model.max_length) == (
        "timm",
        None,
        None,
        "mean",
        128,
    )
    assert cfg.model.attn_implementation == "sdpa" and cfg.train.precision == "fp32" and cfg.train.compile is False
    assert cfg.dtme.post_iterations == "remaining"  # same budget as the baseline by default
    for assignment, message in [
        ("model.family=jax", "model.family must be one of timm, hf"),
        ("train.precision=fp8", "train.precision must be one of fp32, bf16, fp16"),
        ("model.pooling=max", "model.pooling must be one of mean, cls"),
        ("model.max_length=0", "model.max_length must be > 0"),
        ("train.compile=maybe", "'train.compile' must be bool"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config("demo", overrides=[assignment])


def test_every_declared_key_has_a_doc():
    from tokenmtl.config import SECTIONS

    for name, section in SECTIONS.items():
        for key, doc in section.docs().items():
            assert doc and doc[0].isupper(), f"{name}.{key}"
