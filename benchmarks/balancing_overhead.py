"""Time per training step of every balancing method, as a ratio to EW, in one run (JSON out).

A step is `Trainer.train_step` on the demo config (`configs/demo.yaml`: the scenes benchmark, its
ViT and DenseHeads, real task losses on a real batch): forward, `GradDriver.backward`, optimiser
step, and FAMO's re-evaluation. Methods are timed in interleaved rounds (each round runs every
method once per step), so machine noise hits all of them alike; ratios use the minimum step time
(the least disturbed) and the median is reported too. Also times the two ways the driver computes
task gradients (`grad_mode` loop / batched) for one gradient method.

    python benchmarks/balancing_overhead.py --out benchmarks/results/balancing_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tokenmtl import balancing
from tokenmtl.config import load_config
from tokenmtl.engine.evaluate import move_batch
from tokenmtl.engine.grad_driver import GradDriver
from tokenmtl.engine.trainer import Trainer


def build(method: str, sets: list[str], folder: Path) -> tuple[Trainer, dict]:
    """A demo-config trainer for `method` and one training batch."""
    cfg = load_config("demo", overrides=sets + [f"method.name={method}", "log.progress=false", "log.tensorboard=false"])
    trainer = Trainer(cfg, folder / method, progress=False)
    batch = move_batch(next(iter(trainer._loader(0))), trainer.device)
    return trainer, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/balancing_overhead.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = balancing.available()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {m: build(m, args.sets, Path(tmp)) for m in methods}
        for trainer, batch in runs.values():  # warm-up (allocations, first solver calls)
            trainer.train_step(batch, 0)
        times: dict[str, list[float]] = {m: [] for m in methods}
        for round_index in range(args.rounds):
            for method in methods:
                trainer, batch = runs[method]
                for step in range(args.steps):
                    start = time.perf_counter()
                    trainer.train_step(batch, 1 + round_index * args.steps + step)
                    times[method].append(time.perf_counter() - start)
        modes = {}
        trainer, batch = runs["mgda"]
        for mode in ("loop", "batched"):
            trainer.driver = GradDriver(trainer.model, trainer.balancer, grad_mode=mode)
            trainer.train_step(batch, 0)
            samples = []
            for step in range(args.rounds):
                start = time.perf_counter()
                trainer.train_step(batch, step)
                samples.append(time.perf_counter() - start)
            modes[mode] = min(samples)
    best = {m: min(t) for m, t in times.items()}
    median = {m: statistics.median(t) for m, t in times.items()}
    result = {
        "benchmark": "balancing_overhead",
        "setup": {
            "config": "demo",
            "overrides": args.sets,
            "threads": args.threads,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "tasks": runs["ew"][0].tasks,
            "batch_size": runs["ew"][0].cfg["train"]["batch_size"],
            "shared_params": sum(p.numel() for p in runs["ew"][0].model.shared_parameters()),
        },
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpu_threads": args.threads},
        "seconds_per_step_min": best,
        "seconds_per_step_median": median,
        "ratio_to_ew": {m: round(best[m] / best["ew"], 3) for m in methods},
        "ratio_to_ew_median": {m: round(median[m] / median["ew"], 3) for m in methods},
        "mgda_seconds_per_step_by_grad_mode": modes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ratio_to_ew"], indent=1))


if __name__ == "__main__":
    main()
