"""DTME evidence grid: variants x seeds trained through the Python API, then one fair table.

Runs go to `<out>/<variant>/seed<k>/` (single-task runs: `<out>/st-<task>/seed<k>/`); a run whose
results.json exists is skipped and one with checkpoints resumes, so the driver can be stopped
and restarted. At the end it writes `<out>/table.md` + `table.png` (`tokenmtl.report.compare`),
`<out>/weights.png` when the runs logged `weight/<task>` or `dtme_norm/<task>`, and
`<out>/commands.md` with the equivalent `tokenmtl train` command of every run.

Equal budgets: with the default `dtme.post_iterations: remaining` a DTME run executes
`train.iterations` in total, like its baseline; with `full` (the paper's timing study) it executes
round(expand_at * N) + N, and the runs without DTME (ST, EW, DB-MTL, FAMO) are then given that many
iterations too, so every row of the table has the same budget. The empty-plan control
(`dtme.mode: none`: the same analysis and schedule, no added parameters) separates the effect of
the DTME schedule and analysis from TM/TE.

    python benchmarks/dtme_evidence.py --config demo --seeds 3 --out runs/evidence
    python benchmarks/dtme_evidence.py --seeds 2 --variants st,mt-ew,mt-ew-tmte --dry-run
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tokenmtl.config import ConfigError, load_config

DTME_ON = ["dtme.enabled=true"]

# Variant name -> --set overrides on the base config ("st" expands to one run per task).
VARIANTS: dict[str, list[str]] = {
    "st": ["method.name=ew"],
    "mt-ew": ["method.name=ew"],
    "mt-ew-empty-plan": ["method.name=ew", *DTME_ON, "dtme.mode=none"],
    "mt-ew-tm": ["method.name=ew", *DTME_ON, "dtme.mode=tm", "dtme.strategy=conflict"],
    "mt-ew-te": ["method.name=ew", *DTME_ON, "dtme.mode=te", "dtme.strategy=conflict"],
    "mt-ew-tmte": ["method.name=ew", *DTME_ON, "dtme.mode=both", "dtme.strategy=conflict"],
    "mt-ew-te-gated": ["method.name=ew", *DTME_ON, "dtme.mode=te", "dtme.strategy=conflict", "dtme.te_gate=true"],
    "mt-ew-tmte-gated": ["method.name=ew", *DTME_ON, "dtme.mode=both", "dtme.strategy=conflict", "dtme.te_gate=true"],
    "mt-ew-tmte-random": ["method.name=ew", *DTME_ON, "dtme.mode=both", "dtme.strategy=random"],
    "mt-ew-tmte-reverse": ["method.name=ew", *DTME_ON, "dtme.mode=both", "dtme.strategy=reverse"],
    "dbmtl": ["method.name=dbmtl"],
    "dbmtl-tmte": ["method.name=dbmtl", *DTME_ON, "dtme.mode=both", "dtme.strategy=conflict"],
    "famo": ["method.name=famo"],
    "uw": ["method.name=uw"],
    "uw-tmte": ["method.name=uw", *DTME_ON, "dtme.mode=both", "dtme.strategy=conflict"],
    "dwa": ["method.name=dwa"],
    "famo-tmte": ["method.name=famo", *DTME_ON, "dtme.mode=both", "dtme.strategy=conflict"],
}


def variant_sets(name: str) -> list[str]:
    """The variant's --set overrides."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; variants: {', '.join(VARIANTS)}")
    return list(VARIANTS[name])


@dataclass
class PlannedRun:
    """One run of the grid: where it goes and the exact overrides that make its config."""

    variant: str
    seed: int
    out: Path
    sets: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (self.out / "results.json").is_file()

    @property
    def resumable(self) -> bool:
        return (self.out / "checkpoints").is_dir() and not self.done


def dtme_iterations(cfg) -> int:
    """Iterations a DTME run executes: expansion at round(expand_at * N), then N more iterations
    (`dtme.post_iterations: full`, the schedule restarts) or the remaining N - expansion step."""
    n = int(cfg["train"]["iterations"])
    expand = round(float(cfg["dtme"]["expand_at"]) * n)
    return expand + (n if cfg["dtme"]["post_iterations"] == "full" else n - expand)


def equal_budget(config: str, extra: list[str]) -> int:
    """Iterations a DTME run of the base config executes (the budget every run of the grid gets)."""
    return dtme_iterations(load_config(config, extra + DTME_ON))


