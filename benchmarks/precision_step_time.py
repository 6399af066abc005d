"""Training-step time in fp32 vs bf16 autocast on this CPU, on the demo model.

The demo model (configs/demo.yaml: ViT with 4 blocks of width 96, 64x64 images, patch 8, 4 dense
heads), batch 16, one thread. One step = forward + task losses (under the precision's autocast),
``GradDriver.backward`` (EW, and DB-MTL for a gradient method) and an Adam step. Inputs and
targets are random tensors of the scenes shapes (step time does not depend on their values).
Rounds interleave the precisions so that machine noise hits both alike; we report the minimum
and the median over rounds, and the ratio bf16 / fp32 of the minima (> 1: bf16 is slower).

    .venv/bin/python benchmarks/precision_step_time.py [--rounds 5] [--steps 3]

Writes benchmarks/results/precision_step_time.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tokenmtl.balancing import create
from tokenmtl.config import load_config
from tokenmtl.engine.grad_driver import GradDriver
from tokenmtl.engine.precision import Precision
from tokenmtl.models.factory import build_model
from tokenmtl.tasks import depth_task, edge_task, normals_task, semseg_task

RESULTS = Path(__file__).parent / "results" / "precision_step_time.json"
PRECISIONS = ("fp32", "bf16")


def demo_batch(size: int, batch: int, classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs and valid targets with the scenes shapes."""
    gen = torch.Generator().manual_seed(seed)
    normals = torch.randn(batch, 3, size, size, generator=gen)
    return {
        "image": torch.randn(batch, 3, size, size, generator=gen),
        "semseg": torch.randint(0, classes, (batch, size, size), generator=gen),
        "depth": torch.rand(batch, 1, size, size, generator=gen) * 10 + 0.1,
        "normals": normals / normals.norm(dim=1, keepdim=True),
        "edge": (torch.rand(batch, 1, size, size, generator=gen) > 0.9).float(),
    }


def make_step(method: str, precision: Precision, cfg: dict, batch: dict[str, torch.Tensor]):
    """A closure running one training step of a fresh demo model."""
    specs = {"semseg": semseg_task(8), "depth": depth_task(), "normals": normals_task(), "edge": edge_task()}
    torch.manual_seed(0)
    model = build_model(cfg["model"], specs)
    driver = GradDriver(model, create(method, len(specs)), grad_scaler=precision.scaler)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        with precision.autocast():
            out = model(batch["image"])
            losses = {t: spec.loss(out[t], batch[t]) for t, spec in specs.items()}
        optimizer.zero_grad(set_to_none=True)
        driver.backward(losses)
        precision.step(optimizer)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and precision")
    parser.add_argument("--methods", nargs="+", default=["ew", "dbmtl"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("demo")
    size, batch_size = int(cfg["model"]["img_size"]), int(cfg["train"]["batch_size"])
    batch = demo_batch(size, batch_size, classes=8)
    times: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PRECISIONS} for m in args.methods}
    steps = {(m, p): make_step(m, Precision.create(p, "cpu"), cfg, batch) for m in args.methods for p in PRECISIONS}
    for step in steps.values():  # warm-up: allocator, first-call costs
        step()
    for _ in range(args.rounds):
        for method in args.methods:
            for name in PRECISIONS:
                step = steps[(method, name)]
                tick = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[method][name].append((time.perf_counter() - tick) / args.steps)
    summary = {
        method: {
            **{f"{p}_seconds_min": min(times[method][p]) for p in PRECISIONS},
            **{f"{p}_seconds_median": statistics.median(times[method][p]) for p in PRECISIONS},
            "bf16_over_fp32_min": min(times[method]["bf16"]) / min(times[method]["fp32"]),
        }
        for method in args.methods
    }
    result = {
        "benchmark": "precision_step_time",
        "setup": {
            "config": "demo",
            "model": {k: cfg["model"][k] for k in ("depth", "embed_dim", "img_size", "patch_size")},
            "batch_size": batch_size,
            "threads": 1,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "optimizer": "adam",
            "inputs": "random tensors with the scenes shapes",
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "seconds_per_step": times,
        "summary": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
