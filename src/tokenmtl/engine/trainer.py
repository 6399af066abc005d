"""The training loop: iteration-based, Adam + polynomial LR, periodic evaluation, checkpoints that
resume to the same result, DTME analysis/expansion at `dtme.expand_at`, any balancing method."""
from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tokenmtl import balancing
from tokenmtl.config import dump_config
from tokenmtl.data.base import create_benchmark, resolve_tasks
from tokenmtl.engine.checkpoint import CheckpointError, latest_good_checkpoint, save_checkpoint
from tokenmtl.engine.dist_norm import convert_batchnorm
from tokenmtl.engine.distributed import DistContext, GlobalBatchShards
from tokenmtl.engine.evaluate import evaluate, move_batch
from tokenmtl.engine.grad_driver import GradDriver
from tokenmtl.engine.run_log import RunLogger
from tokenmtl.engine.sampler import SeededDataset, StepBatchSampler
from tokenmtl.engine.schedule import lr_factor
from tokenmtl.engine.seeding import rng_state, seed_everything, set_rng_state
from tokenmtl.models.factory import build_model
from tokenmtl.models.multitask import MultiTaskModel
from tokenmtl.tasks import INVPT_LOSS_WEIGHTS


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite loss, a config that does not fit a checkpoint)."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived: a checkpoint of the last finished step was saved first."""


@contextmanager
def _stop_signals(flag: dict[str, int | None]):
    """While active, SIGINT/SIGTERM only set `flag['signal']`; the loop saves and stops cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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


def task_losses(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                specs: Mapping[str, Any], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Weighted loss of every task on one batch."""
    return {t: spec.loss(outputs[t], batch[t]) * weights[t] for t, spec in specs.items()}


def count_parameters(module: torch.nn.Module) -> int:
    """Number of scalar parameters (each tensor counted once)."""
    return sum(p.numel() for p in module.parameters())


