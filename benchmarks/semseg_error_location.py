"""Where semantic-segmentation errors lie: inside class-pure patches or on patches a boundary crosses.

The demo's dense head predicts one logit vector per 8x8 patch token and upsamples the logits
bilinearly, so a pixel whose patch holds one class is a recognition problem (which class is this
patch?) while a pixel in a patch that a class boundary crosses is a localisation problem (where
inside the patch does the boundary run?). Each argument is a glob of finished single-task
`semseg` run folders; each run's newest checkpoint is evaluated on the test split, and the table
gives, per run group, mean ± std over runs of: mIoU, pixel accuracy on pure-patch pixels, on
mixed-patch pixels, the share of pixels in mixed patches, the share of the errors there, and the
patch-majority mIoU (every pixel labelled with the most frequent target class of its patch, the
best any per-patch labelling can do).

    python benchmarks/semseg_error_location.py --group scratch='runs/ptsearch/scratch/seed*' \
        --group pretrained='runs/scp/st-semseg/seed*' > benchmarks/results/semseg_error_location.md
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenmtl.engine.commands import checkpoint_and_config, load_run
from tokenmtl.metrics.dense import SemsegMeter
from tokenmtl.models.multitask import MultiTaskModel

IGNORE = 255


def _patch_majority(target: torch.Tensor, patch: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,H,W) label of each pixel's patch majority, and (B,H,W) True where the patch is class-pure."""
    onehot = F.one_hot(target.clamp(max=classes), classes + 1).permute(0, 3, 1, 2).float()
    counts = F.avg_pool2d(onehot, patch)  # (B, C+1, H/p, W/p) class shares per patch
    majority = counts[:, :classes].argmax(1)
    pure = counts.max(1).values > 1 - 1e-6
    up = F.interpolate(majority[:, None].float(), scale_factor=patch, mode="nearest")[:, 0].long()
    pure_up = F.interpolate(pure[:, None].float(), scale_factor=patch, mode="nearest")[:, 0].bool()
    return up, pure_up


def as_logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B,H,W) labels -> (B,C,H,W) one-hot scores whose argmax is the label, for SemsegMeter."""
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def measure(folder: Path) -> dict[str, float]:
    """The error-location figures of one finished semseg run on the test split."""
    state, cfg = checkpoint_and_config(folder)
    run = load_run(state, cfg)
    classes = run.specs["semseg"].out_channels
    patch = int(cfg["model"]["patch_size"])
    model = run.model.eval()
    meter, majority_meter = SemsegMeter(classes), SemsegMeter(classes)
    right = {True: 0, False: 0}
    total = {True: 0, False: 0}
    with torch.no_grad():
        for batch in run.eval_loader("test"):
            target = batch["semseg"].long()
            if target.dim() == 4:
                target = target[:, 0]
            logits = model(MultiTaskModel.inputs_from_batch(batch), tasks=["semseg"])["semseg"]
            pred = logits.argmax(1)
            majority, pure = _patch_majority(target, patch, classes)
            meter.update(logits, target)
            majority_meter.update(as_logits(majority, classes), target)
            valid = target != IGNORE
            for is_pure in (True, False):
                where = valid & (pure == is_pure)
                total[is_pure] += int(where.sum())
                right[is_pure] += int((pred == target)[where].sum())
    errors = {k: total[k] - right[k] for k in total}
    return {
        "mIoU": meter.compute()["mIoU"],
        "acc_pure": 100 * right[True] / total[True],
        "acc_mixed": 100 * right[False] / total[False],
        "mixed_share": 100 * total[False] / (total[True] + total[False]),
        "errors_mixed": 100 * errors[False] / max(1, errors[True] + errors[False]),
        "patch_majority_mIoU": majority_meter.compute()["mIoU"],
    }


COLUMNS = ("mIoU", "acc_pure", "acc_mixed", "mixed_share", "errors_mixed", "patch_majority_mIoU")
HEADERS = (
    "test mIoU",
    "pixel acc, pure patches",
    "pixel acc, mixed patches",
    "pixels in mixed patches %",
    "errors in mixed patches %",
    "patch-majority mIoU",
)


def _cell(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", required=True, help="NAME=GLOB of semseg run folders")
    parser.add_argument("--json", type=Path, help="also write the per-run figures here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lines = ["| runs | n | " + " | ".join(HEADERS) + " |", "|---|---|" + "---|" * len(HEADERS)]
    dump: dict[str, dict[str, dict[str, float]]] = {}
    for spec in args.group:
        name, pattern = spec.split("=", 1)
        folders = sorted(Path(p) for p in glob.glob(pattern))
        if not folders:
            raise SystemExit(f"no run folder matches {pattern!r}")
        figures = {str(f): measure(f) for f in folders}
        dump[name] = figures
        cells = [_cell([fig[c] for fig in figures.values()]) for c in COLUMNS]
        lines.append(f"| {name} | {len(folders)} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
