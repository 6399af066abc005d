"""Evaluation over a whole split: one meter per task, statistics summed before scores are taken."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from tokenmtl.models.multitask import MultiTaskModel
from tokenmtl.progress import progress_bar


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a collated batch on `device`."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    loader: DataLoader,
    task_specs: Mapping[str, Any],
    device: torch.device | str = "cpu",
    reduce: Callable[[torch.Tensor], None] | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, dict[str, float]]:
    """Per-task metrics of `model` on every batch of `loader` (dataset-level, not batch means).

    `reduce` (an in-place SUM all-reduce) is applied to every meter's running sums first, so
    several processes give the metrics of the whole split.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    meters = {task: task_specs[task].make_meter() for task in model.tasks}
    try:
        for batch in progress_bar(loader, desc=desc, enabled=progress):
            batch = move_batch(batch, device)
            outputs = model(MultiTaskModel.inputs_from_batch(batch))
            for task, meter in meters.items():
                meter.update(outputs[task].float(), batch[task])
    finally:
        model.train(was_training)
    if reduce is not None:
        for meter in meters.values():
            for tensor in meter.state_tensors().values():
                reduce(tensor)
    return {task: {k: float(v) for k, v in meter.compute().items()} for task, meter in meters.items()}
