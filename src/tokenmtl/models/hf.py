"""Hugging Face encoders as `EncoderAdapter`s: BERT-family text encoders and HF `ViTModel`.

`transformers` is optional (the `[hf]` extra): the adapters only use the model objects they are
given; `load_hf_model` imports it lazily. Written against transformers 5.x, where a layer is called
as `layer(hidden_states, attention_mask)` and returns a tensor (4.x returned a tuple; both work).
The attention mask is kept in the context as a (B, N) bool of attendable tokens and, built once per
batch (not per layer), as the additive float mask (B, 1, 1, N) that the `eager` and `sdpa` attention
backends read (None when every token attends, as `transformers` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from tokenmtl.models.adapters import EncoderAdapter, VisionContext
from tokenmtl.models.multitask import MultiTaskModel

POOLINGS = ("mean", "cls", "tokens")
SUPPORTED_ATTENTION = ("eager", "sdpa")


def load_hf_model(name_or_path: str, **kwargs: Any) -> nn.Module:
    """`transformers.AutoModel.from_pretrained(name_or_path, **kwargs)`, with a clear error if missing."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "Hugging Face models need the optional dependency transformers: pip install 'tokenmtl[hf]'"
        ) from exc
    return transformers.AutoModel.from_pretrained(name_or_path, **kwargs)


