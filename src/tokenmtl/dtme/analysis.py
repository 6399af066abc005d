"""Conflict analysis of a multi-task model: token spaces and token-level gradient conflicts per layer.

docs/method.md ("Token space", "Conflicts", "Analysis mode", "Conflicts in an expanded model").
Pass 1 streams the tokens entering each block into a float64 covariance (no gradients), then
eigendecomposes and splits it. Pass 2 runs, per batch, one forward pass, T backward passes through
the heads alone (each task's own head) and one backward pass through the blocks batched over the T
tasks (`is_grads_batched`; a loop of T passes as a fallback), which gives dL_t/dX_l for every task
and layer at once, and counts conflicts. Both passes read the same batches (checked) with the model
in `analysis_mode`: batch-statistics normalisation, dropout and drop path off.

Both passes run the model's own trunk (shared, or expanded by DTME/Recon) with an encoder wrapper
that records what enters each block, so an expanded model is analysed as it computes:

- Before the fork (the first block with per-task streams) there is one shared stream: X_l is
  (B, N, D) and task t's token gradient is dL_t/dX_l, as for an unexpanded model.
- At and after the fork the block input is the folded tensor X_l of shape (T*B, N, D), task-major
  (rows t*B:(t+1)*B are task t's stream), taken where the block receives it: after the layer's
  Token Modulation, without the Token Expansion tokens appended for that block (they are parameters,
  not tokens of the stream; the sequence keeps its N tokens between blocks). Task t's token
  gradient is the t-th slice of dL_t/dX_l; tokens of the T slices align by (sample, position), so
  a pair (i, j) compares the change task i wants to its copy of a token with the change task j
  wants to its own copy. The token space of such a layer is the covariance of all T*B*N tokens
  (every task's stream). Pairs counted per layer: (valid tokens) x T(T-1)/2, as before the fork.
- With identity Token Modulation (W=1, b=0) and no other edit, every slice is the shared stream
  and every report is the unexpanded model's (tests/test_dtme_after_training.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenmtl.dtme.analysis_batches import (  # noqa: F401 (public names of this module too)
    analysis_mode,
    batch_fingerprint,
    common_batch_count,
    fixed_order,
)
from tokenmtl.dtme.conflicts import ConflictCounts, conflict_counts
from tokenmtl.dtme.token_space import TokenCovariance, TokenSpace, split_token_space
from tokenmtl.engine.task_gradients import TaskGradients, looped_task_gradients

LossFn = Callable[[Mapping[str, torch.Tensor], Any], Mapping[str, torch.Tensor]]
Reduce = Callable[[torch.Tensor], Any]


@dataclass
class LayerReport:
    """Statistics of the tokens entering one block."""

    layer: int
    dim: int
    k: int
    range_conflict_rate: float
    null_conflict_rate: float
    range_mean_cosine: float
    null_mean_cosine: float
    pairs_counted: float
    eigenvalues: list[float]
    streams: int = 1  # token streams entering the block: 1 (shared), T at and after an expanded model's fork


@dataclass
class ConflictReport:
    """Per-layer token-space report of `analyze`; JSON round trip with `to_json`/`from_json`."""

    tasks: list[str]
    num_blocks: int
    layers: list[LayerReport]
    r: float
    energy_fraction: float | None
    num_batches: int
    num_tokens: float  # tokens counted per stream (all streams of a layer: x streams)
    exclude_prefix: bool
    timings: dict[str, float] = field(default_factory=dict)
    fork: int | None = None  # first block with per-task streams (None: one shared stream)
    plan: dict[str, Any] | None = None  # the DTME plan the analysed model carries (None: unexpanded)

    def layer(self, index: int) -> LayerReport:
        """The report of block `index`."""
        for lr in self.layers:
            if lr.layer == index:
                return lr
        raise KeyError(f"layer {index} was not analysed; analysed layers: {[l.layer for l in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConflictReport:
        data = dict(data)
        data["layers"] = [LayerReport(**lr) for lr in data["layers"]]
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the report; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ConflictReport:
        """Read a report from JSON text or a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _token_mask(encoder: nn.Module, tokens: torch.Tensor, ctx: Any, exclude_prefix: bool) -> torch.Tensor | None:
    """(B, N) bool of tokens to count: the adapter's valid tokens (no padding), minus prefix tokens."""
    mask_fn = getattr(encoder, "token_mask", None)
    mask = mask_fn(ctx) if mask_fn is not None else None
    prefix = int(getattr(ctx, "num_prefix_tokens", 0)) if exclude_prefix else 0
    if prefix:
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        mask = mask.clone()
        mask[:, :prefix] = False
    return mask


