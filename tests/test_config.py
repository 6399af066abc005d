"""Config loading: defaults, YAML, --set overrides and errors that name the key."""
import pytest

from tokenmtl.config import ConfigError, load_config, parse_assignment


def test_demo_config_resolves_with_defaults():
    cfg = load_config("demo")
    assert cfg["benchmark"]["name"] == "scenes"
    assert cfg["tasks"] == ["semseg", "depth", "normals", "edge"]
    assert cfg["train"]["poly_power"] == 0.9  # from DEFAULTS, not in the file


def test_set_overrides_parse_yaml_values():
    cfg = load_config("demo", overrides=["train.iterations=20", "train.lr=3e-4", "dtme.enabled=true",
                                          "tasks=[depth,edge]"])
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


@pytest.mark.parametrize("assignment, message", [
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
])
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
