"""Build a multi-task model from the `model` section of a config and the benchmark's task specs."""
from __future__ import annotations

import difflib
from typing import Any, Mapping

from torch import nn

from tokenmtl.models.adapters import TimmViTAdapter
from tokenmtl.models.heads import DenseHead
from tokenmtl.models.multitask import MultiTaskModel

# Keys of the `model` section passed to timm as overrides of the named architecture.
TIMM_OVERRIDES = ("img_size", "patch_size", "depth", "embed_dim", "num_heads", "mlp_ratio",
                  "drop_path_rate", "qkv_bias")


def build_vit(model_cfg: Mapping[str, Any]) -> nn.Module:
    """A timm ViT from `model.backbone` plus overrides; weights only if asked (never by default)."""
    import timm

    name = model_cfg["backbone"]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models("vit_*"), n=5)
        raise ValueError(f"unknown timm backbone {name!r}; close matches: {close or 'none'}")
    overrides = {k: model_cfg[k] for k in TIMM_OVERRIDES if model_cfg.get(k) is not None}
    if isinstance(overrides.get("img_size"), list):
        overrides["img_size"] = tuple(overrides["img_size"])
    vit = timm.create_model(name, pretrained=False, num_classes=0, **overrides)
    if model_cfg.get("pretrained") or model_cfg.get("weights"):
        from tokenmtl.models.weights import resolve_pretrained

        resolve_pretrained(vit, name, pretrained=bool(model_cfg.get("pretrained")),
                           weights=model_cfg.get("weights"))
    return vit


def build_model(model_cfg: Mapping[str, Any], task_specs: Mapping[str, Any]) -> MultiTaskModel:
    """Shared timm ViT encoder + one DenseHead per task (out_channels from each TaskSpec)."""
    encoder = TimmViTAdapter(build_vit(model_cfg))
    hidden = model_cfg.get("head_channels") or None
    heads = {name: DenseHead(encoder.embed_dim, spec.out_channels, hidden)
             for name, spec in task_specs.items()}
    return MultiTaskModel(encoder, heads)