@dataclass(frozen=True)
class TextContext:
    """Per-batch facts of a text encoder: which tokens can be attended (and pooled)."""

    mask: torch.Tensor  # (B', N') bool, True = real token; appended TE tokens are True
    num_prefix_tokens: int = 1  # [CLS]
    num_extra: int = 0
    bias: Any = "from_mask"  # additive mask (B', 1, 1, N') of `mask`, None = all attend; built if not given

    def __post_init__(self) -> None:
        if isinstance(self.bias, str):
            object.__setattr__(self, "bias", _additive_mask(self.mask, torch.get_default_dtype()))


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, N) bool -> (B, 1, 1, N) additive mask (0 attend, dtype min masked); None if all attend."""
    if bool(mask.all()):
        return None
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def _find_layers(model: nn.Module) -> nn.ModuleList:
    encoder = getattr(model, "encoder", None)
    for layers in (getattr(encoder, "layer", None), getattr(model, "layers", None), getattr(encoder, "layers", None)):
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"{type(model).__name__} has no transformer layers at .encoder.layer or .layers")


class HFEncoderAdapter(EncoderAdapter):
    """Adapter for a Hugging Face encoder: a BERT-family text model or an HF `ViTModel`.

    Text: `embed` takes {"input_ids", "attention_mask"?, "token_type_ids"?}; `finish` pools the
    last tokens over the attention mask (`pooling="mean"`, default), takes [CLS] ("cls") or returns
    the tokens (B, N, D) ("tokens"). Vision: `finish` applies the final layernorm and returns the
    patch grid (B, D, h, w), like `TimmViTAdapter`.
    """

    def __init__(self, hf_model: nn.Module, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; allowed: {list(POOLINGS)}")
        config = getattr(hf_model, "config", None)
        if config is None or not hasattr(hf_model, "embeddings"):
            raise TypeError(
                f"HFEncoderAdapter needs a Hugging Face encoder model (with .config and "
                f".embeddings); got {type(hf_model).__name__}"
            )
        attention = getattr(config, "_attn_implementation", None) or "eager"
        if attention not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"attention implementation {attention!r} is not supported; load the model "
                f"with attn_implementation in {list(SUPPORTED_ATTENTION)}"
            )
        self.hf = hf_model
        self.blocks = _find_layers(hf_model)
        self.embed_dim = int(config.hidden_size)
        self.pooling = pooling
        self.is_vision = hasattr(hf_model.embeddings, "patch_embeddings")
        if self.is_vision:
            patch = config.patch_size
            self.patch_size = (patch, patch) if isinstance(patch, int) else tuple(patch)

    def embed(self, inputs: Any) -> tuple[torch.Tensor, Any]:
        if self.is_vision:
            return self._embed_image(inputs)
        return self._embed_text(inputs)

    def _embed_text(self, inputs: Any) -> tuple[torch.Tensor, TextContext]:
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise ValueError(
                f"a text encoder expects a dict with 'input_ids' (and optionally "
                f"'attention_mask', 'token_type_ids'); got {type(inputs).__name__}"
            )
        ids = inputs["input_ids"]
        kwargs = {"input_ids": ids}
        if inputs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = inputs["token_type_ids"]
        tokens = self.hf.embeddings(**kwargs)
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        return tokens, TextContext(mask=mask, bias=_additive_mask(mask, tokens.dtype))

    def _embed_image(self, inputs: Any) -> tuple[torch.Tensor, VisionContext]:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise ValueError("an HF ViT expects pixel values of shape (B, 3, H, W)")
        h, w = inputs.shape[-2:]
        size = getattr(self.hf.config, "image_size", None)
        size = (size, size) if isinstance(size, int) else tuple(size or (h, w))
        interpolate = (int(h), int(w)) != tuple(size)
        tokens = self.hf.embeddings(inputs, interpolate_pos_encoding=interpolate)
        grid = (int(h) // self.patch_size[0], int(w) // self.patch_size[1])
        ctx = VisionContext(
            grid=grid, num_prefix_tokens=tokens.shape[1] - grid[0] * grid[1], image_size=(int(h), int(w))
        )
        return tokens, ctx

    def run_block(self, index: int, tokens: torch.Tensor, ctx: Any) -> torch.Tensor:
        if isinstance(ctx, TextContext):
            if ctx.mask.shape != tokens.shape[:2]:
                raise ValueError(
                    f"attention mask {tuple(ctx.mask.shape)} does not fit tokens "
                    f"{tuple(tokens.shape[:2])} at block {index}"
                )
            bias = ctx.bias
            if bias is not None and bias.dtype != tokens.dtype:
                bias = _additive_mask(ctx.mask, tokens.dtype)
            return _layer_output(self.blocks[index](tokens, bias))
        return _layer_output(self.blocks[index](tokens))

    def repeat_ctx(self, ctx: Any, times: int) -> Any:
        if isinstance(ctx, TextContext):
            bias = None if ctx.bias is None else ctx.bias.repeat(times, 1, 1, 1)
            return replace(ctx, mask=ctx.mask.repeat(times, 1), bias=bias)
        return ctx

    def extend_ctx(self, ctx: Any, num_extra: int) -> Any:
        if isinstance(ctx, TextContext):
            extra = torch.ones(ctx.mask.shape[0], num_extra, dtype=torch.bool, device=ctx.mask.device)
            bias = ctx.bias
            if bias is not None:  # appended tokens are attended: zeros in the additive mask
                bias = torch.cat([bias, bias.new_zeros(*bias.shape[:3], num_extra)], dim=3)
            return replace(
                ctx, mask=torch.cat([ctx.mask, extra], dim=1), bias=bias, num_extra=ctx.num_extra + num_extra
            )
        return replace(ctx, num_extra=ctx.num_extra + num_extra)

    def token_mask(self, ctx: Any) -> torch.Tensor | None:
        """(B, N) bool of real tokens (padding excluded) for analysis; None for images."""
        return ctx.mask if isinstance(ctx, TextContext) else None

    def finish(self, tokens: torch.Tensor, ctx: Any) -> torch.Tensor:
        if isinstance(ctx, TextContext):
            if self.pooling == "tokens":
                return tokens
            if self.pooling == "cls":
                return tokens[:, 0]
            weights = ctx.mask[:, : tokens.shape[1]].to(tokens.dtype).unsqueeze(-1)
            return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        x = self.hf.layernorm(tokens)[:, ctx.num_prefix_tokens :]
        h, w = ctx.grid
        if x.shape[1] != h * w:
            raise ValueError(f"expected {h * w} patch tokens after the last block, got {x.shape[1]}")
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def build_text_model(hf_model: nn.Module, heads: Mapping[str, nn.Module], pooling: str = "mean") -> MultiTaskModel:
    """A `MultiTaskModel` on a Hugging Face text encoder, e.g. with `PooledHead`s."""
    return MultiTaskModel(HFEncoderAdapter(hf_model, pooling=pooling), heads)
