"""The benchmark registry: a benchmark is created by name from the `benchmark` config section."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Protocol

from torch.utils.data import Dataset

# name -> "module:Class", imported on demand so a benchmark's optional dependencies stay optional.
BENCHMARKS: dict[str, str] = {
    "scenes": "tokenmtl.data.scenes:ScenesBenchmark",
    "nyud": "tokenmtl.data.nyud:NYUDBenchmark",
    "pascal": "tokenmtl.data.pascal:PascalContextBenchmark",
    "taskonomy": "tokenmtl.data.taskonomy:TaskonomyBenchmark",
    "packages": "tokenmtl.data.packages:PackagesBenchmark",
}


class Benchmark(Protocol):
    """What the trainer needs from a benchmark (see docs/internals.md)."""

    name: str
    available_tasks: tuple[str, ...]
    default_tasks: tuple[str, ...]

    def task_spec(self, task: str) -> Any: ...

    def dataset(self, split: str, train: bool) -> Dataset: ...


def benchmark_class(name: str) -> type:
    """The class registered under `name`; an unknown name lists the valid ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    module_name, class_name = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_benchmark(section: Mapping[str, Any], progress: bool | None = None) -> Benchmark:
    """Build the benchmark named by `section['name']` with the other keys as constructor arguments.

    `progress` is passed on to benchmarks that show progress bars (scenes generation).
    """
    options = {k: v for k, v in section.items() if k != "name"}
    cls = benchmark_class(section["name"])
    params = inspect.signature(cls).parameters
    if progress is not None and "progress" in params and "progress" not in options:
        options["progress"] = progress
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(
                f"benchmark {section['name']!r} does not take {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(params))}"
            )
    return cls(**options)


def resolve_tasks(benchmark: Benchmark, tasks: list[str] | None) -> list[str]:
    """The run's tasks: the given list (checked) or the benchmark's default tasks."""
    if tasks is None:
        return list(benchmark.default_tasks)
    unknown = [t for t in tasks if t not in benchmark.available_tasks]
    if unknown:
        raise ValueError(
            f"unknown task(s) {', '.join(map(repr, unknown))} for benchmark {benchmark.name!r}; "
            f"available: {', '.join(benchmark.available_tasks)}"
        )
    return list(tasks)
