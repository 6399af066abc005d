"""Time per image of boundary evaluation (EdgeMeter odsF / oisF / AP, 99 thresholds), one thread.

Before: the previous implementation, kept as ``tests/edge_reference.py`` (one SciPy
Hopcroft-Karp call per threshold), run in a child process and stopped after ``--cap`` seconds.
After: ``tokenmtl.metrics.edges.EdgeMeter``. Synthetic maps from ``tests/test_edges_fast.py``:
thin Voronoi boundaries (~2% of pixels) with a sharp, accurate prediction or a blurry, noisy one.
Also estimates the time to evaluate NYUD-v2 val (654 images, 425x560, tolerance 0.011) and
PASCAL-Context val (5,105 images, ~375x500, tolerance 0.0075).

Usage: python benchmarks/edge_eval.py [--cap 60] [--repeats 3]
       [--out benchmarks/results/edge_eval.json]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import edge_reference
from test_edges_fast import synthetic_batch
from tokenmtl.metrics.edges import EdgeMeter

SIZES = ((106, 140), (212, 280), (425, 560))
KINDS = ("sharp", "blurry")


def seconds_per_image(
    meter_class: type, height: int, width: int, kind: str, tolerance: float, thin: bool = False, repeats: int = 1
) -> tuple[float, float]:
    """(best wall seconds, its CPU seconds) of one ``update`` on one synthetic image."""
    torch.set_num_threads(1)
    pred, target = synthetic_batch(height, width, kind, seed=0)
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        meter = meter_class(tolerance=tolerance, thin=thin)
        wall, cpu = time.perf_counter(), time.process_time()
        meter.update(pred, target)
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def _reference_child(queue, height: int, width: int, kind: str, tolerance: float) -> None:
    queue.put(seconds_per_image(edge_reference.EdgeMeter, height, width, kind, tolerance))


def reference_seconds(height: int, width: int, kind: str, tolerance: float, cap: float) -> dict:
    """The reference's time in a child process, or a note that it ran past ``cap`` seconds."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_reference_child, args=(queue, height, width, kind, tolerance))
    child.start()
    child.join(cap)
    if child.is_alive():
        child.terminate()
        child.join()
        return {"before_s": None, "before_note": f"stopped after {cap:.0f} s (did not finish)"}
    wall, cpu = queue.get()
    return {"before_s": round(wall, 4), "before_cpu_s": round(cpu, 4)}


def boundary_pixels(height: int, width: int, kind: str) -> int:
    """Ground-truth boundary pixels of the synthetic image."""
    return int(synthetic_batch(height, width, kind, seed=0)[1].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=60.0, help="seconds allowed to the reference")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the fast meter (the best is kept)")
    parser.add_argument("--out", default="benchmarks/results/edge_eval.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    runs = []
    for height, width in SIZES:
        for kind in KINDS:
            row = {
                "size": [height, width],
                "kind": kind,
                "tolerance": 0.011,
                "boundary_pixels": boundary_pixels(height, width, kind),
            }
            row.update(reference_seconds(height, width, kind, 0.011, args.cap))
            wall, cpu = seconds_per_image(EdgeMeter, height, width, kind, 0.011, repeats=args.repeats)
            row.update({"after_s": round(wall, 4), "after_cpu_s": round(cpu, 4)})
            wall, _ = seconds_per_image(EdgeMeter, height, width, kind, 0.011, thin=True, repeats=1)
            row["after_thin_s"] = round(wall, 4)
            if row["before_s"] is not None:
                row["speedup"] = round(row["before_s"] / row["after_s"], 1)
            runs.append(row)
            print(json.dumps(row), flush=True)
    estimates = {}
    for name, (height, width), tolerance, images in (
        ("nyud_val", (425, 560), 0.011, 654),
        ("pascal_context_val", (375, 500), 0.0075, 5105),
    ):
        per_image = {
            kind: seconds_per_image(EdgeMeter, height, width, kind, tolerance, repeats=args.repeats)[0]
            for kind in KINDS
        }
        estimates[name] = {
            "images": images,
            "size": [height, width],
            "tolerance": tolerance,
            "seconds_per_image": {k: round(v, 4) for k, v in per_image.items()},
            "minutes_total": {k: round(v * images / 60, 1) for k, v in per_image.items()},
        }
        print(name, json.dumps(estimates[name]), flush=True)
    result = {
        "benchmark": "edge_eval",
        "thresholds": 99,
        "threads": 1,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "reference_cap_s": args.cap,
        "runs": runs,
        "estimates": estimates,
        "note": "wall seconds, best of --repeats for the fast meter, one run for the reference; "
        "the machine is shared, so ratios measured in this one run are what to compare",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
