"""Time per training step of every balancing method, as a ratio to EW, in one run (JSON out).

A step is: forward, ``GradDriver.backward``, optimiser step (and FAMO's re-evaluation). The model
is a self-contained stand-in of the MultiTaskModel contract: a small timm ViT (depth 6, width 192,
64x64 inputs, 8x8 patches) and one small conv head per task, on a random batch. Methods are timed
in interleaved rounds (each round runs every method); the ratios use the *minimum* step time
(the least disturbed by other processes on a shared machine), and the median is reported too.
It also times the two ways of computing the task gradients (``grad_mode`` "loop" and "batched")
on one gradient method. On a shared CPU, ``--threads 1`` gives the steadiest numbers.

    python benchmarks/balancing_overhead.py --out benchmarks/results/balancing_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from tokenmtl import balancing
from tokenmtl.engine.grad_driver import GradDriver


class ViTMultiTask(nn.Module):
    """timm ViT encoder + one conv head per task, with the MultiTaskModel parameter contract."""

    def __init__(self, tasks: list[str], image_size: int = 64, patch: int = 8, depth: int = 6, dim: int = 192) -> None:
        super().__init__()
        import timm

        self.tasks = list(tasks)
        self.encoder = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=image_size, patch_size=patch,
            depth=depth, embed_dim=dim, num_heads=3, num_classes=0,
        )
        self.heads = nn.ModuleDict({
            t: nn.Sequential(nn.Conv2d(dim, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 1, 1)) for t in tasks
        })

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        tokens = self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens :]
        b, n, d = tokens.shape
        side = int(n**0.5)
        features = tokens.transpose(1, 2).reshape(b, d, side, side)
        return {t: self.heads[t](features) for t in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())


class Runner:
    """One method: model, balancer, driver, optimiser; ``step()`` runs one training step."""

    def __init__(self, name: str, tasks: list[str], batch: dict[str, Tensor], device: torch.device, grad_mode: str, options: dict) -> None:
        torch.manual_seed(0)
        self.model = ViTMultiTask(tasks).to(device)
        self.balancer = balancing.create(name, len(tasks), **options)
        self.driver = GradDriver(self.model, self.balancer, grad_mode=grad_mode)
        params = list(self.model.parameters()) + list(self.balancer.parameters())
        self.optimizer = torch.optim.SGD(params, lr=1e-4)
        self.batch = batch
        self.device = device

    def losses(self) -> dict[str, Tensor]:
        out = self.model(self.batch["image"])
        return {t: (out[t] - self.batch[t]).abs().mean() + 1e-3 for t in self.model.tasks}

    def step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.driver.backward(self.losses())
        self.optimizer.step()
        if self.driver.needs_reevaluation:
            with torch.no_grad():
                self.driver.after_step(self.losses())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/balancing_overhead.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--grad-mode", default="loop", choices=("loop", "batched", "auto"))
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    tasks = [f"task{i}" for i in range(args.tasks)]
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(args.batch_size, 3, 64, 64, generator=gen)}
    batch.update({t: torch.randn(args.batch_size, 1, 8, 8, generator=gen) for t in tasks})
    batch = {k: v.to(device) for k, v in batch.items()}

    methods = args.methods or balancing.available()
    if "ew" not in methods:
        methods = ["ew", *methods]
    runners = {m: Runner(m, tasks, batch, device, args.grad_mode, {}) for m in methods}
    grad_modes = {mode: Runner("mgda", tasks, batch, device, mode, {}) for mode in ("loop", "batched")}
    everything = {**{("method", k): v for k, v in runners.items()}, **{("grad_mode", k): v for k, v in grad_modes.items()}}
    for runner in everything.values():
        for _ in range(args.warmup):
            runner.step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in everything}
    for _ in range(args.rounds):
        for key, runner in everything.items():
            times[key].extend(runner.step() for _ in range(args.steps))

    per_step = {m: min(times[("method", m)]) for m in methods}
    median = {m: statistics.median(times[("method", m)]) for m in methods}
    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "setup": {
            "model": "timm vit_tiny (depth 6, dim 192, img 64, patch 8) + conv heads",
            "tasks": args.tasks, "batch_size": args.batch_size, "rounds": args.rounds,
            "steps_per_round": args.steps, "grad_mode": args.grad_mode,
            "shared_params": sum(p.numel() for p in runners["ew"].model.shared_parameters()),
        },
        "seconds_per_step_min": per_step,
        "seconds_per_step_median": median,
        "ratio_to_ew": {m: round(per_step[m] / per_step["ew"], 3) for m in methods},
        "ratio_to_ew_median": {m: round(median[m] / median["ew"], 3) for m in methods},
        "mgda_seconds_per_step_by_grad_mode_min": {mode: min(times[("grad_mode", mode)]) for mode in grad_modes},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
