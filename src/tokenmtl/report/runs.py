"""Finished runs on disk: results.json plus the resolved config.yaml of each run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenmtl.report.settings import settings_hash, with_defaults

WALL_TIME_KEYS = ("train_seconds", "dtme_seconds", "recon_seconds", "final_eval_seconds")


@dataclass
class RunRecord:
    """One finished run: its folder, results.json, resolved config and setting hash."""

    dir: Path
    results: dict[str, Any]
    config: dict[str, Any]
    setting: str

    @property
    def tasks(self) -> list[str]:
        return list(self.results["tasks"])

    @property
    def is_single_task(self) -> bool:
        return len(self.results["tasks"]) == 1

    @property
    def seed(self) -> int:
        return int(self.results.get("seed", self.config.get("train", {}).get("seed", 0)))

    @property
    def iterations(self) -> int:
        """Iterations the run executed (results.json `iterations`, else `timing.iterations`)."""
        value = self.results.get("iterations", self.results.get("timing", {}).get("iterations"))
        if value is None:
            raise ValueError(
                f"run {str(self.dir)!r}: results.json records no iterations "
                f"(neither 'iterations' nor 'timing.iterations'); cannot tell its budget"
            )
        return int(value)

    @property
    def wall_seconds(self) -> float:
        """Training + DTME (or Recon) model edit + final evaluation seconds of the run."""
        timing = self.results.get("timing", {})
        return float(sum(timing.get(k, 0.0) or 0.0 for k in WALL_TIME_KEYS))

    def param(self, key: str) -> int:
        """`params[key]` of results.json (0 when absent)."""
        return int(self.results.get("params", {}).get(key, 0) or 0)

    def metric(self, task: str, name: str) -> float:
        return float(self.results["tasks"][task][name])


def find_results(paths: list[str | Path]) -> list[Path]:
    """results.json files under the given run folders (a folder of run folders is searched too)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == "results.json":
            found.append(path)
        elif (path / "results.json").is_file():
            found.append(path / "results.json")
        elif path.is_dir():
            found.extend(sorted(path.glob("**/results.json")))
        else:
            raise FileNotFoundError(f"no run folder or results.json at {str(path)!r}")
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}")
    unique: dict[Path, Path] = {}
    for path in found:  # overlapping arguments must not count a run twice
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def load_run(folder: str | Path) -> RunRecord:
    """Read results.json and config.yaml of one run folder. The setting hash is computed from
    config.yaml with today's schema defaults filled in (`with_defaults`), so runs written before
    a config key existed group with new runs that leave it at its default; the trainer's
    `settings_hash` in results.json is the same hash for runs of the current schema."""
    import yaml

    from tokenmtl.config import read_yaml

    folder = Path(folder)
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(folder / 'results.json')!r}: {err}") from None
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict) or not results["tasks"]:
        raise ValueError(f"{str(folder / 'results.json')!r} has no 'tasks' metrics; is it a tokenmtl run?")
    config_path = folder / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"run folder {str(folder)!r} has no config.yaml: compare needs the resolved "
            f"config of every run to tell settings, budgets and models apart"
        )
    try:
        config = read_yaml(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read {str(config_path)!r}: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(config_path)!r} is not a config mapping")
    config = with_defaults(config)
    setting = settings_hash(config, list(results["tasks"]))
    return RunRecord(dir=folder, results=results, config=config, setting=setting)


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Every run under `paths` (folders, folders of folders or results.json files)."""
    return [load_run(path.parent) for path in find_results(paths)]