class _Enough(Exception):
    """Raised by `_CapturingEncoder` once the last wanted block input is recorded (covariance pass)."""


class _CapturingEncoder:
    """Stands in for the encoder while the model's own trunk runs: records the input of the chosen
    blocks (in block order), the last block's output, and, with `grads`, makes the first chosen
    block's input a gradient target (nothing before it builds a graph). With `stop`, the forward
    ends (`_Enough`) after the last chosen block input is recorded. Every other attribute is the
    encoder's."""

    def __init__(self, encoder: Any, layers: Sequence[int], grads: bool, stop: bool) -> None:
        self._encoder = encoder
        self._layers = set(layers)
        self._first, self._last = min(layers), max(layers)
        self._grads, self._stop = grads, stop
        self.captured: list[torch.Tensor] = []
        self.output: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def run_block(self, index: int, tokens: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self._grads and index == self._first:
            tokens = tokens.detach().requires_grad_(True)
        if index in self._layers:
            self.captured.append(tokens)
        if self._stop and index == self._last:
            raise _Enough
        with torch.set_grad_enabled(torch.is_grad_enabled() and (not self._grads or index >= self._first)):
            self.output = self._encoder.run_block(index, tokens, ctx)
        return self.output


class _RecordingTrunk(nn.Module):
    """The model's own trunk, run with a `_CapturingEncoder` (installed as `model.trunk` for a pass).

    Its `recorder.captured` tensors are (B, N', D) before an expanded trunk's fork and (T*B, N', D)
    at and after it (N' > N where TE tokens are appended for the block; the first N tokens are the
    stream's own); `tokens` and `ctx` are the embedded batch's."""

    def __init__(self, trunk: nn.Module, layers: Sequence[int], grads: bool, stop: bool = False) -> None:
        super().__init__()
        self.inner = trunk
        self.layers, self.grads, self.stop = list(layers), grads, stop

    def forward(self, encoder: Any, tokens: torch.Tensor, ctx: Any, tasks: list[str]) -> dict[str, torch.Tensor]:
        self.recorder = _CapturingEncoder(encoder, self.layers, self.grads, self.stop)
        self.tokens, self.ctx = tokens, ctx
        try:
            streams = self.inner(self.recorder, tokens, ctx, tasks)
        except _Enough:
            streams = {}
        if len(self.recorder.captured) != len(self.layers):
            raise RuntimeError(
                f"the trunk ran {len(self.recorder.captured)} of the {len(self.layers)} analysed "
                "blocks; analyze needs a trunk that runs every block through encoder.run_block"
            )
        return streams

    def record(self, model: nn.Module, inputs: Any, tasks: list[str]) -> list[torch.Tensor]:
        """Embed `inputs` and run the trunk up to the last analysed block input (no heads)."""
        tokens, ctx = model.encoder.embed(inputs)
        self(model.encoder, tokens, ctx, tasks)
        return self.recorder.captured


class _CaptureTrunk(_RecordingTrunk):
    """A shared trunk recording the inputs of `layers` as gradient targets (`captured`, `output`)."""

    def __init__(self, layers: Sequence[int]) -> None:
        from tokenmtl.models.multitask import SharedTrunk

        super().__init__(SharedTrunk(), list(layers), grads=True)

    @property
    def captured(self) -> list[torch.Tensor]:
        return self.recorder.captured

    @property
    def output(self) -> torch.Tensor | None:
        return self.recorder.output


@contextmanager
def _installed(model: nn.Module, trunk: _RecordingTrunk) -> Iterator[_RecordingTrunk]:
    original = model.trunk
    model.trunk = trunk
    try:
        yield trunk
    finally:
        model.trunk = original


def _streams(captured: torch.Tensor, batch: int, num_tasks: int, layer: int) -> int:
    """1 for a shared block input (B rows), T for a folded one (T*B rows)."""
    rows = captured.shape[0]
    if rows == batch:
        return 1
    if rows == batch * num_tasks:
        return num_tasks
    raise ValueError(
        f"block {layer} receives {rows} rows for a batch of {batch} and {num_tasks} tasks; "
        "analyze understands a shared stream (B rows) or task-major folded streams (T*B rows)"
    )


def _own_slices(grad: torch.Tensor, streams: int, num_tokens: int) -> torch.Tensor:
    """(T, R, N', D) gradients of the T losses at a block input -> (T, B, N, D) token gradients:
    the whole gradient for a shared input, the t-th slice of dL_t/dX for folded streams."""
    grad = grad[:, :, :num_tokens]
    if streams == 1:
        return grad
    num_tasks = grad.shape[0]
    folded = grad.reshape(num_tasks, streams, -1, *grad.shape[2:])
    index = torch.arange(num_tasks, device=grad.device)
    return folded[index, index]


def _task_gradients(
    losses: torch.Tensor, inputs: list[torch.Tensor], output: torch.Tensor, batched: bool
) -> list[torch.Tensor]:
    """dL_t/dX for every input X, stacked over tasks: a list of (T, *X.shape).

    Two steps: dL_t/dZ at the trunk output Z through task t's head only (T cheap passes), then
    one backward pass through the shared blocks batched over the T upstream gradients
    (`is_grads_batched`), or T passes when `batched` is False or an op cannot be batched. Both
    steps use the engine's one task-gradient routine (`tokenmtl.engine.task_gradients`).
    """
    upstream = looped_task_gradients(losses, [output], retain_graph=True)[0]
    return TaskGradients("auto" if batched else "loop")(output, inputs, grad_outputs=upstream)


def _progress(iterable: Iterable, total: int | None, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tokenmtl.progress import progress_bar

    return progress_bar(iterable, total=total, desc=desc)


def _check_model(model: nn.Module) -> None:
    if not all(hasattr(model, a) for a in ("encoder", "heads", "trunk", "inputs_from_batch")):
        raise TypeError(f"analyze needs a MultiTaskModel; got {type(model).__name__}")
    if len(model.tasks) < 2:
        raise ValueError(f"conflicts need at least 2 tasks; the model has {model.tasks}")


def analyze(
    model: nn.Module,
    loader: Iterable,
    loss_fn: LossFn,
    num_batches: int | None = None,
    r: float = 100.0,
    energy_fraction: float | None = None,
    layers: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    reduce: Reduce | None = None,
    exclude_prefix: bool = False,
    batched: bool = True,
) -> ConflictReport:
    """Token spaces and range/null conflict rates of every (or each listed) block input (docs/method.md).

    `loss_fn(outputs, batch) -> {task: scalar loss}`; `num_batches=None` uses the whole loader.
    The loader is read twice (covariance pass, then conflict pass) and both passes must see the
    same batches: a DataLoader over a map-style dataset is frozen to the order of its first pass
    (`fixed_order`, so a shuffling one gives a random subset), and every batch of the second pass
    is checked against the first (`batch_fingerprint`); a loader that changes between passes
    (random augmentation, a generator) is an error. All tokens entering a block count, prefix
    (class) tokens included unless `exclude_prefix`; padding tokens of text encoders (the
    adapter's `token_mask`) never count. `reduce` is applied in place to every sum before it is
    read (e.g. an all-reduce across ranks); with it, every process runs the smallest per-process
    batch count. The model runs in `analysis_mode` (batch statistics, no dropout), and its modes,
    running statistics and parameter `.grad`s are left as they were. `batched=False` replaces the
    task-batched backward by T backward passes (same result).

    An expanded model (DTME plan, Recon split layers) is analysed through its own trunk: blocks at
    and after the fork see T task streams; see the module docstring for what a token, its task
    gradients and its token space are there (`LayerReport.streams`, `ConflictReport.fork`/`plan`).
    """
    from tokenmtl.dtme.expand import plan_of

    _check_model(model)
    encoder = model.encoder
    tasks = list(model.tasks)
    num_blocks = encoder.num_blocks
    layers = sorted(set(range(num_blocks) if layers is None else (int(l) for l in layers)))
    if not layers or layers[0] < 0 or layers[-1] >= num_blocks:
        raise ValueError(f"layers must be block indices in 0..{num_blocks - 1}; got {layers}")
    if isinstance(loader, Iterator):
        raise TypeError(
            "analyze iterates the loader twice; pass a re-iterable loader (a DataLoader or a "
            f"list), not a one-shot iterator ({type(loader).__name__})"
        )
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None (whole loader); got {num_batches}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = fixed_order(loader, num_batches)
    try:
        size = len(loader)  # type: ignore[arg-type]
        total: int | None = min(size, num_batches) if num_batches is not None else size
    except TypeError:
        total = num_batches
    if reduce is not None and total is not None:
        total = common_batch_count(total, reduce, device)
    limit = total if total is not None else num_batches
    with analysis_mode(model):
        start = time.perf_counter()
        covs = {l: TokenCovariance(encoder.embed_dim, name=str(l), device=device) for l in layers}
        streams: dict[int, int] = {}
        fingerprints: list[int] = []
        with torch.no_grad(), _installed(model, _RecordingTrunk(model.trunk, layers, grads=False, stop=True)) as rec:
            for batch in _progress(islice(loader, limit), total, "dtme: token covariance", progress):
                fingerprints.append(batch_fingerprint(batch))
                captured = rec.record(model, _to_device(model.inputs_from_batch(batch), device), tasks)
                batch_size, num_tokens = rec.tokens.shape[:2]
                mask = _token_mask(encoder, rec.tokens, rec.ctx, exclude_prefix)
                for l, x in zip(layers, captured):
                    streams[l] = _streams(x, batch_size, len(tasks), l)
                    covs[l].update(x[:, :num_tokens], None if mask is None else mask.repeat(streams[l], 1))
        seen = len(fingerprints)
        if seen == 0:
            raise ValueError("the loader yielded no batch")
        if reduce is not None:
            for cov in covs.values():
                reduce(cov.sum)
                reduce(cov.count)
        covariance_s = time.perf_counter() - start
        start = time.perf_counter()
        spaces: dict[int, TokenSpace] = {
            l: split_token_space(cov, r=r, energy_fraction=energy_fraction) for l, cov in covs.items()
        }
        eigh_s = time.perf_counter() - start

        start = time.perf_counter()
        counts = {l: ConflictCounts() for l in layers}
        again = 0
        with _installed(model, _RecordingTrunk(model.trunk, layers, grads=True)) as rec:
            for batch in _progress(islice(loader, seen), seen, "dtme: conflicts", progress):
                if batch_fingerprint(batch) != fingerprints[again]:
                    raise ValueError(
                        f"the loader yielded a different batch {again} in the conflict pass than in the "
                        "covariance pass; analyze needs the same batches in both: pass a loader with a "
                        "fixed order and no random augmentation (a DataLoader over a map-style dataset "
                        "is fixed automatically)"
                    )
                again += 1
                batch = _to_device(batch, device)
                with torch.enable_grad():
                    outputs = model(model.inputs_from_batch(batch))
                    loss_dict = loss_fn(outputs, batch)
                    missing = [t for t in tasks if t not in loss_dict]
                    if missing:
                        raise KeyError(f"loss_fn returned no loss for tasks {missing}; got {sorted(loss_dict)}")
                    losses = torch.stack([loss_dict[t].reshape(()) for t in tasks])
                    if not losses.requires_grad:
                        raise ValueError("the task losses do not depend on the model (no gradient)")
                    grads = _task_gradients(losses, rec.recorder.captured, rec.recorder.output, batched)
                num_tokens = rec.tokens.shape[1]
                mask = _token_mask(encoder, rec.tokens, rec.ctx, exclude_prefix)
                for l, g in zip(layers, grads):
                    g = _own_slices(g.detach(), streams[l], num_tokens)  # (T, B, N, D)
                    g = g.reshape(len(tasks), -1, g.shape[-1]) if mask is None else g[:, mask]
                    counts[l].add(conflict_counts(g, spaces[l]))
        if again != seen:
            raise ValueError(
                f"the loader yielded {again} batches in the conflict pass but {seen} in the "
                "covariance pass; analyze needs the same batches in both passes"
            )
        if reduce is not None:
            for c in counts.values():
                reduce(c.values)
        conflicts_s = time.perf_counter() - start

    layer_reports = [
        LayerReport(
            layer=l,
            dim=spaces[l].dim,
            k=spaces[l].k,
            range_conflict_rate=counts[l].range_rate,
            null_conflict_rate=counts[l].null_rate,
            range_mean_cosine=counts[l].range_mean_cosine,
            null_mean_cosine=counts[l].null_mean_cosine,
            pairs_counted=counts[l].pairs,
            eigenvalues=[float(v) for v in spaces[l].eigenvalues],
            streams=streams[l],
        )
        for l in layers
    ]
    plan = plan_of(model)
    return ConflictReport(
        tasks=tasks,
        num_blocks=num_blocks,
        layers=layer_reports,
        r=float(r),
        energy_fraction=energy_fraction,
        num_batches=seen,
        num_tokens=float(covs[layers[0]].count) / streams[layers[0]],
        exclude_prefix=exclude_prefix,
        timings={
            "covariance_s": covariance_s,
            "eigh_s": eigh_s,
            "conflicts_s": conflicts_s,
            "covariance_eigh_s": covariance_s + eigh_s,
            "conflicts_per_batch_s": conflicts_s / seen,
        },
        fork=getattr(model.trunk, "fork", None),
        plan=None if plan is None else plan.to_dict(),
    )
