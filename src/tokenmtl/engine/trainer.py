"""The training loop: iteration-based, Adam + polynomial LR, periodic evaluation, checkpoints that
resume to the same result, model edits (`engine.edits`) at their step, any balancing method.

The loop knows no method by name: balancers come from `tokenmtl.balancing`, architecture edits
(DTME, Recon) from `engine.edits`, per-step extras from `engine.callbacks`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenmtl import balancing
from tokenmtl.config import Config, dump_config, load_config
from tokenmtl.engine.callbacks import Callback, StepEvent, default_callbacks
from tokenmtl.engine.checkpoint import CheckpointError, load_resume_state, save_checkpoint
from tokenmtl.engine.dist_norm import convert_batchnorm
from tokenmtl.engine.distributed import DistContext
from tokenmtl.engine.edits import EDIT_KINDS, EditContext, EditResult, build_edits
from tokenmtl.engine.errors import TrainingError, TrainingInterrupted
from tokenmtl.engine.evaluate import evaluate, move_batch
from tokenmtl.engine.grad_driver import GradDriver
from tokenmtl.engine.optimizer import add_group, build_optimizer, remove_parameters
from tokenmtl.engine.results import build_results
from tokenmtl.engine.run import build_run, count_parameters, load_weights, loss_weights_for, resolve_device, task_losses
from tokenmtl.engine.run_log import RunLogger
from tokenmtl.engine.schedule import Schedule, lr_factor
from tokenmtl.engine.seeding import preserved_rng, rng_state, set_rng_state
from tokenmtl.fileio import atomic_write_text
from tokenmtl.models.multitask import MultiTaskModel
from tokenmtl.progress import progress_bar, progress_write

__all__ = [
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "Schedule",
    "train",
    "task_losses",
    "loss_weights_for",
    "resolve_device",
    "count_parameters",
]


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


def _numpy_state_to_tensor(state: dict[str, Any]) -> dict[str, Any]:
    """RNG state with the NumPy array as a tensor, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    return {**state, "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss)}


def _tensor_state_to_numpy(state: dict[str, Any]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    return {**state, "numpy": (kind, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, gauss)}


class Trainer:
    """Builds everything a run needs from a resolved config and trains it into `out_dir`.

    `callbacks` run after the default ones (loss re-evaluation, logged training signals); `edits`
    (`engine.edits.ModelEdit`s) apply after those the config asks for, at the same step.
    """

    def __init__(
        self,
        cfg: Mapping[str, Any],
        out_dir: str | Path,
        resume: bool = False,
        progress: bool | None = None,
        dist: DistContext | None = None,
        callbacks: Sequence[Callback] = (),
        edits: Sequence[Any] = (),
    ) -> None:
        self.cfg: Config = cfg if isinstance(cfg, Config) else load_config(cfg)
        self.out = Path(out_dir)
        self.dist = dist or DistContext.single()
        self.progress = bool(self.cfg.log.progress if progress is None else progress) and self.dist.is_main
        self.resume = resume
        self.ckpt_dir = self.out / "checkpoints"
        self.run_state = build_run(self.cfg, need_train=True, dist=self.dist, progress=self.progress)
        run = self.run_state
        self.benchmark, self.tasks, self.specs = run.benchmark, run.tasks, run.specs
        self.loss_weights, self.train_set, self.device = run.loss_weights, run.train_set, run.device
        if self.dist.world_size > 1:  # batch statistics over the global batch, as one process would
            convert_batchnorm(self.model)
        method = dict(self.cfg.method)
        self.balancer = balancing.create(method.pop("name"), len(self.tasks), **method)
        if isinstance(self.balancer, torch.nn.Module):
            self.balancer.to(self.device)
        self.edits = build_edits(self.cfg, self.balancer) + list(edits)
        try:
            self.schedule = Schedule.from_edits(self.cfg.train.iterations, self.edits)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        from tokenmtl.engine.precision import Precision

        self.precision = Precision.create(self.cfg.train.precision, self.device)
        self.run_state.autocast = self.precision.autocast  # callbacks that re-run the model use it too
        if self.cfg.train.compile:  # blocks compiled in place: parameters, names and edits are unaffected
            from tokenmtl.engine.compile import maybe_compile

            maybe_compile(self.model, True)
        self.callbacks: list[Callback] = default_callbacks() + list(callbacks)
        self.edit_seconds: dict[str, float] = {}
        self._make_driver()
        self.optimizer = build_optimizer(self.model, self.tasks, self.balancer, self.cfg.train)

    @property
    def model(self) -> MultiTaskModel:
        return self.run_state.model

    @property
    def plan(self) -> Any:
        """The DTME plan the model was expanded with, or None."""
        from tokenmtl.dtme import plan_of

        return plan_of(self.model)

    def _make_driver(self) -> None:
        """(Re)build the gradient driver for the current parameters; edits watch it."""
        extra = {"grad_scaler": self.precision.scaler} if self.precision.scaler is not None else {}
        self.driver = GradDriver(
            self.model,
            self.balancer,
            **extra,
            all_reduce=self.dist.all_reduce_mean if self.dist.world_size > 1 else None,
        )
        for edit in self.edits:
            edit.watch(self.model, self.driver)

    def train_loader(self, step: int):
        """Training batches from global `step` on."""
        return self.run_state.train_loader(step)

    _loader = train_loader  # the name benchmarks/ used

    def eval_loader(self, split: str):
        return self.run_state.eval_loader(split)

    def _set_lr(self, step: int) -> float:
        position, length = self.schedule.lr_position(step)
        train = self.cfg.train
        factor = lr_factor(train.lr_schedule, length, float(train.poly_power), int(train.warmup_iterations))(position)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return factor * float(train.lr)

    # ------------------------------------------------------------ model edits
    def _after_edit(self, name: str, result: EditResult) -> None:
        """Optimizer: drop replaced parameters, one new group for the added ones; existing state stays."""
        self.model.to(self.device)
        if self.dist.world_size > 1:
            convert_batchnorm(self.model)
        train = self.cfg.train
        remove_parameters(self.optimizer, result.removed)
        wd = float(train.weight_decay) if result.weight_decay is None else result.weight_decay
        add_group(self.optimizer, name, result.added, float(train.lr) * result.lr_mult, wd)
        self._make_driver()

    def apply_edits(self, step: int, logger: RunLogger | None) -> None:
        """Apply every edit of the run (they share one step), logging what each changed.

        The edits leave every RNG as they found it (their analysis loaders and initialisations draw
        from it), so the training after them sees the dropout masks of a run without edits: DTME's
        empty-plan control repeats plain multi-task training exactly, dropout or not.
        """
        with preserved_rng():
            self._apply_edits(step, logger)

    def _apply_edits(self, step: int, logger: RunLogger | None) -> None:
        run = self.run_state
        ctx = EditContext(
            model=self.model,
            loss_fn=run.loss_fn,
            analysis_loader=run.analysis_loader,
            device=self.device,
            out=self.out,
            is_main=self.dist.is_main,
            progress=self.progress,
            reduce_sum=self.dist.all_reduce_sum if self.dist.world_size > 1 else None,
        )
        for edit in self.edits:
            result = edit.apply(ctx)
            run.records[edit.name] = edit.record()
            run.edit_types[edit.name] = type(edit)
            self.edit_seconds[edit.name] = float(result.scalars.get("seconds", 0.0))
            self._after_edit(edit.name, result)
            if logger is not None:
                logger.log(step, edit.name, result.scalars)

    def load_model_state(self, state: Mapping[str, Any]) -> None:
        """Load model weights, first re-applying the edits the checkpoint carries."""
        if not self.run_state.records:
            for name, result in self.run_state.restore_edits(state):
                self._after_edit(name, result)
        load_weights(self.model, state["model"])

    # ------------------------------------------------------------ checkpoints
    def _state(self, step: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": self.balancer.state_dict() if hasattr(self.balancer, "state_dict") else {},
            "precision": self.precision.state_dict(),
            "rng": _numpy_state_to_tensor(rng_state()),
            "step": step,
            "edits": json.loads(json.dumps(self.run_state.records)),
            "edit_step": self.schedule.expand_step,
            "tasks": self.tasks,
            "config": self.cfg.to_dict(),
        }

    def save(self, step: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir, step, self._state(step), keep=int(self.cfg.train.keep_checkpoints))
        self.dist.barrier()

    def _restore(self) -> int:
        found = load_resume_state(self.ckpt_dir, self.dist)  # rank 0 reads, every rank gets it
        if found is None:
            return 0
        path, state = found
        if state.get("tasks") != self.tasks:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was trained on tasks {state.get('tasks')}, this run has {self.tasks}"
            )
        self.load_model_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("balancer") and hasattr(self.balancer, "load_state_dict"):
            self.balancer.load_state_dict(state["balancer"])
        self.precision.load_state_dict(state.get("precision") or {})
        set_rng_state(_tensor_state_to_numpy(state["rng"]))
        return int(state["step"])

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, float]:
        """One optimisation step; returns the (weighted) task losses as floats."""
        for callback in self.callbacks:
            callback.on_step_start(step, self.run_state)
        self.model.train()
        inputs = MultiTaskModel.inputs_from_batch(batch)
        with self.precision.autocast():  # the one place mixed precision wraps the forward pass and losses
            losses = self.run_state.loss_fn(self.model(inputs), batch)
        values = torch.stack([v.detach() for v in losses.values()]).float().cpu().tolist()
        for task, value in zip(self.tasks, values):
            if not np.isfinite(value):
                raise TrainingError(
                    f"the loss of task {task!r} became {value} at iteration {step}; the run stopped. "
                    f"The last good checkpoint in {str(self.ckpt_dir)!r} is kept; lower train.lr or "
                    f"check the data of this task"
                )
        self.optimizer.zero_grad(set_to_none=True)
        backward = self.driver.backward(losses)  # scales the losses itself when fp16 has a grad scaler
        clip = self.cfg.train.grad_clip
        self.precision.step(
            self.optimizer, [p for p in self.model.parameters() if p.requires_grad], float(clip) if clip else 0.0
        )
        self.last_event = StepEvent(step, batch, inputs, dict(zip(self.tasks, values)), backward)
        for callback in self.callbacks:
            callback.on_step_end(self.last_event, self.run_state, self.driver)
        return self.last_event.losses

    def run(self) -> dict[str, Any]:
        """Train (resuming if asked), evaluate, write results.json; returns the results."""
        cfg = self.cfg
        step = self._restore() if self.resume else 0  # refuses a misfit before anything is written
        if self.dist.is_main:
            if self.out.exists() and not self.out.is_dir():
                raise TrainingError(f"--out {str(self.out)!r} is a file; give a folder for the run")
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
        logger = (
            RunLogger(self.out, tensorboard=cfg.log.tensorboard, resume_step=step if self.resume else None)
            if self.dist.is_main
            else None
        )
        total = self.schedule.total
        train_seconds = 0.0
        loader_iter = iter(self.train_loader(step))
        bar = progress_bar(
            total=total, initial=step, desc="train", enabled=self.progress, dynamic_ncols=True, leave=True
        )
        stop: dict[str, int | None] = {"signal": None}
        with _stop_signals(stop):
            try:
                while step < total:
                    if self.dist.any(stop["signal"] is not None):  # every rank stops at the same step
                        self.save(step)
                        name = (
                            signal.Signals(stop["signal"]).name
                            if stop["signal"] is not None
                            else "a signal to another rank"
                        )
                        raise TrainingInterrupted(
                            f"stopped by {name} at iteration {step}; a checkpoint "
                            f"was saved in {str(self.ckpt_dir)!r}: continue with --resume"
                        )
                    if self.schedule.expand_step == step and not self.run_state.records:
                        self.apply_edits(step, logger)
                        loader_iter = iter(self.train_loader(step))
                    lr = self._set_lr(step)
                    batch = move_batch(next(loader_iter), self.device)
                    tick = time.perf_counter()
                    values = self.train_step(batch, step)
                    train_seconds += time.perf_counter() - tick
                    step += 1
                    bar.update(1)
                    bar.set_postfix({t[:6]: f"{v:.3f}" for t, v in values.items()})
                    if logger is not None:
                        extra = {
                            k: v for c in self.callbacks for k, v in c.scalars(self.last_event, self.run_state).items()
                        }
                        logger.log(step, "train", {**{f"loss/{t}": v for t, v in values.items()}, "lr": lr, **extra})
                    if step % cfg.train.eval_every == 0 or step == total:
                        metrics = self.evaluate_split(cfg.eval.split)
                        if logger is not None:
                            logger.log(
                                step, cfg.eval.split, {f"{t}/{k}": v for t, m in metrics.items() for k, v in m.items()}
                            )
                    if step % cfg.train.checkpoint_every == 0 or step == total:
                        self.save(step)
            finally:
                bar.close()
                if logger is not None:
                    logger.close()
        tick = time.perf_counter()
        metrics = self.evaluate_split(cfg.eval.final_split)
        timing = {
            "train_seconds": train_seconds,
            **{f"{name}_seconds": self.edit_seconds.get(name, 0.0) for name in EDIT_KINDS},
            "final_eval_seconds": time.perf_counter() - tick,
            "iterations": total,
        }
        results = self.results(metrics, cfg.eval.final_split, timing)
        bad = getattr(self.train_set, "bad_samples", None)
        if bad is not None and bad.count:
            results["bad_samples"] = {"train": bad.count}
            if self.dist.is_main:
                progress_write(bad.summary())
        if self.dist.is_main:
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=1))
        return results

    def evaluate_split(self, split: str) -> dict[str, dict[str, float]]:
        return evaluate(
            self.model,
            self.eval_loader(split),
            self.specs,
            self.device,
            reduce=self.dist.all_reduce_sum if self.dist.world_size > 1 else None,
            progress=self.progress,
            desc=f"eval {split}",
        )

    def results(self, metrics: dict[str, dict[str, float]], split: str, timing: dict[str, Any]) -> dict[str, Any]:
        """results.json of this run (`engine.results.build_results`)."""
        return build_results(self.run_state, metrics, split, timing, self.schedule.expand_step)


def train(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train one run described by a config (a `Config` or a mapping); returns results.json's content."""
    return Trainer(cfg, out_dir, resume=resume, progress=progress, callbacks=callbacks).run()
