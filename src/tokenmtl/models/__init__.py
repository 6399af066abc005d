"""Models: encoder adapters, task heads and the multi-task model."""

from tokenmtl.models.adapters import EncoderAdapter, TimmViTAdapter
from tokenmtl.models.heads import DenseHead, PooledHead
from tokenmtl.models.multitask import MultiTaskModel, SharedTrunk

__all__ = ["EncoderAdapter", "TimmViTAdapter", "DenseHead", "PooledHead", "MultiTaskModel", "SharedTrunk"]
