"""Build a run once: benchmark, tasks, model, loss weights and loaders from a resolved config.

Training, `tokenmtl evaluate` and `tokenmtl analyze` all start here; the training split is only
built by those that train on it or analyse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from tokenmtl.config import Config, load_config
from tokenmtl.data.base import create_benchmark, resolve_tasks
from tokenmtl.engine.distributed import DistContext, GlobalBatchShards
from tokenmtl.engine.edits import edit_kind, edit_records, restore_edits
from tokenmtl.engine.errors import TrainingError
from tokenmtl.engine.sampler import SeededDataset, StepBatchSampler
from tokenmtl.engine.seeding import seed_everything
from tokenmtl.models.factory import build_model
from tokenmtl.tasks import INVPT_LOSS_WEIGHTS


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def loss_weights_for(cfg: Mapping[str, Any], tasks: list[str]) -> dict[str, float]:
    """Per-task loss weights: all ones or the InvPT convention, then explicit overrides."""
    section = cfg["loss_weights"]
    weights = {t: 1.0 for t in tasks}
    if section["scheme"] == "invpt":
        table = INVPT_LOSS_WEIGHTS.get(cfg["benchmark"]["name"])
        if table is None:
            raise TrainingError(
                f"no InvPT loss weights for benchmark {cfg['benchmark']['name']!r}; "
                f"they exist for {', '.join(INVPT_LOSS_WEIGHTS)}; use loss_weights.scheme=ones"
            )
        weights.update({t: float(table[t]) for t in tasks if t in table})
    for task, value in (section.get("weights") or {}).items():
        if task not in weights:
            raise TrainingError(f"loss_weights.weights names task {task!r}, not in this run's tasks {tasks}")
        weights[task] = float(value)
    return weights


def task_losses(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, Any],
    specs: Mapping[str, Any],
    weights: Mapping[str, float],
) -> dict[str, torch.Tensor]:
    """Weighted loss of every task on one batch."""
    return {t: spec.loss(outputs[t], batch[t]) * weights[t] for t, spec in specs.items()}


def count_parameters(module: torch.nn.Module) -> int:
    """Number of scalar parameters (each tensor counted once)."""
    return sum(p.numel() for p in module.parameters())


def _collate_for(model_cfg: Mapping[str, Any]) -> Any:
    """The model's batch collation (`models.factory.build_collate`), None where it has none."""
    try:
        from tokenmtl.models.factory import build_collate
    except ImportError:
        return None
    return build_collate(model_cfg)


