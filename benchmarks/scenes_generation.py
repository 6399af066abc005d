"""How fast the procedural scenes benchmark generates, writes and reloads a training split.

Usage: python benchmarks/scenes_generation.py [--count 2000] [--size 64] [--workers 1 2]
       [--out benchmarks/results/scenes_generation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from tokenmtl.data.scenes import SceneConfig, generate_split, load_arrays, save_arrays


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (pool workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def time_generation(count: int, size: int, workers: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Wall seconds, images/s and CPU ms per image to render ``count`` default-config images.

    CPU time per image stays meaningful when other jobs share the cores; wall time does not.
    """
    start, cpu_start = time.perf_counter(), cpu_seconds()
    arrays = generate_split(
        SceneConfig(), (size, size), seed=0, split="train", count=count, workers=workers, progress=False
    )
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return {
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 1),
        "cpu_ms_per_image": round(1000 * cpu / count, 2),
        "megabytes": round(sum(a.nbytes for a in arrays.values()) / 1e6, 1),
    }, arrays


def time_cache(arrays: dict[str, np.ndarray]) -> dict:
    """Seconds to write the split's .npz atomically and to load it back."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "split.npz"
        start = time.perf_counter()
        save_arrays(path, arrays)
        written = time.perf_counter() - start
        start = time.perf_counter()
        load_arrays(path, list(arrays))
        loaded = time.perf_counter() - start
    return {"write_seconds": round(written, 3), "load_seconds": round(loaded, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="benchmarks/results/scenes_generation.json")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    runs, arrays = [], None
    for workers in args.workers:
        run, arrays = time_generation(args.count, args.size, workers)
        runs.append(run)
        print(
            f"workers={workers}: {run['seconds']} s, {run['images_per_s']} images/s, "
            f"{run['cpu_ms_per_image']} CPU ms/image"
        )
    best = min(runs, key=lambda r: r["seconds"])
    result = {
        "benchmark": "scenes_generation",
        "image_size": [args.size, args.size],
        "count": args.count,
        "cores": os.cpu_count(),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "runs": runs,
        "best": best,
        "images_per_s": best["images_per_s"],
        "seconds_for_count": best["seconds"],
        "cache": time_cache(arrays),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
