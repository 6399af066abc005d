"""Encoder adapters: where a transformer's blocks are and how tokens enter and leave them.

DTME and the multi-task model only talk to an `EncoderAdapter`, so any transformer with a list
of blocks (timm ViT here, Hugging Face encoders in `models.hf`) plugs in the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn


class EncoderAdapter(nn.Module, ABC):
    """A transformer encoder seen as: embed -> blocks[0..L-1] -> finish.

    Subclasses set `blocks` (the block modules, in order) and `embed_dim`, and implement
    `embed`, `run_block`, `repeat_ctx`, `extend_ctx` and `finish`. The context `ctx` carries
    whatever a block or the head interface needs besides the tokens (grid size, attention mask).
    """

    blocks: nn.Module
    embed_dim: int

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks L."""
        return len(self.blocks)

    @abstractmethod
    def embed(self, inputs: Any) -> tuple[torch.Tensor, Any]:
        """Tokens entering block 0, shape (B, N, D), and the context of this batch."""

    @abstractmethod
    def run_block(self, index: int, tokens: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Apply block `index` to tokens (B', N', D) under context `ctx`."""

    @abstractmethod
    def repeat_ctx(self, ctx: Any, times: int) -> Any:
        """Context for the batch folded `times` along the batch axis (task-major)."""

    @abstractmethod
    def extend_ctx(self, ctx: Any, num_extra: int) -> Any:
        """Context when `num_extra` tokens are appended to the sequence (Token Expansion)."""

    @abstractmethod
    def finish(self, tokens: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Features for the task heads from the last block's tokens."""


@dataclass(frozen=True)
class VisionContext:
    """Per-batch facts a ViT needs after embedding: patch grid and prefix-token count."""

    grid: tuple[int, int]
    num_prefix_tokens: int
    image_size: tuple[int, int]
    num_extra: int = 0


class TimmViTAdapter(EncoderAdapter):
    """Adapter for a timm `VisionTransformer`: blocks are `vit.blocks`, heads see the patch grid.

    `finish` applies the final norm, drops the prefix (class/register) tokens and reshapes the
    patch tokens to a (B, D, h, w) map, the input of the paper's baseline decoder.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
            raise TypeError(
                f"TimmViTAdapter needs a timm VisionTransformer (with .blocks and .patch_embed); "
                f"got {type(vit).__name__}"
            )
        self.vit = vit
        self.blocks = vit.blocks
        self.embed_dim = int(vit.embed_dim)

    def embed(self, inputs: torch.Tensor) -> tuple[torch.Tensor, VisionContext]:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise ValueError(
                f"a ViT expects images of shape (B, 3, H, W); got "
                f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}"
            )
        vit = self.vit
        x = vit.patch_embed(inputs)
        if x.dim() == 4:  # dynamic_img_size keeps (B, h, w, D)
            grid = (int(x.shape[1]), int(x.shape[2]))
        else:
            grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        ctx = VisionContext(
            grid=grid,
            num_prefix_tokens=int(vit.num_prefix_tokens),
            image_size=(int(inputs.shape[-2]), int(inputs.shape[-1])),
        )
        return x, ctx

    def run_block(self, index: int, tokens: torch.Tensor, ctx: VisionContext) -> torch.Tensor:
        return self.blocks[index](tokens)

    def repeat_ctx(self, ctx: VisionContext, times: int) -> VisionContext:
        return ctx

    def extend_ctx(self, ctx: VisionContext, num_extra: int) -> VisionContext:
        return replace(ctx, num_extra=ctx.num_extra + num_extra)

    def finish(self, tokens: torch.Tensor, ctx: VisionContext) -> torch.Tensor:
        x = self.vit.norm(tokens)
        x = x[:, ctx.num_prefix_tokens :]
        h, w = ctx.grid
        if x.shape[1] != h * w:
            raise ValueError(f"expected {h * w} patch tokens after the last block, got {x.shape[1]}")
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
