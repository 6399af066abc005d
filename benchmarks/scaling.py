"""Training steps per second with 1 and 2 processes (gloo, CPU) at the same global batch (JSON out).

Each configuration runs the real `Trainer.train_step` (data loading, forward, `GradDriver`
backward with the cross-process all-reduce, optimiser step) of the demo model (scenes, ViT depth
6, width 192, 64x64 inputs, 4 tasks) in freshly spawned processes, as `torchrun` would start
them: 1 process with the whole global batch, or N processes with global/N each, whose
gradients are all-reduced before the update (so both train the same model). The CPU cores are
split evenly between the processes (`torch.set_num_threads(cores // N)`). After `--warmup`
steps, `--steps` steps are timed between two barriers; rank 0 reports the time.

    python benchmarks/scaling.py --out benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

DEFAULT_OUT = Path(__file__).parent / "results" / "scaling.json"
# The demo model and data; a small train split, since only the step speed is measured.
DEMO_SETS = [
    "benchmark.train_size=256",
    "benchmark.val_size=8",
    "benchmark.test_size=8",
    "log.tensorboard=false",
    "log.progress=false",
    "train.iterations=100000",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(
    rank: int,
    world: int,
    threads: int,
    port: int,
    method: str,
    batch: int,
    warmup: int,
    steps: int,
    sets: list[str],
    report: str,
) -> None:
    """One process: build the run like `tokenmtl train`, time `steps` training steps."""
    torch.set_num_threads(threads)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    from tokenmtl.config import load_config
    from tokenmtl.engine.distributed import DistContext
    from tokenmtl.engine.evaluate import move_batch
    from tokenmtl.engine.trainer import Trainer

    cfg = load_config("demo", overrides=DEMO_SETS + sets + [f"method.name={method}", f"train.batch_size={batch}"])
    dist = DistContext.from_env()
    try:
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(cfg, out, progress=False, dist=dist)
            batches = iter(trainer._loader(0))
            for step in range(warmup):
                trainer.train_step(move_batch(next(batches), trainer.device), step)
            dist.barrier()
            start = time.perf_counter()
            for step in range(warmup, warmup + steps):
                trainer.train_step(move_batch(next(batches), trainer.device), step)
            dist.barrier()
            seconds = time.perf_counter() - start
        if dist.is_main:
            Path(report).write_text(json.dumps({"seconds": seconds}))
    finally:
        dist.close()


def measure(
    method: str, world: int, threads: int, global_batch: int, warmup: int, steps: int, sets: list[str]
) -> dict[str, Any]:
    """Steps/s of `world` processes with `threads` intra-op threads each at `global_batch`."""
    if global_batch % world:
        raise ValueError(f"the global batch {global_batch} must divide among {world} processes")
    batch = global_batch // world
    with tempfile.TemporaryDirectory() as tmp:
        report = str(Path(tmp) / "report.json")
        mp.start_processes(
            _worker,
            nprocs=world,
            join=True,
            start_method="spawn",
            args=(world, threads, _free_port(), method, batch, warmup, steps, sets, report),
        )
        seconds = json.loads(Path(report).read_text())["seconds"]
    return {
        "method": method,
        "processes": world,
        "threads_per_process": threads,
        "per_process_batch": batch,
        "global_batch": global_batch,
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_s": round(steps / seconds, 3),
        "samples_per_s": round(steps * global_batch / seconds, 2),
    }


def note(cores: int, load: float) -> str:
    """What the figures can and cannot show on this machine."""
    half = max(1, cores // 2)
    text = (
        f"One machine, {cores} CPU cores: '1x{cores}' is 1 process with {cores} intra-op threads on the "
        f"whole batch, '2x{half}' is 2 processes with {half} thread(s) each on half the batch, "
        "all-reducing gradients and batch-norm sums over gloo, '1x1' is the one-core reference. The "
        f"'1x{cores}' and '2x{half}' layouts use the same cores for the same arithmetic, so their ratio "
        "weighs the cost of the all-reduces and of half-size matrices per process against torch's "
        "intra-op threading; it is not a speed-up from added hardware and says nothing about "
        "multi-GPU or multi-node runs, which this machine cannot measure. '2x1' over '1x1' is what a "
        "second core buys through a second process."
    )
    if load > cores:
        text += (
            f" The machine was shared and loaded (1-minute load average {load:.1f} on {cores} cores): "
            "runs whose threads must meet at every parallel op ('1x' with several threads) suffer most "
            "from oversubscription, so compare the '2x' rows with '1x1' rather than with the "
            "multi-threaded row, and rerun on an idle machine for clean figures."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--methods", default="ew,dbmtl", help="comma-separated balancing methods")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores the runs may use")
    parser.add_argument(
        "--layouts", default=None, help="comma-separated PROCESSESxTHREADS (default: 1xC, 1x1, 2x(C/2) for C cores)"
    )
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra config override")
    args = parser.parse_args()

    from tokenmtl.config import load_config
    from tokenmtl.data.base import create_benchmark

    # build the scenes cache once, before any timed process starts
    create_benchmark(load_config("demo", overrides=DEMO_SETS + args.sets)["benchmark"]).dataset("train", train=True)

    layouts = args.layouts or f"1x{args.cores},1x1,2x{max(1, args.cores // 2)}"
    pairs = [tuple(int(v) for v in item.split("x")) for item in layouts.split(",")]
    results = []
    for method in args.methods.split(","):
        for world, threads in pairs:
            row = measure(method, world, threads, args.global_batch, args.warmup, args.steps, args.sets)
            print(json.dumps(row))
            results.append(row)
    speedup = {}  # relative to 1 process using every core
    for method in args.methods.split(","):
        rows = {
            f"{r['processes']}x{r['threads_per_process']}": r["steps_per_s"] for r in results if r["method"] == method
        }
        base = rows.get(f"1x{args.cores}")
        if base:
            speedup[method] = {k: round(v / base, 3) for k, v in rows.items()}
    payload = {
        "benchmark": "scaling",
        "what": "steps/s of Trainer.train_step on the demo model (scenes, ViT-6x192, 64x64, 4 tasks), "
        "same global batch split over N gloo processes on CPU",
        "results": results,
        "speedup_vs_1_process_all_cores": speedup,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cores_used": args.cores,
            "platform": platform.platform(),
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {
            "warmup": args.warmup,
            "steps": args.steps,
            "global_batch": args.global_batch,
            "sets": DEMO_SETS + args.sets,
        },
        "note": note(args.cores, os.getloadavg()[0]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
