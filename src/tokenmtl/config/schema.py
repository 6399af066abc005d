"""Every config key tokenmtl reads, declared once: type, default, choices, bounds and doc.

Add a new option here (and only here); `tokenmtl config show` prints these docs next to the
resolved values. `benchmark` and `method` are open: the benchmark or balancing method that is
built from them checks the extra keys it takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tokenmtl.config.sections import Section, key

section = dataclasses.dataclass(eq=False, repr=False)


@section
class BenchmarkSection(Section):
    """The benchmark; other keys go to its constructor (e.g. scenes' image_size, train_size)."""

    OPEN = True
    PATH = "benchmark"
    name: str = key("scenes", "Benchmark: scenes, packages, nyud, pascal or taskonomy (more keys: its constructor's).")
    root: str | None = key(None, "Folder of the benchmark's data (real benchmarks).")


@section
class ModelSection(Section):
    PATH = "model"
    family: str = key("timm", "Encoder family: a timm ViT or a Hugging Face text encoder.", choices=("timm", "hf"))
    backbone: str = key("vit_tiny_patch16_224", "Name of the timm architecture (family timm).")
    name: str | None = key(None, "Hugging Face model name or folder (family hf).")
    tokenizer: str | None = key(None, "Tokenizer name or folder (family hf; default: model.name).")
    pooling: str = key("mean", "Token pooling for the heads (family hf).", choices=("mean", "cls"))
    attn_implementation: str = key("sdpa", "Attention backend (family hf).", choices=("sdpa", "eager"))
    max_length: int = key(128, "Tokens per text, after truncation (family hf).", gt=0)
    pretrained: bool = key(False, "Load the backbone's pretrained weights (timm's local cache).")
    weights: str | None = key(None, "Local backbone weights (.safetensors/.npz/.pth).")
    img_size: int | list[int] | None = key(None, "Input size override (unset: the architecture's).", gt=0)
    patch_size: int | None = key(None, "Patch size override.", gt=0)
    depth: int | None = key(None, "Number of transformer blocks override.", gt=0)
    embed_dim: int | None = key(None, "Token width override.", gt=0)
    num_heads: int | None = key(None, "Attention heads override.", gt=0)
    mlp_ratio: float | None = key(None, "MLP hidden width / token width override.", gt=0)
    drop_path_rate: float | None = key(None, "Stochastic depth rate override.")
    qkv_bias: bool | None = key(None, "Bias in the qkv projection override.")
    head_channels: int | None = key(None, "Hidden channels of the dense heads (unset: the token width).", gt=0)


@section
class TrainSection(Section):
    PATH = "train"
    iterations: int = key(1000, "Optimisation steps (DTME with post_iterations=full adds its warm-up).", gt=0)
    batch_size: int = key(16, "Batch size per process (the global batch is world size x batch size).", gt=0)
    lr: float = key(1.0e-3, "Base learning rate.", ge=0)
    weight_decay: float = key(1.0e-4, "Weight decay of the model's parameters (never DTME's added ones).", ge=0)
    optimizer: str = key("adam", "Optimizer.", choices=("adam", "adamw", "sgd"))
    lr_schedule: str = key(
        "poly", "Learning-rate schedule, stepped per iteration.", choices=("poly", "constant", "cosine")
    )
    poly_power: float = key(0.9, "Power of the polynomial schedule (InvPT).")
    warmup_iterations: int = key(0, "Linear LR warm-up iterations.", ge=0)
    eval_every: int = key(250, "Evaluate on eval.split every this many iterations.", gt=0)
    checkpoint_every: int = key(250, "Save a checkpoint every this many iterations.", gt=0)
    keep_checkpoints: int = key(2, "Checkpoints kept on disk (newest).", gt=0)
    seed: int = key(0, "Seed of the model, the data order and every random choice.")
    num_workers: int = key(0, "DataLoader worker processes.", ge=0)
    device: str = key("auto", "Device: auto (CUDA when available), cpu, cuda, cuda:1...")
    grad_clip: float | None = key(None, "Clip the gradient norm of the trainable parameters (unset: no clip).")
    task_lr_mult: float = key(1.0, "LR multiplier of the task-specific parameters (heads).", ge=0)
    precision: str = key(
        "fp32",
        "Forward/backward precision (autocast for bf16/fp16; fp16 adds a loss scaler).",
        choices=("fp32", "bf16", "fp16"),
    )
    compile: bool = key(False, "Compile the encoder's blocks with torch.compile (engine/compile.py).")


@section
class LossWeightsSection(Section):
    PATH = "loss_weights"
    scheme: str = key("ones", "Per-task loss weights: all ones, or InvPT's per benchmark.", choices=("ones", "invpt"))
    weights: dict[str, float] | None = key({}, "Explicit weights {task: weight}, applied on top of the scheme.")


@section
class MethodSection(Section):
    """The balancing method; other keys are its options (`tokenmtl methods` lists them)."""

    OPEN = True
    PATH = "method"
    name: str = key("ew", "Balancing method (tokenmtl methods).")


@section
class DtmeSection(Section):
    PATH = "dtme"
    enabled: bool = key(False, "Analyse token-space conflicts and expand the model during training.")
    expand_at: float = key(0.25, "Expand after this fraction of train.iterations (0: before training).", ge=0, lt=1)
    post_iterations: str = key(
        "remaining",
        "After expansion: remaining (same total budget as the baseline) or full (the paper's "
        "protocol: the whole schedule again, for its timing study).",
        choices=("remaining", "full"),
    )
    ratio: float = key(0.5, "Fraction of the layers given TM (and TE).", gt=0, le=1)
    r: float = key(100.0, "Energy threshold of the range space: 100 keeps 99% of the energy.", gt=0)
    energy_fraction: float | None = key(None, "Energy fraction of the range space (overrides r).")
    strategy: str = key(
        "conflict",
        "Layer choice (ablations: random, reverse, swap).",
        choices=("conflict", "random", "reverse", "swap"),
    )
    mode: str = key(
        "both",
        "Which modules: TM and TE, TM only, TE only, or none (the empty-plan control: "
        "same analysis and schedule, no added parameters).",
        choices=("both", "tm", "te", "none"),
    )
    num_tokens: int = key(6, "Tokens added per task and TE layer.", gt=0)
    modulator: str = key("affine", "Token Modulation form.", choices=("affine", "batchnorm"))
    te_gate: bool = key(
        False,
        "Function-preserving Token Expansion (ours, not the paper's): a per-task gate, 0 at "
        "insertion, mixes the block's outputs with and without the added tokens.",
    )
    freeze_backbone: bool = key(False, "After expansion, train only heads and added parameters.")
    num_batches: int | None = key(16, "Training batches analysed (unset: the whole split).", gt=0)
    lr_mult: float = key(
        10.0,
        "LR multiplier of the added parameters (10: best on val of the candidates on both pretrained "
        "settings, docs/method.md; at the base LR the TM weights barely leave identity in a few hundred steps).",
        ge=0,
    )
    seed: int = key(0, "Seed of the analysis batches and the random strategy.")


@section
class EvalSection(Section):
    PATH = "eval"
    split: str = key("val", "Split evaluated every train.eval_every iterations.", choices=("train", "val", "test"))
    final_split: str = key("test", "Split of results.json.", choices=("train", "val", "test"))
    batch_size: int = key(64, "Evaluation batch size.", gt=0)


@section
class LogSection(Section):
    PATH = "log"
    progress: bool = key(True, "Progress bars.")
    tensorboard: bool = key(True, "TensorBoard event files in the run folder.")


SECTIONS: dict[str, type[Section]] = {
    "benchmark": BenchmarkSection,
    "model": ModelSection,
    "train": TrainSection,
    "loss_weights": LossWeightsSection,
    "method": MethodSection,
    "dtme": DtmeSection,
    "eval": EvalSection,
    "log": LogSection,
}
# Top-level keys that are not sections: {key: (default, doc)}.
SCALARS: dict[str, tuple[Any, str]] = {
    "name": (None, "A label for the run (tables show it)."),
    "tasks": (None, "Tasks to train (unset: the benchmark's default tasks)."),
}
ORDER = ("name", "benchmark", "tasks", "model", "train", "loss_weights", "method", "dtme", "eval", "log")
OPEN_SECTIONS = {name for name, cls in SECTIONS.items() if cls.OPEN}


def defaults() -> dict[str, Any]:
    """The default config as a plain nested dict."""
    return {k: SCALARS[k][0] if k in SCALARS else SECTIONS[k]().to_dict() for k in ORDER}
