"""The batches and the model mode of a conflict analysis (docs/method.md, "Analysis mode").

Both passes of `tokenmtl.dtme.analysis.analyze` must read the same batches (`fixed_order`,
checked with `batch_fingerprint`), every process must run the same number of them
(`common_batch_count`), and the model runs with batch-statistics normalisation and dropout off,
its running statistics untouched (`analysis_mode`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

Reduce = Callable[[torch.Tensor], Any]


@contextmanager
def analysis_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` with batch-statistics normalisation and every other module in eval mode.

    Normalisation layers (BatchNorm, SyncBatchNorm, InstanceNorm, ...) use the statistics of the
    batch, as in training; dropout, drop path and anything else that behaves differently in
    training are off, so the analysis is deterministic. On exit every module's mode and every
    normalisation buffer (running mean/var, num_batches_tracked) is restored exactly.
    """
    modes = [(module, module.training) for module in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [(m, {name: buf.detach().clone() for name, buf in m.named_buffers(recurse=False)}) for m in norms]
    model.eval()
    for m in norms:
        m.train()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for m, buffers in saved:
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)


def fixed_order(loader: Iterable, num_batches: int | None = None) -> Iterable:
    """A loader that yields the same batches at every pass: a DataLoader's first `num_batches` batches, frozen.

    A DataLoader over a map-style dataset draws a new order at every pass when it shuffles (or
    its sampler does, e.g. a seeded `GlobalBatchShards`); its index lists are drawn once here and
    replayed. Other loaders are returned as they are (`analyze` checks that both passes agree).
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    if loader.batch_sampler is not None:
        order: dict[str, Any] = {"batch_sampler": list(islice(loader.batch_sampler, num_batches))}
    else:  # batch_size=None: every index of the sampler is one batch
        order = {"sampler": list(islice(loader.sampler, num_batches)), "batch_size": None}
    workers: dict[str, Any] = {}
    if loader.num_workers > 0:
        workers = {
            "prefetch_factor": loader.prefetch_factor,
            "persistent_workers": loader.persistent_workers,
            "multiprocessing_context": loader.multiprocessing_context,
            "worker_init_fn": loader.worker_init_fn,
            "timeout": loader.timeout,
        }
    return DataLoader(
        loader.dataset,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
        **order,
        **workers,
    )


def batch_fingerprint(batch: Any) -> int:
    """CRC-32 of every tensor (keys, dtype, shape, bytes) of a batch: different batches differ.

    A checksum, not a cryptographic hash: it guards against a loader that changes between passes
    (CRC-32 reads about 1 GB/s, a few times faster than blake2b, so it is cheap next to a forward).
    """
    crc = 0

    def visit(value: Any) -> None:
        nonlocal crc
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            crc = zlib.crc32(f"{value.dtype}{tuple(value.shape)}".encode(), crc)
            crc = zlib.crc32(memoryview(value.reshape(-1).view(torch.uint8).numpy()), crc)
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                crc = zlib.crc32(str(key).encode(), crc)
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        else:
            crc = zlib.crc32(repr(value).encode(), crc)

    visit(batch)
    return crc


def common_batch_count(count: int, reduce: Reduce, device: torch.device | str | None = None) -> int:
    """The smallest per-process batch count, using only the SUM `reduce` (an all-reduce).

    Train-mode normalisation layers synchronise their statistics at every forward pass in a
    distributed run, so every process must run the same number of batches: the counts are summed
    (an upper bound), then a histogram of the counts is summed and its first filled bin is the minimum.
    """
    total = torch.tensor([float(count)], dtype=torch.float64, device=device)
    reduce(total)
    histogram = torch.zeros(int(total.item()) + 1, dtype=torch.float64, device=device)
    histogram[count] = 1.0
    reduce(histogram)
    return int(torch.nonzero(histogram > 0)[0].item())
