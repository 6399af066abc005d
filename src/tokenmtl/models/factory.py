"""Build a multi-task model from the `model` section of a config and the benchmark's task specs.

`model.family` picks the encoder: `timm` (default; a timm ViT with one DenseHead per task) or `hf`
(a Hugging Face text encoder, pooled, with one linear PooledHead per task; `models.text` finds the
model and its tokenizer, and `build_collate` returns the batch collation its inputs need).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from tokenmtl.config import ConfigError
from tokenmtl.models.adapters import TimmViTAdapter
from tokenmtl.models.heads import DenseHead, PooledHead
from tokenmtl.models.hf import SUPPORTED_ATTENTION, HFEncoderAdapter
from tokenmtl.models.multitask import MultiTaskModel
from tokenmtl.models.text import TextCollate, load_tokenizer, require_transformers, resolve_model_dir

FAMILIES = ("timm", "hf")
HF_POOLINGS = ("mean", "cls")
HF_DEFAULTS = {"pooling": "mean", "attn_implementation": "sdpa", "max_length": 128}  # see resolve_max_length()

# Keys of the `model` section passed to timm as overrides of the named architecture.
TIMM_OVERRIDES = (
    "img_size",
    "patch_size",
    "depth",
    "embed_dim",
    "num_heads",
    "mlp_ratio",
    "drop_path_rate",
    "qkv_bias",
)


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

        resolve_pretrained(vit, name, pretrained=bool(model_cfg.get("pretrained")), weights=model_cfg.get("weights"))
    return vit


def model_family(model_cfg: Mapping[str, Any]) -> str:
    """`model.family` (default "timm"), checked."""
    family = model_cfg.get("family") or "timm"
    if family not in FAMILIES:
        raise ConfigError(f"model.family must be one of {', '.join(FAMILIES)}; got {family!r}")
    return family


def _hf_option(model_cfg: Mapping[str, Any], key: str) -> Any:
    value = model_cfg.get(key)
    return HF_DEFAULTS[key] if value is None else value


def _tokenizer_name(model_cfg: Mapping[str, Any]) -> str:
    return model_cfg.get("tokenizer") or model_cfg.get("name")


def resolve_max_length(model_cfg: Mapping[str, Any]) -> int:
    """Tokens kept per text: `model.max_length`, by default 128 or the model's positions if fewer."""
    value = model_cfg.get("max_length")
    config = json.loads((resolve_model_dir(model_cfg.get("name")) / "config.json").read_text())
    positions = config.get("max_position_embeddings")
    if value is None:
        return min(HF_DEFAULTS["max_length"], positions or HF_DEFAULTS["max_length"])
    if isinstance(value, int) and not isinstance(value, bool) and positions and value > positions:
        raise ConfigError(
            f"model.max_length {value} exceeds the {positions} positions of "
            f"{model_cfg.get('name')!r}; use model.max_length <= {positions}"
        )
    return value


def load_hf_encoder(model_cfg: Mapping[str, Any]) -> nn.Module:
    """The Hugging Face encoder of `model.name`, offline, float32, with the attention backend asked for.

    BERT's pooler (a dense layer on [CLS]) is dropped: the heads read the adapter's pooled tokens,
    and an unused layer would only carry parameters without gradients.
    """
    attention = _hf_option(model_cfg, "attn_implementation")
    if attention not in SUPPORTED_ATTENTION:
        raise ConfigError(
            f"model.attn_implementation must be one of {', '.join(SUPPORTED_ATTENTION)}; got {attention!r}"
        )
    pooling = _hf_option(model_cfg, "pooling")
    if pooling not in HF_POOLINGS:
        raise ConfigError(f"model.pooling must be one of {', '.join(HF_POOLINGS)}; got {pooling!r}")
    directory = resolve_model_dir(model_cfg.get("name"))
    transformers = require_transformers()
    try:
        hf_model = transformers.AutoModel.from_pretrained(
            str(directory), local_files_only=True, attn_implementation=attention
        )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load the Hugging Face model in {str(directory)!r}: {first}") from None
    if getattr(hf_model, "pooler", None) is not None:
        hf_model.pooler = None
    if any(p.dtype != torch.float32 for p in hf_model.parameters()):
        hf_model.float()
    return hf_model


def build_collate(model_cfg: Mapping[str, Any]) -> Callable[[list], dict] | None:
    """The DataLoader `collate_fn` the model's inputs need: None (default collation) for timm,
    a picklable `TextCollate` (tokenize "text", stack the targets) for hf."""
    if model_family(model_cfg) != "hf":
        return None
    collate = TextCollate(_tokenizer_name(model_cfg), resolve_max_length(model_cfg))
    load_tokenizer(collate.tokenizer)  # fail now, with the config's names, not in a worker
    return collate


def _build_hf_model(model_cfg: Mapping[str, Any], task_specs: Mapping[str, Any]) -> MultiTaskModel:
    load_tokenizer(_tokenizer_name(model_cfg))  # a model dir without a tokenizer is an error at build
    resolve_max_length(model_cfg)
    encoder = HFEncoderAdapter(load_hf_encoder(model_cfg), pooling=_hf_option(model_cfg, "pooling"))
    heads = {
        name: PooledHead(encoder.embed_dim, spec.out_channels, squeeze=spec.out_channels == 1)
        for name, spec in task_specs.items()
    }
    return MultiTaskModel(encoder, heads)


def build_model(model_cfg: Mapping[str, Any], task_specs: Mapping[str, Any]) -> MultiTaskModel:
    """The multi-task model of `model_cfg`: timm ViT + DenseHeads, or pooled HF encoder + PooledHeads.

    Head widths come from each TaskSpec's `out_channels`; a pooled head with one output returns (B,).
    """
    if model_family(model_cfg) == "hf":
        return _build_hf_model(model_cfg, task_specs)
    encoder = TimmViTAdapter(build_vit(model_cfg))
    hidden = model_cfg.get("head_channels") or None
    heads = {name: DenseHead(encoder.embed_dim, spec.out_channels, hidden) for name, spec in task_specs.items()}
    return MultiTaskModel(encoder, heads)
