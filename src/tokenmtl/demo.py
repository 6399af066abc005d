"""The demo: single-task, multi-task, multi-task + DTME and its empty-plan control on one config.

Every run is an ordinary `tokenmtl train` command (printed, and logged next to its run folder),
run in parallel worker processes with one thread each, so the demo uses every core without the
threads of two runs fighting over them. A run whose `results.json` exists is reused, so an
interrupted demo continues where it stopped. At the end the runs are compared at equal budget
(`tokenmtl.report.compare.compare_runs`) and the DTME run's conflict map is copied next to the table.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tokenmtl.progress import progress_bar


@dataclass(frozen=True)
class DemoRun:
    """One run of the demo: its folder name and the `--set` overrides that make it."""

    name: str
    sets: tuple[str, ...]


def demo_runs(tasks: list[str], seeds: list[int]) -> list[DemoRun]:
    """MT + DTME (TM+TE, conflict-chosen layers), the empty-plan control, MT (EW) and ST per task.

    The DTME runs come first: they are the longest, so starting them first shortens the demo.
    """
    runs: list[DemoRun] = []
    for seed in seeds:
        s = f"train.seed={seed}"
        runs.append(DemoRun(f"mt-ew-dtme-s{seed}", ("dtme.enabled=true", "dtme.mode=both", s)))
        runs.append(DemoRun(f"mt-ew-control-s{seed}", ("dtme.enabled=true", "dtme.mode=none", s)))
        runs.append(DemoRun(f"mt-ew-s{seed}", ("dtme.enabled=false", s)))
        runs += [DemoRun(f"st-{t}-s{seed}", (f"tasks=[{t}]", "dtme.enabled=false", s)) for t in tasks]
    return runs


def train_command(config: str, out: Path, sets: list[str], run: DemoRun) -> list[str]:
    """The `tokenmtl train` command line of one demo run (the user's --set first, the run's on top)."""
    command = [sys.executable, "-m", "tokenmtl", "train", config, "--out", str(out / run.name), "--no-progress"]
    for value in [*sets, *run.sets, "log.progress=false"]:
        command += ["--set", value]
    return command


def _train(command: list[str], log: Path, threads: int) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False).returncode


def run_demo(
    config: str, out: Path, sets: list[str], seeds: list[int], jobs: int, progress: bool = True, echo=print
) -> str:
    """Train the demo's runs (`jobs` at a time), then write and return the comparison table."""
    from tokenmtl.config import load_config
    from tokenmtl.data.base import create_benchmark, resolve_tasks
    from tokenmtl.report.compare import compare_runs

    base = load_config(config, overrides=sets)
    tasks = resolve_tasks(create_benchmark(base["benchmark"], progress=progress), base["tasks"])
    runs = demo_runs(tasks, seeds)
    out.mkdir(parents=True, exist_ok=True)
    threads = 1 if jobs > 1 else (os.cpu_count() or 1)
    todo = [r for r in runs if not (out / r.name / "results.json").is_file()]
    commands = {r.name: train_command(config, out, sets, r) for r in runs}
    (out / "commands.md").write_text(
        "# Demo runs\n\n```bash\n"
        + "\n".join(f"OMP_NUM_THREADS={threads} " + shlex.join(["tokenmtl", *commands[r.name][3:]]) for r in runs)
        + "\n```\n"
    )
    echo(
        f"[demo] {len(runs)} runs ({len(runs) - len(todo)} done already), {jobs} at a time; "
        f"commands: {out / 'commands.md'}"
    )
    start = time.perf_counter()
    failed: list[str] = []
    with (
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
        progress_bar(total=len(todo), desc="demo runs", enabled=progress, unit="run") as bar,
    ):
        futures = {pool.submit(_train, commands[r.name], out / f"{r.name}.log", threads): r for r in todo}
        for future in as_completed(futures):
            run = futures[future]
            if future.result() != 0:
                failed.append(run.name)
            bar.update(1)
            bar.set_postfix_str(run.name)
    if failed:
        from tokenmtl.engine.errors import TrainingError

        raise TrainingError(f"demo run(s) failed: {', '.join(failed)}; see {out}/<run>.log")
    table = compare_runs([out / r.name for r in runs], out, name="table")
    conflicts = out / f"mt-ew-dtme-s{seeds[0]}" / "conflicts.png"
    if conflicts.is_file():
        shutil.copyfile(conflicts, out / "conflicts.png")
    echo(f"[demo] runs trained in {time.perf_counter() - start:.0f} s")
    return table.markdown
