"""Local pretrained weights: safetensors / .pth round trips, position-embedding resizing, safety."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from tokenmtl.models import weights as weights_module
from tokenmtl.models.weights import WeightsError, load_vit_weights, pretrained_path, resolve_pretrained


def tiny_vit(img_size=(32, 32), depth=2, embed_dim=192, num_classes=0) -> torch.nn.Module:
    torch.manual_seed(len(img_size) + img_size[0] + depth)
    return timm.create_model(
        "vit_tiny_patch16_384",
        pretrained=False,
        num_classes=num_classes,
        img_size=img_size,
        patch_size=16,
        depth=depth,
        embed_dim=embed_dim,
        num_heads=3,
    ).eval()


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return tiny_vit(num_classes=10)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, size=(32, 32)) -> bool:
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        return torch.allclose(a.forward_features(x), b.forward_features(x))


def test_safetensors_round_trip_gives_equal_outputs(tmp_path, source):
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    model = tiny_vit()
    assert not same_outputs(source, model)
    report = load_vit_weights(model, path)
    assert same_outputs(source, model)
    assert sorted(report.ignored) == ["head.bias", "head.weight"] and not report.missing
    assert "loaded" in report.summary()


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_pth_round_trip_with_or_without_wrapper(tmp_path, source, wrapper):
    state = source.state_dict()
    payload = state if wrapper is None else {wrapper: state, "epoch": 7}
    torch.save(payload, tmp_path / "vit.pth")
    model = tiny_vit()
    load_vit_weights(model, tmp_path / "vit.pth")
    assert same_outputs(source, model)


def test_module_prefix_from_data_parallel_is_removed(tmp_path, source):
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "dp.pth")
    model = tiny_vit()
    load_vit_weights(model, tmp_path / "dp.pth")
    assert same_outputs(source, model)


def test_other_image_size_resamples_the_position_embedding(tmp_path, source):
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    model = tiny_vit(img_size=(48, 64))
    report = load_vit_weights(model, tmp_path / "vit.safetensors")
    assert report.resized and report.resized[0].startswith("pos_embed")
    assert model.pos_embed.shape == (1, 1 + 3 * 4, 192)
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1])  # class token untouched


class Payload:
    """An arbitrary Python object that a checkpoint must not be allowed to unpickle."""


def test_pickled_objects_in_pth_are_refused(tmp_path, source):
    torch.save({"model": source.state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refused"):
        load_vit_weights(tiny_vit(), tmp_path / "evil.pth")


def test_architecture_mismatch_is_reported(tmp_path, source):
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    with pytest.raises(WeightsError, match="missing .*blocks.2"):
        load_vit_weights(tiny_vit(depth=3), tmp_path / "vit.safetensors")
    report = load_vit_weights(tiny_vit(depth=3), tmp_path / "vit.safetensors", strict=False)
    assert any(k.startswith("blocks.2.") for k in report.missing)
    with pytest.raises(WeightsError, match="different ViT size"):
        load_vit_weights(tiny_vit(embed_dim=96), tmp_path / "vit.safetensors")


def test_unsupported_or_missing_files(tmp_path):
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported"):
        load_vit_weights(tiny_vit(), tmp_path / "w.onnx")
    with pytest.raises(WeightsError, match="not found.*--weights"):
        load_vit_weights(tiny_vit(), tmp_path / "absent.safetensors")
    (tmp_path / "broken.npz").write_bytes(b"not an npz")
    with pytest.raises(WeightsError, match="npz"):
        load_vit_weights(tiny_vit(), tmp_path / "broken.npz")


def test_resolve_prefers_local_weights_and_loads_them(tmp_path, source):
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    model = tiny_vit()
    report = resolve_pretrained(
        model, "vit_tiny_patch16_384", pretrained=True, weights=str(tmp_path / "vit.safetensors")
    )
    assert report is not None and same_outputs(source, model)
    assert resolve_pretrained(tiny_vit(), "vit_tiny_patch16_384", False, None) is None
    with pytest.raises(WeightsError, match="model.weights file not found"):
        pretrained_path("vit_tiny_patch16_384", True, tmp_path / "missing.pth")


def test_offline_pretrained_without_weights_says_how_to_provide_them(monkeypatch):
    def offline(name):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(weights_module, "_download_from_hub", offline)
    with pytest.raises(WeightsError) as err:
        pretrained_path("vit_tiny_patch16_384", pretrained=True, weights=None)
    message = str(err.value)
    assert "--weights PATH" in message and "model.weights" in message
    assert "model.pretrained=false" in message


def test_loading_needs_a_vit():
    with pytest.raises(WeightsError, match="VisionTransformer"):
        load_vit_weights(torch.nn.Linear(2, 2), "x.safetensors")
