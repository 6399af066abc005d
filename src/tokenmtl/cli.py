"""The `tokenmtl` command: train, evaluate, analyze, compare, sweep, demo, methods, data preview."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Multi-task learning on transformers: DTME-MTL, DB-MTL and baselines.",
)
data_app = typer.Typer(no_args_is_help=True, help="Look at a benchmark's data.")
app.add_typer(data_app, name="data")
config_app = typer.Typer(no_args_is_help=True, help="Look at configs.")
app.add_typer(config_app, name="config")

DEMO_CONFIG = "packages_minilm"  # the demo: a real pretrained transformer on real labels
SCENES_CONFIG = "demo"  # the procedural scenes benchmark from scratch (preview, sweep)


def _user_errors() -> tuple[type[BaseException], ...]:
    from tokenmtl.config import ConfigError
    from tokenmtl.engine.checkpoint import CheckpointError
    from tokenmtl.engine.errors import TrainingError

    errors: list[type[BaseException]] = [
        ConfigError,
        CheckpointError,
        TrainingError,
        ValueError,
        KeyError,
        FileNotFoundError,
        PermissionError,
        ImportError,
    ]
    try:
        from tokenmtl.data.errors import DataError

        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run a command; a user mistake prints one clear line (TOKENMTL_DEBUG=1 shows the traceback)."""
    from tokenmtl.engine.errors import TrainingInterrupted

    try:
        return fn()
    except TrainingInterrupted as err:
        typer.secho(f"interrupted: {err}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None
    except _user_errors() as err:
        if os.environ.get("TOKENMTL_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


def _build_config(
    config: str,
    sets: list[str],
    tasks: str | None,
    method: str | None,
    dtme: bool | None,
    data_root: str | None,
    seed: int | None,
    pretrained: bool | None = None,
    weights: str | None = None,
) -> Any:
    from tokenmtl.config import load_config

    extra: dict[str, Any] = {}
    if tasks:
        extra["tasks"] = [t.strip() for t in tasks.split(",") if t.strip()]
    if method:
        extra["method"] = {"name": method}
    if dtme is not None:
        extra["dtme"] = {"enabled": dtme}
    if data_root:
        extra["benchmark"] = {"root": data_root}
    if seed is not None:
        extra["train"] = {"seed": seed}
    if pretrained is not None or weights:
        extra["model"] = {
            **({"pretrained": pretrained} if pretrained is not None else {}),
            **({"weights": weights} if weights else {}),
        }
    cfg = load_config(config, overrides=sets, extra=extra)
    return cfg


SetOpt = typer.Option([], "--set", help="Override a config key: --set train.iterations=20 (repeatable).")
TasksOpt = typer.Option(None, "--tasks", help="Comma-separated task list, e.g. semseg,depth.")
MethodOpt = typer.Option(None, "--method", help="Balancing method (see `tokenmtl methods`).")
DtmeOpt = typer.Option(None, "--dtme/--no-dtme", help="Run DTME-MTL analysis + expansion during training.")
DataRootOpt = typer.Option(None, "--data-root", help="Folder of the benchmark's data (benchmark.root).")
SeedOpt = typer.Option(None, "--seed", help="train.seed")


@app.command()
def train(
    config: str = typer.Argument(..., help="A YAML config file, or a packaged config name (demo)."),
    out: Path = typer.Option(..., "--out", help="Run folder for results.json, config.yaml, checkpoints, logs."),
    sets: list[str] = SetOpt,
    tasks: str | None = TasksOpt,
    method: str | None = MethodOpt,
    dtme: bool | None = DtmeOpt,
    data_root: str | None = DataRootOpt,
    seed: int | None = SeedOpt,
    pretrained: bool | None = typer.Option(
        None, "--pretrained/--no-pretrained", help="Load the backbone's pretrained weights from timm's hub."
    ),
    weights: str | None = typer.Option(None, "--weights", help="Local backbone weights (.safetensors/.npz/.pth)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest good checkpoint in --out."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: the config's log.progress)."
    ),
) -> None:
    """Train one run (ST when one task is given) and write DIR/results.json."""

    def run() -> None:
        from tokenmtl.engine.distributed import DistContext
        from tokenmtl.engine.trainer import Trainer

        _check_out_folder(out)
        cfg = _build_config(config, sets, tasks, method, dtme, data_root, seed, pretrained, weights)
        dist = DistContext.from_env()
        try:
            results = Trainer(cfg, out, resume=resume, progress=progress, dist=dist).run()
        finally:
            dist.close()
        if dist.is_main:
            _print_results(results, out)

    run_guarded(run)


def _print_results(results: dict[str, Any], out: Path) -> None:
    typer.echo(f"results ({results.get('split')} split) -> {out / 'results.json'}")
    for task, metrics in results["tasks"].items():
        typer.echo(f"  {task:>12}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def _check_out_folder(out: Path) -> None:
    """--out must be a folder (or not exist yet)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file; give a folder for the run's files")


def _target_overrides(sets: list[str], data_root: str | None) -> list[str]:
    return list(sets) + ([f"benchmark.root={data_root}"] if data_root else [])


TargetArg = typer.Argument(
    ...,
    help="A run folder (its newest good checkpoint and stored config), "
    "or a config file / packaged config name with --checkpoint.",
)


@app.command()
def evaluate(
    target: str = TargetArg,
    checkpoint: Path | None = typer.Option(None, "--checkpoint"),
    out: Path = typer.Option(..., "--out"),
    split: str = typer.Option("test", "--split"),
    sets: list[str] = SetOpt,
    data_root: str | None = DataRootOpt,
) -> None:
    """Evaluate a checkpoint on a split (never builds the training split); writes DIR/results.json."""

    def run() -> None:
        from tokenmtl.engine.commands import evaluate_checkpoint

        if checkpoint is None and not Path(target).is_dir():
            raise ValueError(f"{target!r} is not a run folder: give one, or a config and --checkpoint PATH")
        _check_out_folder(out)
        results = evaluate_checkpoint(
            target, checkpoint, split=split, out=out, overrides=_target_overrides(sets, data_root), progress=True
        )
        _print_results(results, out)

    run_guarded(run)


@app.command()
def analyze(
    target: str = TargetArg,
    checkpoint: Path | None = typer.Option(None, "--checkpoint"),
    out: Path = typer.Option(..., "--out"),
    sets: list[str] = SetOpt,
    data_root: str | None = DataRootOpt,
    num_batches: int | None = typer.Option(
        None, "--num-batches", help="Batches to analyse (default dtme.num_batches)."
    ),
) -> None:
    """Token-space conflict report (conflicts.json + plots) and the expansion plan (plan.json)."""

    def run() -> None:
        from tokenmtl.engine.commands import analyze_checkpoint

        _check_out_folder(out)
        _, plan = analyze_checkpoint(
            target,
            checkpoint,
            out=out,
            overrides=_target_overrides(sets, data_root),
            num_batches=num_batches,
            progress=True,
        )
        typer.echo(f"plan: TM on layers {plan.tm}, TE on layers {plan.te} -> {out}")

    run_guarded(run)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders (or folders of run folders)."),
    out: Path | None = typer.Option(None, "--out", help="Where to write comparison.md/.png (default: first folder)."),
    allow_mixed: bool = typer.Option(
        False, "--allow-mixed", help="Tabulate runs of different budgets, models or benchmarks (noted)."
    ),
) -> None:
    """Table of per-task metrics and delta-m of runs against the single-task runs (markdown + PNG)."""

    def run() -> None:
        _compare(runs, out, allow_mixed)

    run_guarded(run)


def _compare(runs: list[Path], out: Path | None, allow_mixed: bool = False) -> str:
    from tokenmtl.report.compare import compare_runs

    target = out or (runs[0] if runs[0].is_dir() else runs[0].parent)
    table = compare_runs(list(runs), target, allow_mixed=allow_mixed).markdown
    typer.echo(table)
    typer.echo(f"written: {target / 'comparison.md'}, {target / 'comparison.png'}")
    return table


@app.command()
def methods() -> None:
    """List the balancing methods with a one-line description and their options."""
    from tokenmtl import balancing

    for name, info in balancing.describe().items():
        options = ", ".join(f"{k}={v!r}" for k, v in info["options"].items()) or "-"
        typer.echo(f"{name:<11} [{info['kind']:<8}] {info['summary']}\n{'':<22}options: {options}")


@data_app.command("preview")
def data_preview(
    config: str = typer.Argument(SCENES_CONFIG),
    out: Path = typer.Option(Path("preview.png"), "--out"),
    split: str = typer.Option("train", "--split"),
    n: int = typer.Option(8, "--n"),
    sets: list[str] = SetOpt,
    data_root: str | None = DataRootOpt,
) -> None:
    """Write a PNG grid of images and their task targets."""

    def run() -> None:
        from tokenmtl.data.base import create_benchmark, resolve_tasks
        from tokenmtl.data.preview import write_preview

        cfg = _build_config(config, sets, None, None, None, data_root, None)
        benchmark = create_benchmark(cfg["benchmark"])
        tasks = resolve_tasks(benchmark, cfg["tasks"])
        write_preview(benchmark, out, split=split, n=n, tasks=tasks)
        typer.echo(f"preview -> {out}")

    run_guarded(run)


def _variant(
    config: str,
    sets: list[str],
    seed: int,
    tasks: list[str] | None = None,
    method: str | None = None,
    dtme: bool | None = None,
    control: bool = False,
) -> Any:
    """A config with `--set` overrides applied, then the variant's tasks/seed/method/DTME flag on top.

    `control`: DTME's empty-plan control (`dtme.mode=none`): the DTME schedule, no added parameters.
    """
    from tokenmtl.config import load_config, validate

    cfg = load_config(config, overrides=sets)
    cfg.train.seed = seed
    if tasks is not None:
        cfg.tasks = list(tasks)
    if method is not None and method != cfg.method.name:
        cfg.method = {"name": method}  # another method's options do not carry over
    if dtme is not None:
        cfg.dtme.enabled = dtme
    if control:
        cfg.dtme.enabled, cfg.dtme.mode = True, "none"
    validate(cfg)
    return cfg


def _train_quiet(cfg: dict[str, Any], out: Path, progress: bool) -> dict[str, Any]:
    from tokenmtl.engine.trainer import Trainer

    if (out / "results.json").is_file():
        typer.echo(f"  {out.name}: done already, reusing results.json")
        return json.loads((out / "results.json").read_text())
    resume = (out / "checkpoints").is_dir()
    return Trainer(cfg, out, resume=resume, progress=progress).run()


@app.command()
def demo(
    config: str = typer.Argument(DEMO_CONFIG, help="The setting (default: real pretrained MiniLM on `packages`)."),
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    seeds: str = typer.Option("0", "--seeds", help="Seeds, e.g. 0 or 0,1,2 (the table shows mean ± std)."),
    jobs: int = typer.Option(2, "--jobs", help="Runs trained at once, one thread each."),
    sets: list[str] = SetOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """ST, MT, MT + DTME and its empty-plan control at equal budget; prints the Δm table, writes conflicts.png."""

    def run() -> None:
        import time

        from tokenmtl.demo import run_demo

        start = time.perf_counter()
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds takes seeds separated by commas (e.g. 0,1,2); got {seeds!r}") from None
        if not seed_list or jobs < 1:
            raise ValueError(f"--seeds needs at least one seed and --jobs at least 1; got {seeds!r}, {jobs}")
        _check_out_folder(out)
        table = run_demo(config, out, sets, seed_list, jobs, progress=progress, echo=typer.echo)
        typer.echo(table)
        typer.echo(f"table: {out / 'table.md'}, {out / 'table.png'}; conflict map: {out / 'conflicts.png'}")
        typer.echo(f"demo wall time: {time.perf_counter() - start:.0f} s")

    run_guarded(run)


@app.command()
def sweep(
    config: str = typer.Argument(SCENES_CONFIG),
    out: Path = typer.Option(Path("runs/sweep"), "--out"),
    methods_: str = typer.Option("all", "--methods", help="Comma-separated methods, or 'all'."),
    dtme: bool | None = typer.Option(
        None,
        "--dtme/--no-dtme",
        help="DTME-MTL as in `train`: each method also "
        "with DTME, plus the empty-plan control (default: the config's dtme.enabled).",
    ),
    seeds: int = typer.Option(1, "--seeds"),
    sets: list[str] = SetOpt,
    progress: bool = typer.Option(False, "--progress/--no-progress"),
) -> None:
    """Train ST models and every method (with `--dtme`: also with DTME, and the empty-plan control of the
    first method); write the Table-3-style comparison."""

    def run() -> None:
        from tokenmtl import balancing
        from tokenmtl.config import load_config
        from tokenmtl.data.base import create_benchmark, resolve_tasks

        names = balancing.available() if methods_ == "all" else [m.strip() for m in methods_.split(",")]
        unknown = [m for m in names if m not in balancing.available()]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(balancing.available())}")
        base = load_config(config, overrides=sets)
        tasks = resolve_tasks(create_benchmark(base["benchmark"]), base["tasks"])
        with_dtme = base.dtme.enabled if dtme is None else dtme
        flags = [False, True] if with_dtme else [False]
        for seed in range(seeds):
            for task in tasks:
                typer.echo(f"[sweep] ST {task} seed {seed}")
                cfg = _variant(config, sets, tasks=[task], seed=seed)
                _train_quiet(cfg, out / f"st-{task}-s{seed}", progress)
            for name in names:
                for flag in flags:
                    tag = f"{name}{'-dtme' if flag else ''}-s{seed}"
                    typer.echo(f"[sweep] {tag}")
                    cfg = _variant(config, sets, seed=seed, method=name, dtme=flag)
                    _train_quiet(cfg, out / tag, progress)
            if with_dtme:  # same schedule and analysis as a DTME run, empty plan: what expansion alone adds
                tag = f"{names[0]}-dtme-control-s{seed}"
                typer.echo(f"[sweep] {tag} (empty plan)")
                _train_quiet(_variant(config, sets, seed=seed, method=names[0], control=True), out / tag, progress)
        _compare([out], out)

    run_guarded(run)


@config_app.command("show")
def config_show(
    config: str | None = typer.Argument(None, help="A config file or packaged config name (default: the defaults)."),
    sets: list[str] = SetOpt,
) -> None:
    """Print the resolved config as YAML, each key with its documentation."""

    def run() -> None:
        from tokenmtl.config import annotated_yaml, load_config

        typer.echo(annotated_yaml(load_config(config, overrides=sets)), nl=False)

    run_guarded(run)


@app.command()
def pretrain(
    config: str = typer.Argument(..., help="A pretraining config (e.g. scenes_pretrain)."),
    out: Path | None = typer.Option(None, "--out", help="Keep the pretraining run and the encoder files here."),
    sets: list[str] = SetOpt,
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: the config's log.progress)."
    ),
) -> None:
    """Pretrain a config's backbone once and cache its encoder weights (`tokenmtl.pretrain`)."""

    def run() -> None:
        from tokenmtl.config import load_config
        from tokenmtl.pretrain import pretrain as pretrain_backbone

        if out is not None:
            _check_out_folder(out)
        cfg = load_config(config, overrides=sets).to_dict()
        show = bool(cfg["log"]["progress"]) if progress is None else progress
        weights = pretrain_backbone(cfg, out, progress=show)
        typer.echo(f"pretrained encoder -> {weights}")

    run_guarded(run)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
