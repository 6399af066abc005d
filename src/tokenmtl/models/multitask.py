"""The multi-task model: a shared transformer encoder, a trunk that runs its blocks, one head per task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tokenmtl.models.adapters import EncoderAdapter


class SharedTrunk(nn.Module):
    """Runs every block once on one shared token stream; every task sees the same tokens."""

    def forward(
        self, encoder: EncoderAdapter, tokens: torch.Tensor, ctx: Any, tasks: list[str]
    ) -> dict[str, torch.Tensor]:
        for index in range(encoder.num_blocks):
            tokens = encoder.run_block(index, tokens, ctx)
        return {task: tokens for task in tasks}


class MultiTaskModel(nn.Module):
    """Shared encoder -> trunk -> one head per task; `forward` returns {task: prediction}.

    A single-task (ST) model is the same class with one task. The trunk is the only part that
    DTME (and Recon) replace: `SharedTrunk` by default, an expanded trunk with per-task streams
    after `tokenmtl.dtme.expand`.
    """

    def __init__(self, encoder: EncoderAdapter, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a MultiTaskModel needs at least one task head")
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        self.trunk: nn.Module = SharedTrunk()

    @property
    def tasks(self) -> list[str]:
        """Task names, in head order."""
        return list(self.heads.keys())

    @staticmethod
    def inputs_from_batch(batch: Mapping[str, Any]) -> Any:
        """The encoder input of a collated batch: the image tensor, or the text fields."""
        if "image" in batch:
            return batch["image"]
        if "input_ids" in batch:
            return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        raise KeyError(f"a batch needs 'image' or 'input_ids'; got keys {sorted(batch)}")

    def forward(self, inputs: Any, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Predictions of every task, or only of `tasks` (an expanded trunk then runs only their streams)."""
        if tasks is None:
            tasks = self.tasks
        else:
            unknown = [t for t in tasks if t not in self.heads]
            if unknown:
                raise KeyError(f"unknown task(s) {unknown}; this model has {self.tasks}")
        tokens, ctx = self.encoder.embed(inputs)
        streams = self.trunk(self.encoder, tokens, ctx, list(tasks))
        output_size = getattr(ctx, "image_size", None)
        finished: dict[int, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}
        for task in tasks:
            stream = streams[task]
            key = id(stream)
            if key not in finished:  # shared streams are finished once, not once per task
                finished[key] = self.encoder.finish(stream, ctx)
            outputs[task] = self.heads[task](finished[key], output_size)
        return outputs

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only task `task` uses: its head and its part of an expanded trunk."""
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; this model has {self.tasks}")
        params = list(self.heads[task].parameters())
        trunk_task_params = getattr(self.trunk, "task_parameters", None)
        if trunk_task_params is not None:
            params += list(trunk_task_params(task))
        return params

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task uses: the encoder and any shared trunk parameters."""
        specific = {id(p) for task in self.tasks for p in self.task_parameters(task)}
        return [p for p in self.parameters() if id(p) not in specific]
