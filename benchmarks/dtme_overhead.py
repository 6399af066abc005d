"""DTME overheads (docs/method.md, "Timing and the added parameters"): added parameters, inference
time, conflict-analysis time; writes JSON.

1. Parameters: `vit_base_patch16_224` (no weights) + 4 DenseHeads (semseg 40, depth 1, normals 3,
   edge 1 channels), ratio 0.5 with TM and TE (n = 6 layers each, 6 tokens per task and layer).
2. Inference (CPU, `--threads` cores, batch 1 at 224x224, eval mode, median of `--repeats`):
   - per task: one task's prediction from the expanded model (its stream alone, tasks=[t]) vs
     the same task from the unexpanded model: `t_expanded_t / t_base_t - 1`;
   - joint pass: all tasks at once (`model(x)`): raw ratio `t_expanded / t_base` and
     `(t_expanded - t_base) / t_base / T` ("per task" as the paper states it);
   for a plan forking at the middle (TM/TE on the last 6 blocks) and at block 0 (the first 6),
   since every block after the fork runs T streams. Calls are timed alternately (base, expanded)
   so that a changing machine load affects both.
3. Analysis: conflict-analysis time per batch (one forward, each task's head backward, one
   backward through the blocks batched over tasks, projections and counts) over one MT training step
   (forward, backward of the summed losses,
   Adam step) on the demo model (ViT-Tiny, 64x64 input, patch 8, depth 6, batch 16, 4 tasks).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from tokenmtl.dtme import Plan, analyze, count_added_parameters, expand
from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter

TASKS = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}


def build(backbone: str, seed: int = 0, **overrides) -> MultiTaskModel:
    torch.manual_seed(seed)
    vit = timm.create_model(backbone, pretrained=False, num_classes=0, **overrides)
    heads = {t: DenseHead(vit.embed_dim, c) for t, c in TASKS.items()}
    return MultiTaskModel(TimmViTAdapter(vit), heads).eval()


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parameter_overhead() -> dict:
    model = build("vit_base_patch16_224")
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.encoder.parameters())
    num_blocks = model.encoder.num_blocks
    n = round(0.5 * num_blocks)
    plan = Plan(
        tasks=list(TASKS),
        tm=list(range(num_blocks - n, num_blocks)),
        te=list(range(num_blocks - n, num_blocks)),
        num_tokens=6,
    )
    expand(model, plan)
    added = count_added_parameters(model)
    return {
        "backbone": "vit_base_patch16_224",
        "tasks": TASKS,
        "ratio": 0.5,
        "tm_layers": n,
        "te_layers": n,
        "num_tokens": 6,
        "params_model": total,
        "params_backbone": backbone,
        "params_added": added,
        "percent_of_model": 100.0 * added / total,
        "percent_of_backbone": 100.0 * added / backbone,
        "target_percent": 0.30,
    }


def single_task_forward(model: MultiTaskModel, x: torch.Tensor, task: str) -> torch.Tensor:
    tokens, ctx = model.encoder.embed(x)
    stream = model.trunk(model.encoder, tokens, ctx, [task])[task]
    return model.heads[task](model.encoder.finish(stream, ctx), ctx.image_size)


def flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call (matmuls, convolutions, attention), load-independent."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def paired_times(base: Callable[[], object], other: Callable[[], object], repeats: int) -> dict:
    """Alternate the two calls (robust to a changing machine load): median wall and CPU-time ratios, FLOPs."""
    base(), other()
    wall: dict[str, list[float]] = {"base": [], "expanded": []}
    cpu: dict[str, list[float]] = {"base": [], "expanded": []}
    for _ in range(repeats):
        for key, fn in (("base", base), ("expanded", other)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    flops_base, flops_expanded = flops(base), flops(other)
    return {
        "base_s": statistics.median(wall["base"]),
        "expanded_s": statistics.median(wall["expanded"]),
        "ratio": statistics.median(o / b for o, b in zip(wall["expanded"], wall["base"])),
        "cpu_time_ratio": statistics.median(o / b for o, b in zip(cpu["expanded"], cpu["base"])),
        "flops_base": flops_base,
        "flops_expanded": flops_expanded,
        "flops_ratio": flops_expanded / flops_base,
    }


def inference_overhead(repeats: int) -> dict:
    x = torch.randn(1, 3, 224, 224)
    base = build("vit_base_patch16_224")
    num_blocks, num_tasks = base.encoder.num_blocks, len(TASKS)
    n = round(0.5 * num_blocks)
    results = {
        "input": [1, 3, 224, 224],
        "repeats": repeats,
        "plans": {},
        "definitions": {
            "single_task_overhead_percent": "100 * (median over repeats of t_expanded/t_base - 1) "
            "for one task's prediction alone (its stream only)",
            "joint_ratio": "median of t_expanded/t_base for all tasks in one pass (model(x))",
            "joint_overhead_per_task_percent": "100 * (joint_ratio - 1) / T",
            "*flops*": "the same ratios in FLOPs (torch FlopCounterMode), independent of machine load",
            "cpu_time_ratio": "median ratio of process CPU time (both threads)",
        },
    }
    with torch.inference_mode():
        for fork in (num_blocks - n, 0):
            layers = list(range(fork, fork + n))
            model = build("vit_base_patch16_224")
            expand(model, Plan(tasks=list(TASKS), tm=layers, te=layers, num_tokens=6))
            joint = paired_times(lambda: base(x), lambda: model(x), repeats)
            per_task = {}
            for t in TASKS:
                timing = paired_times(
                    lambda t=t: single_task_forward(base, x, t), lambda t=t: single_task_forward(model, x, t), repeats
                )
                per_task[t] = {
                    **timing,
                    "overhead_percent": 100.0 * (timing["ratio"] - 1),
                    "flops_overhead_percent": 100.0 * (timing["flops_ratio"] - 1),
                }
            results["plans"][f"fork_at_{fork}"] = {
                "tm": layers,
                "te": layers,
                "fork": fork,
                "joint": joint,
                "joint_ratio": joint["ratio"],
                "joint_overhead_per_task_percent": 100.0 * (joint["ratio"] - 1) / num_tasks,
                "joint_flops_overhead_per_task_percent": 100.0 * (joint["flops_ratio"] - 1) / num_tasks,
                "single_task": per_task,
                "single_task_max_overhead_percent": max(v["overhead_percent"] for v in per_task.values()),
                "single_task_max_flops_overhead_percent": max(v["flops_overhead_percent"] for v in per_task.values()),
            }
    results["target_percent_per_task"] = 10.0
    return results


def demo_losses(out: dict, batch: dict) -> dict:
    return {
        "semseg": F.cross_entropy(out["semseg"], batch["semseg"]),
        "depth": F.l1_loss(out["depth"], batch["depth"]),
        "normals": F.l1_loss(out["normals"], batch["normals"]),
        "edge": F.binary_cross_entropy_with_logits(out["edge"], batch["edge"]),
    }


def analysis_overhead(repeats: int) -> dict:
    """Conflict step per batch vs one training step, timed alternately; FLOPs of both too."""
    model = build("vit_tiny_patch16_224", img_size=64, patch_size=8, depth=6, embed_dim=192, num_heads=3)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(16, 3, 64, 64, generator=g),
        "semseg": torch.randint(0, 40, (16, 64, 64), generator=g),
        "depth": torch.rand(16, 1, 64, 64, generator=g),
        "normals": torch.randn(16, 3, 64, 64, generator=g),
        "edge": (torch.rand(16, 1, 64, 64, generator=g) > 0.9).float(),
    }
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def train_step() -> None:
        model.train()
        loss = sum(demo_losses(model(batch["image"]), batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    out = {
        "model": "vit_tiny_patch16_224 img 64 patch 8 depth 6 embed 192 heads 3",
        "batch": 16,
        "tasks": list(TASKS),
        "target_ratio": 2.0,
        "definition": "median over alternating repeats of (conflict pass of one batch: forward, task "
        "gradients, projections, counts) / (one MT training step: forward, backward of "
        "the summed losses, Adam step); covariance pass and eigh reported separately",
    }
    for batched in (True, False):
        key = "batched_backward" if batched else "loop_backward"
        analyze(model, [batch], demo_losses, progress=False, batched=batched)  # warm-up
        train_step()
        steps, conflicts, covariance, eigh, ratios = [], [], [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            train_step()
            steps.append(time.perf_counter() - start)
            timings = analyze(model, [batch], demo_losses, progress=False, batched=batched).timings
            conflicts.append(timings["conflicts_s"])
            covariance.append(timings["covariance_s"])
            eigh.append(timings["eigh_s"])
            ratios.append(conflicts[-1] / steps[-1])
        out[key] = {
            "train_step_s": statistics.median(steps),
            "conflicts_per_batch_s": statistics.median(conflicts),
            "ratio_to_train_step": statistics.median(ratios),
            "covariance_per_batch_s": statistics.median(covariance),
            "eigh_s": statistics.median(eigh),
            "both_passes_per_batch_ratio": statistics.median(
                (c + v) / t for c, v, t in zip(conflicts, covariance, steps)
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/dtme_overhead.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "parameters": parameter_overhead(),
        "analysis": analysis_overhead(args.repeats),
        "inference": inference_overhead(args.repeats),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