def plan_runs(config: str, seeds: list[int], variants: list[str], extra: list[str], out: Path) -> list[PlannedRun]:
    """Every (variant, seed) run, single-task variants expanded per task of the base config."""
    from tokenmtl.data.base import create_benchmark, resolve_tasks

    base = load_config(config, extra)
    budget = equal_budget(config, extra)
    tasks = resolve_tasks(create_benchmark(base["benchmark"]), base["tasks"])
    runs: list[PlannedRun] = []
    for name in variants:
        sets = variant_sets(name)
        if not any(s.startswith("dtme.enabled=true") for s in sets):
            sets = [*sets, "dtme.enabled=false", f"train.iterations={budget}"]
        members = [(f"st-{t}", [f"tasks=[{t}]"]) for t in tasks] if name == "st" else [(name, [])]
        for seed in seeds:
            for folder, task_sets in members:
                run_sets = [*extra, *task_sets, *sets, f"train.seed={seed}"]
                runs.append(PlannedRun(folder, seed, out / folder / f"seed{seed}", run_sets))
    return runs


def command_of(config: str, run: PlannedRun) -> str:
    """The `tokenmtl train` command that trains exactly this run."""
    parts = ["tokenmtl", "train", config, "--out", str(run.out)]
    for s in run.sets:
        parts += ["--set", s]
    return shlex.join(parts)


def write_commands(config: str, runs: list[PlannedRun], out: Path, argv: list[str]) -> Path:
    """commands.md: the driver invocation, then one `tokenmtl train` command per run."""
    lines = [
        "# DTME evidence: commands",
        "",
        "Driver:",
        "",
        "```bash",
        shlex.join(["python", "benchmarks/dtme_evidence.py", *argv]),
        "```",
        "",
        "Each run (equivalent command line; the driver calls `tokenmtl.engine.trainer.train`):",
        "",
    ]
    for run in runs:
        lines += [f"- `{run.variant}` seed {run.seed}:", "", "  ```bash", f"  {command_of(config, run)}", "  ```"]
    path = out / "commands.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_runs(config: str, runs: list[PlannedRun], progress: bool) -> None:
    """Train every run not done yet (resuming from its checkpoints when it has some)."""
    from tokenmtl.engine.trainer import train

    for i, run in enumerate(runs, 1):
        if run.done:
            print(f"[{i}/{len(runs)}] {run.variant} seed {run.seed}: done, skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.variant} seed {run.seed}{' (resuming)' if run.resumable else ''}", flush=True)
        train(load_config(config, run.sets), run.out, resume=run.resumable, progress=progress)


def write_report(runs: list[PlannedRun], out: Path) -> str:
    """table.md + table.png over the finished runs, and weights.png when weights were logged."""
    from tokenmtl.report.compare import compare_runs
    from tokenmtl.report.training_curves import plot_task_series

    finished = [r.out for r in runs if r.done]
    if not finished:
        raise ValueError(f"no finished run under {str(out)!r} to tabulate")
    comparison = compare_runs(finished, out, name="table")
    multi = {r.variant: r.out for r in runs if r.done and not r.variant.startswith("st-") and r.seed == runs[0].seed}
    try:
        plot_task_series(multi, out / "weights.png")
    except ValueError as err:  # the runs logged no weight/<task> or dtme_norm/<task>
        print(f"weights.png skipped: {err}")
    return comparison.markdown


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,2' -> [0, 2]; '1,' -> [1] (a list of one seed)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()] if "," in text else list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds takes a count (3) or a list (0,2); got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds must give at least one seed >= 0; got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="demo", help="base config file or packaged name (default demo)")
    parser.add_argument("--seeds", default="3", help="seed count (3 -> 0,1,2) or list (0,2)")
    parser.add_argument("--variants", default="all", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/dtme_evidence"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra override (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, train nothing")
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        variants = (
            list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
        )
        for name in variants:
            variant_sets(name)  # unknown names fail before anything runs
        runs = plan_runs(args.config, seeds, variants, args.sets, args.out)
    except (ValueError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    todo = [r for r in runs if not r.done]
    budget = equal_budget(args.config, args.sets)
    print(
        f"{len(runs)} runs ({len(variants)} variants x {len(seeds)} seeds, ST per task), {len(todo)} to train, "
        f"{len(runs) - len(todo)} done; every run {budget} iterations -> {args.out}"
    )
    if args.dry_run:
        for run in runs:
            state = "done" if run.done else "resume" if run.resumable else "todo"
            print(f"  {state:<6} {run.variant:<20} seed {run.seed}  {run.out}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    write_commands(args.config, runs, args.out, argv)
    train_runs(args.config, runs, args.progress)
    print(write_report(runs, args.out))
    print(f"written: {args.out / 'table.md'}, {args.out / 'table.png'}, {args.out / 'commands.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