def _numpy_state_to_tensor(state: dict[str, Any]) -> dict[str, Any]:
    """RNG state with the NumPy array as a tensor, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    return {**state, "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss)}


def _tensor_state_to_numpy(state: dict[str, Any]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    return {**state, "numpy": (kind, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, gauss)}


@dataclass
class Schedule:
    """Where a run is: phase-1 iterations before DTME expansion, then phase-2 iterations."""

    iterations: int
    expand_step: int | None  # None: no DTME
    post_iterations: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Schedule":
        """DTME: expand at `expand_at` of the schedule; Recon alone: branch after its window."""
        n = int(cfg["train"]["iterations"])
        recon = cfg["method"]["name"] == "recon"
        if cfg["dtme"]["enabled"]:
            expand = int(round(float(cfg["dtme"]["expand_at"]) * n))
            if recon and expand == 0:
                raise TrainingError("recon with DTME scores layers during the DTME warm-up: set dtme.expand_at > 0")
            post = n if cfg["dtme"]["post_iterations"] == "full" else n - expand
            return cls(n, expand, post)
        if recon:
            window = int(cfg["method"].get("window", 100))
            if not 0 < window < n:
                raise TrainingError(f"recon's method.window ({window}) must be between 1 and train.iterations - 1 ({n - 1})")
            return cls(n, window, n - window)
        return cls(n, None, 0)

    @property
    def total(self) -> int:
        """Iterations the run executes in all."""
        return self.iterations if self.expand_step is None else self.expand_step + self.post_iterations

    def lr_position(self, step: int) -> tuple[int, int]:
        """(iteration within the LR schedule, schedule length) at global `step`.

        Paper protocol (`post_iterations: full`): after expansion the schedule restarts and runs
        the full planned length; `remaining` continues the original schedule.
        """
        if self.expand_step is None or step < self.expand_step or self.post_iterations != self.iterations:
            return step, self.iterations
        return step - self.expand_step, self.post_iterations


class Trainer:
    """Builds everything a run needs from a resolved config and trains it into `out_dir`."""

    def __init__(self, cfg: dict[str, Any], out_dir: str | Path, resume: bool = False,
                 progress: bool | None = None, dist: DistContext | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist = dist or DistContext.single()
        self.progress = cfg["log"]["progress"] if progress is None else progress
        self.progress = bool(self.progress) and self.dist.is_main
        self.device = resolve_device(cfg["train"]["device"])
        self.schedule = Schedule.from_config(cfg)
        self.resume = resume
        self.ckpt_dir = self.out / "checkpoints"
        self._build()

    # ---------------------------------------------------------------- set-up
    def _build(self) -> None:
        cfg = self.cfg
        seed_everything(int(cfg["train"]["seed"]))
        self.benchmark = create_benchmark(cfg["benchmark"], progress=self.progress)
        self.tasks = resolve_tasks(self.benchmark, cfg["tasks"])
        self.specs = {t: self.benchmark.task_spec(t) for t in self.tasks}
        self.loss_weights = loss_weights_for(cfg, self.tasks)
        self.train_set = self.benchmark.dataset("train", train=True, tasks=self.tasks)
        if len(self.train_set) == 0:
            raise TrainingError("the training split is empty: nothing to train on")
        self.model = build_model(cfg["model"], self.specs).to(self.device)
        if self.dist.world_size > 1:  # batch statistics over the global batch, as one process would
            convert_batchnorm(self.model)
        method = dict(cfg["method"])
        self.balancer = balancing.create(method.pop("name"), len(self.tasks), **method)
        if isinstance(self.balancer, torch.nn.Module):
            self.balancer.to(self.device)
        self.plan = None
        self.analysis_report = None
        self._make_driver()
        self._make_optimizer()

    def _make_driver(self) -> None:
        self.driver = GradDriver(self.model, self.balancer, all_reduce=self.dist.all_reduce_mean
                                 if self.dist.world_size > 1 else None)
        if hasattr(self.balancer, "bind"):
            self.balancer.bind(recon_layout(self.model, self.driver.shared))

    def _make_optimizer(self) -> None:
        """Param groups: shared, task-specific (x task_lr_mult), DTME-added (x dtme.lr_mult), balancer."""
        train = self.cfg["train"]
        lr, wd = float(train["lr"]), float(train["weight_decay"])
        added = set()
        if self.plan is not None:
            from tokenmtl.dtme import added_parameters

            added = {id(p) for p in added_parameters(self.model)}
        task_ids = {id(p) for t in self.tasks for p in self.model.task_parameters(t)} - added
        groups: dict[str, list[torch.nn.Parameter]] = {"shared": [], "task": [], "dtme": []}
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            key = "dtme" if id(p) in added else "task" if id(p) in task_ids else "shared"
            groups[key].append(p)
        mults = {"shared": 1.0, "task": float(train["task_lr_mult"]), "dtme": float(self.cfg["dtme"]["lr_mult"])}
        param_groups = [{"params": ps, "base_lr": lr * mults[k], "lr": lr * mults[k], "weight_decay": wd, "name": k}
                        for k, ps in groups.items() if ps]
        balancer_params = list(self.balancer.parameters()) if isinstance(self.balancer, torch.nn.Module) else []
        if balancer_params:
            param_groups.append({"params": balancer_params, "base_lr": lr, "lr": lr, "weight_decay": 0.0,
                                 "name": "balancer"})
        kind = train["optimizer"]
        if kind == "adam":
            self.optimizer = torch.optim.Adam(param_groups, lr=lr)
        elif kind == "adamw":
            self.optimizer = torch.optim.AdamW(param_groups, lr=lr)
        else:
            self.optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=0.9)

    def _loader(self, step: int) -> DataLoader:
        train = self.cfg["train"]
        sampler = StepBatchSampler(len(self.train_set), int(train["batch_size"]), int(train["seed"]),
                                   start_step=step, rank=self.dist.rank, world_size=self.dist.world_size)
        workers = int(train["num_workers"])
        # A private generator: creating the iterator must not draw from the global RNG, or a
        # resumed run would diverge from an uninterrupted one (PCGrad's task order, dropout...).
        generator = torch.Generator().manual_seed(int(train["seed"]) + step)
        return DataLoader(SeededDataset(self.train_set), batch_sampler=sampler, num_workers=workers,
                          generator=generator, pin_memory=self.device.type == "cuda")

    def _analysis_loader(self) -> DataLoader:
        """Train split without augmentation, in a seeded shuffled order (dtme.num_batches limits it).

        Batch k is global batch k of one process with world x batch_size, each rank its share, so
        the all-reduced analysis is the same for any number of processes.
        """
        dataset = self.benchmark.dataset("train", train=False, tasks=self.tasks)
        sampler = GlobalBatchShards(len(dataset), int(self.cfg["train"]["batch_size"]), int(self.cfg["dtme"]["seed"]),
                                    rank=self.dist.rank, world_size=self.dist.world_size)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=int(self.cfg["train"]["num_workers"]))

    def eval_loader(self, split: str) -> DataLoader:
        """Loader over a whole split, sharded across ranks without overlap."""
        dataset = self.benchmark.dataset(split, train=False, tasks=self.tasks)
        if self.dist.world_size > 1:
            indices = list(range(self.dist.rank, len(dataset), self.dist.world_size))
            dataset = torch.utils.data.Subset(dataset, indices)
        return DataLoader(dataset, batch_size=int(self.cfg["eval"]["batch_size"]), shuffle=False,
                          num_workers=int(self.cfg["train"]["num_workers"]), generator=torch.Generator())

    def _set_lr(self, step: int) -> float:
        position, length = self.schedule.lr_position(step)
        train = self.cfg["train"]
        factor = lr_factor(train["lr_schedule"], length, float(train["poly_power"]),
                           int(train["warmup_iterations"]))(position)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return factor * float(train["lr"])

    # ------------------------------------------------------------ checkpoints
    def _state(self, step: int) -> dict[str, Any]:
        balancer_state = self.balancer.state_dict() if hasattr(self.balancer, "state_dict") else {}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": balancer_state,
            "rng": _numpy_state_to_tensor(rng_state()),
            "step": step,
            "dtme_plan": self.plan.to_dict() if self.plan is not None else None,
            "tasks": self.tasks,
            "config": json.loads(json.dumps(self.cfg)),
        }

    def save(self, step: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir, step, self._state(step), keep=int(self.cfg["train"]["keep_checkpoints"]))
        self.dist.barrier()

    def _restore(self) -> int:
        found = latest_good_checkpoint(self.ckpt_dir)
        if found is None:
            return 0
        path, state = found
        if state.get("tasks") != self.tasks:
            raise CheckpointError(f"checkpoint {str(path)!r} was trained on tasks {state.get('tasks')}, "
                                  f"this run has {self.tasks}")
        self.load_model_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("balancer") and hasattr(self.balancer, "load_state_dict"):
            self.balancer.load_state_dict(state["balancer"])
        set_rng_state(_tensor_state_to_numpy(state["rng"]))
        return int(state["step"])

    def load_model_state(self, state: Mapping[str, Any]) -> None:
        """Load model weights, first re-applying the DTME plan the checkpoint carries."""
        if state.get("dtme_plan") and self.plan is None:
            from tokenmtl.dtme import Plan, expand

            self.plan = Plan.from_dict(state["dtme_plan"])
            expand(self.model, self.plan)
            self.model.to(self.device)
            self._after_expansion()
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:  # torch lists every mismatched tensor on its own line
            details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
            more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
            raise CheckpointError(f"checkpoint does not fit this model: {details[0][:300]}{more}") from None

    # ------------------------------------------------------------------ DTME
    def _after_expansion(self) -> None:
        if self.dist.world_size > 1:
            convert_batchnorm(self.model)
        if self.cfg["dtme"]["freeze_backbone"]:
            for p in self.model.encoder.parameters():
                p.requires_grad_(False)
        self._make_driver()
        self._make_optimizer()

    def _run_dtme(self, step: int, logger: RunLogger | None) -> None:
        """Edit the architecture once: DTME analysis + plan (METHOD.md 1.1-1.4) and/or Recon's branching."""
        from tokenmtl.dtme import Plan, expand

        d = self.cfg["dtme"]
        start = time.perf_counter()
        if d["enabled"]:
            plan = self._dtme_plan()
        else:
            plan = Plan(tm=[], te=[], tasks=list(self.tasks), strategy="none", ratio=0.0, mode="none")
        if hasattr(self.balancer, "layers_to_split"):
            plan.split = self.balancer.layers_to_split()
            if self.dist.is_main:
                (self.out / "recon_scores.json").write_text(json.dumps(
                    {"scores": self.balancer.conflict_scores(), "split": plan.split,
                     "S": self.balancer.S, "steps_scored": self.balancer.steps_scored}, indent=1))
        self.plan = plan
        expand(self.model, plan)
        self.model.to(self.device)
        self._after_expansion()
        self.dtme_seconds = time.perf_counter() - start
        if self.dist.is_main:
            plan.save(self.out / "plan.json")
        if logger is not None:
            logger.log(step, "dtme", {"seconds": self.dtme_seconds, "tm_layers": len(plan.tm),
                                      "te_layers": len(plan.te), "split_layers": len(plan.split)})

    def _dtme_plan(self):
        """Token-space analysis on the train split, then the plan; writes conflicts.json + plots."""
        from tokenmtl.dtme import analyze, make_plan
        from tokenmtl.report.dtme_plots import plot_conflicts, plot_spectra

        d = self.cfg["dtme"]
        specs, weights = self.specs, self.loss_weights
        report = analyze(
            self.model, self._analysis_loader(),
            lambda outputs, batch: task_losses(outputs, batch, specs, weights), device=self.device,
            num_batches=d["num_batches"], r=float(d["r"]), energy_fraction=d["energy_fraction"],
            progress=self.progress, reduce=self.dist.all_reduce_sum if self.dist.world_size > 1 else None,
        )
        plan = make_plan(report, ratio=float(d["ratio"]), strategy=d["strategy"], seed=int(d["seed"]),
                         mode=d["mode"], num_tokens=int(d["num_tokens"]), modulator=d["modulator"])
        self.analysis_report = report
        if self.dist.is_main:
            report.to_json(self.out / "conflicts.json")
            plot_conflicts(report, plan, self.out / "conflicts.png")
            plot_spectra(report, self.out / "spectra.png")
        return plan

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, float]:
        """One optimisation step; returns the (weighted) task losses as floats."""
        self.model.train()
        inputs = MultiTaskModel.inputs_from_batch(batch)
        losses = task_losses(self.model(inputs), batch, self.specs, self.loss_weights)
        values = torch.stack([v.detach() for v in losses.values()]).float().cpu().tolist()
        for task, value in zip(self.tasks, values):
            if not np.isfinite(value):
                raise TrainingError(
                    f"the loss of task {task!r} became {value} at iteration {step}; the run stopped. "
                    f"The last good checkpoint in {str(self.ckpt_dir)!r} is kept; lower train.lr or "
                    f"check the data of this task"
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.driver.backward(losses)
        clip = self.cfg["train"]["grad_clip"]
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], float(clip))
        self.optimizer.step()
        if getattr(self.driver, "needs_reevaluation", False):
            with torch.no_grad():
                after = task_losses(self.model(inputs), batch, self.specs, self.loss_weights)
            self.driver.after_step(after)
        return dict(zip(self.tasks, values))

    def run(self) -> dict[str, Any]:
        """Train (resuming if asked), evaluate, write results.json; returns the results."""
        cfg = self.cfg
        step = self._restore() if self.resume else 0  # refuses a misfit before anything is written
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
        logger = RunLogger(self.out, tensorboard=cfg["log"]["tensorboard"], resume_step=step if self.resume else None) \
            if self.dist.is_main else None
        total = self.schedule.total
        eval_every = int(cfg["train"]["eval_every"])
        ckpt_every = int(cfg["train"]["checkpoint_every"])
        train_seconds = 0.0
        self.dtme_seconds = getattr(self, "dtme_seconds", 0.0)
        loader_iter = iter(self._loader(step))
        bar = tqdm(total=total, initial=step, desc="train", disable=not self.progress, dynamic_ncols=True)
        stop: dict[str, int | None] = {"signal": None}
        with _stop_signals(stop):
            try:
                while step < total:
                    if self.dist.any(stop["signal"] is not None):  # every rank stops at the same step
                        self.save(step)
                        name = signal.Signals(stop["signal"]).name if stop["signal"] is not None else "a signal to another rank"
                        raise TrainingInterrupted(
                            f"stopped by {name} at iteration {step}; a checkpoint "
                            f"was saved in {str(self.ckpt_dir)!r}: continue with --resume")
                    if self.schedule.expand_step == step and self.plan is None:
                        self._run_dtme(step, logger)
                        loader_iter = iter(self._loader(step))
                    lr = self._set_lr(step)
                    batch = move_batch(next(loader_iter), self.device)
                    tick = time.perf_counter()
                    values = self.train_step(batch, step)
                    train_seconds += time.perf_counter() - tick
                    step += 1
                    bar.update(1)
                    bar.set_postfix({t[:6]: f"{v:.3f}" for t, v in values.items()})
                    if logger is not None:
                        logger.log(step, "train", {**{f"loss/{t}": v for t, v in values.items()}, "lr": lr})
                    if step % eval_every == 0 or step == total:
                        metrics = self.evaluate_split(cfg["eval"]["split"])
                        if logger is not None:
                            logger.log(step, cfg["eval"]["split"],
                                       {f"{t}/{k}": v for t, m in metrics.items() for k, v in m.items()})
                    if step % ckpt_every == 0 or step == total:
                        self.save(step)
            finally:
                bar.close()
                if logger is not None:
                    logger.close()
        final_split = cfg["eval"]["final_split"]
        tick = time.perf_counter()
        metrics = self.evaluate_split(final_split)
        eval_seconds = time.perf_counter() - tick
        results = self.results(metrics, final_split, {"train_seconds": train_seconds,
                                                      "dtme_seconds": self.dtme_seconds,
                                                      "final_eval_seconds": eval_seconds,
                                                      "iterations": total})
        bad = getattr(self.train_set, "bad_samples", None)
        if bad is not None and bad.count:
            results["bad_samples"] = {"train": bad.count}
            if self.dist.is_main:
                tqdm.write(bad.summary())
        if self.dist.is_main:
            (self.out / "results.json").write_text(json.dumps(results, indent=1))
        return results

    def evaluate_split(self, split: str) -> dict[str, dict[str, float]]:
        return evaluate(self.model, self.eval_loader(split), self.specs, self.device,
                        reduce=self.dist.all_reduce_sum if self.dist.world_size > 1 else None,
                        progress=self.progress, desc=f"eval {split}")

    def results(self, metrics: dict[str, dict[str, float]], split: str, timing: dict[str, float]) -> dict[str, Any]:
        """results.json (DESIGN.md format, plus what `compare` needs to pick primary metrics)."""
        added = split_added = 0
        if self.plan is not None:
            from tokenmtl.dtme import count_added_parameters

            trunk = self.model.trunk
            split_added = sum(p.numel() for m in trunk.split.values() for p in m.parameters()) \
                - trunk.removed_parameters if self.plan.split else 0
            added = int(count_added_parameters(self.model)) - split_added
        return {
            "tasks": metrics,
            "delta_m": None,
            "params": {"total": count_parameters(self.model), "added_by_dtme": added, "added_by_recon": split_added},
            "method": self.cfg["method"]["name"],
            "dtme": {**self.plan.to_dict(), "expand_step": self.schedule.expand_step}
            if self.plan is not None and self.cfg["dtme"]["enabled"] else None,
            "recon": {"split": self.plan.split, "split_step": self.schedule.expand_step}
            if self.plan is not None and self.plan.split else None,
            "timing": timing,
            "benchmark": self.cfg["benchmark"]["name"],
            "split": split,
            "seed": int(self.cfg["train"]["seed"]),
            "primary": {t: [s.primary_metric, bool(s.lower_is_better)] for t, s in self.specs.items()},
            "loss_weights": self.loss_weights,
            "name": self.cfg.get("name"),
        }


def recon_layout(model: MultiTaskModel, shared: list[torch.nn.Parameter]) -> list[tuple[str | None, int]]:
    """(block-relative name of its nn.Linear, or None; numel) of each shared parameter, in order."""
    owner: dict[int, str] = {}
    for name, module in model.encoder.blocks.named_modules():
        if isinstance(module, torch.nn.Linear):
            for param in module.parameters(recurse=False):
                owner[id(param)] = name
    return [(owner.get(id(p)), p.numel()) for p in shared]


def train(cfg: dict[str, Any], out_dir: str | Path, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Train one run described by a resolved config; returns results.json's content."""
    return Trainer(cfg, out_dir, resume=resume, progress=progress).run()