@dataclass
class Run:
    """Everything built from a config that training, evaluation and analysis share."""

    cfg: Config
    benchmark: Any
    tasks: list[str]
    specs: dict[str, Any]
    loss_weights: dict[str, float]
    model: torch.nn.Module
    device: torch.device
    dist: DistContext
    collate: Any = None
    train_set: Any = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # edits applied to `model`
    edit_types: dict[str, type] = field(default_factory=dict)  # their classes, by name

    def loss_fn(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Weighted task losses of the run on one batch."""
        return task_losses(outputs, batch, self.specs, self.loss_weights)

    @property
    def workers(self) -> int:
        return int(self.cfg.train.num_workers)

    def train_loader(self, step: int) -> DataLoader:
        """Augmented training batches from global `step` on (each rank its share of the global batch)."""
        train = self.cfg.train
        sampler = StepBatchSampler(
            len(self.train_set),
            train.batch_size,
            train.seed,
            start_step=step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        # A private generator: creating the iterator must not draw from the global RNG, or a
        # resumed run would diverge from an uninterrupted one (PCGrad's task order, dropout...).
        generator = torch.Generator().manual_seed(train.seed + step)
        return DataLoader(
            SeededDataset(self.train_set),
            batch_sampler=sampler,
            num_workers=self.workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
            collate_fn=self.collate,
        )

    def analysis_loader(self) -> DataLoader:
        """Train split without augmentation, in a seeded shuffled order (dtme.num_batches limits it).

        Batch k is global batch k of one process with world x batch_size, each rank its share, so
        the all-reduced analysis is the same for any number of processes.
        """
        dataset = self.benchmark.dataset("train", train=False, tasks=self.tasks)
        sampler = GlobalBatchShards(
            len(dataset),
            self.cfg.train.batch_size,
            self.cfg.dtme.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.workers, collate_fn=self.collate)

    def eval_loader(self, split: str) -> DataLoader:
        """Loader over a whole split, sharded across ranks without overlap."""
        dataset = self.benchmark.dataset(split, train=False, tasks=self.tasks)
        if self.dist.world_size > 1:
            dataset = torch.utils.data.Subset(dataset, list(range(self.dist.rank, len(dataset), self.dist.world_size)))
        return DataLoader(
            dataset,
            batch_size=self.cfg.eval.batch_size,
            shuffle=False,
            num_workers=self.workers,
            generator=torch.Generator(),
            collate_fn=self.collate,
        )

    def restore_edits(self, state: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """Re-apply the edits a checkpoint carries to the (unedited) model; returns (name, EditResult)."""
        records = edit_records(state)
        results = restore_edits(self.model, records, self.cfg)
        self.model.to(self.device)
        self.records.update(records)
        self.edit_types.update({name: edit_kind(name) for name in records})
        return results

    def added_parameters(self) -> dict[str, int]:
        """`added_by_<edit>` parameter counts of every registered edit kind (0 when not applied)."""
        from tokenmtl.engine.edits import EDIT_KINDS

        names = list(EDIT_KINDS) + [n for n in self.records if n not in EDIT_KINDS]
        return {
            f"added_by_{name}": int(self.edit_types[name].added_count(self.model)) if name in self.records else 0
            for name in names
        }


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """`model.load_state_dict(weights)`, a misfit reported in one line (first mismatch, and how many)."""
    from tokenmtl.engine.checkpoint import CheckpointError

    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # torch lists every mismatched tensor on its own line
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise CheckpointError(f"checkpoint does not fit this model: {details[0][:300]}{more}") from None


def build_run(
    cfg: Mapping[str, Any], need_train: bool = False, dist: DistContext | None = None, progress: bool = False
) -> Run:
    """Seed, then build benchmark, tasks, specs, loss weights, (the train split,) and the model."""
    cfg = cfg if isinstance(cfg, Config) else load_config(cfg)
    dist = dist or DistContext.single()
    seed_everything(cfg.train.seed)
    benchmark = create_benchmark(cfg.benchmark, progress=progress)
    tasks = resolve_tasks(benchmark, cfg.tasks)
    specs = {t: benchmark.task_spec(t) for t in tasks}
    weights = loss_weights_for(cfg, tasks)
    train_set = None
    if need_train:
        train_set = benchmark.dataset("train", train=True, tasks=tasks)
        if len(train_set) == 0:
            raise TrainingError("the training split is empty: nothing to train on")
    device = resolve_device(cfg.train.device)
    model = build_model(cfg.model, specs).to(device)
    return Run(
        cfg=cfg,
        benchmark=benchmark,
        tasks=tasks,
        specs=specs,
        loss_weights=weights,
        model=model,
        device=device,
        dist=dist,
        collate=_collate_for(cfg.model),
        train_set=train_set,
    )


def run_config(folder: str | Path, overrides: list[str] | None = None) -> tuple[Path, dict[str, Any], Config]:
    """(newest good checkpoint, its state, the config it was trained with + `overrides`) of a run folder."""
    from tokenmtl.engine.checkpoint import CheckpointError, latest_good_checkpoint

    folder = Path(folder)
    found = latest_good_checkpoint(folder / "checkpoints")
    if found is None:
        raise CheckpointError(
            f"no good checkpoint in {str(folder / 'checkpoints')!r}: is {str(folder)!r} a run folder?"
        )
    path, state = found
    return path, state, stored_config(state, folder, overrides)


def stored_config(state: Mapping[str, Any], folder: Path | None = None, overrides: list[str] | None = None) -> Config:
    """The config a checkpoint carries (else the run folder's config.yaml), with `--set` overrides."""
    from tokenmtl.config import read_config_file

    data = state.get("config")
    if not data and folder is not None and (folder / "config.yaml").is_file():
        data = read_config_file(folder / "config.yaml")
    if not data:
        raise TrainingError(
            "this checkpoint carries no config and its folder has no config.yaml; "
            "pass the config: tokenmtl evaluate CONFIG --checkpoint PATH"
        )
    return load_config(data, overrides=overrides)
