"""The `packages` benchmark: real text multi-task learning on the Debian package index.

Input: a package's one-line short description. Targets, all assigned by the packages'
maintainers: `section`, the debtags facets `role`, `implemented_in` and `use`, `multiarch`
(classification) and `size` = log1p(Installed-Size in KiB), standardised on the train split
(regression). Splits come from a hash of (seed, description), so they are deterministic and a
package's split never depends on the rest of the index. The processed table is cached on disk
under a hash of every setting and of the index bytes. Rules and measured numbers: docs/packages.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tokenmtl.data.debian_index import PackageRecord, parse_records, read_index
from tokenmtl.data.errors import DataError
from tokenmtl.data.package_labels import (  # noqa: F401 (also this module's public names)
    FACETS,
    OTHER,
    assign_split,
    class_list,
    collapse_duplicates,
    facet_value,
    log_size,
    raw_label,
    select_samples,
    unit_hash,
)
from tokenmtl.fileio import atomic_open

CACHE_VERSION = 1
"""Bumped whenever the processing changes, so caches written by older code are never reused."""

SPLITS = ("train", "val", "test")
IGNORE_LABEL = -100
"""Classification target of a package without a usable label (PyTorch's cross-entropy default)."""
CLASSIFICATION_TASKS = ("section", "role", "implemented_in", "use", "multiarch")
REGRESSION_TASKS = ("size",)


def default_cache_dir() -> Path:
    """``$TOKENMTL_CACHE`` if set, else ``~/.cache/tokenmtl/packages``."""
    env = os.environ.get("TOKENMTL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tokenmtl" / "packages"


INDEX_NAMES = ("Packages", "Packages.xz", "Packages.gz", "Packages.bz2")


def index_in_folder(root: Path) -> Path:
    """The package index in `root` (first of INDEX_NAMES), or `root` itself when it is a file."""
    if root.is_file():
        return root
    for name in INDEX_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"packages: no package index in the data folder (looked for {', '.join(INDEX_NAMES)}); "
        "set benchmark.source: PATH to a Debian `Packages` file",
        path=root,
    )


# --------------------------------------------------------------------------------------------
# The processed table
# --------------------------------------------------------------------------------------------


def build_table(
    records: Sequence[PackageRecord],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    min_class_count: int,
    max_samples: int | None,
) -> tuple[dict, dict]:
    """(table, summary): per-split packages, texts and targets; class lists, counts and size stats.

    Classification targets are class ids (IGNORE_LABEL when missing); `size` targets are
    standardised with the train mean/std (None when missing). A task that cannot be built (fewer
    than two classes, a class never seen in train without merging) is kept in `problems`: it is an
    error only for runs that use it, since many indexes (Ubuntu's, third-party) carry no debtags.
    """
    unique = collapse_duplicates(records)
    used = select_samples(unique, seed, max_samples)
    by_split: dict[str, list[PackageRecord]] = defaultdict(list)
    for record in used:
        by_split[assign_split(record.description, seed, val_fraction, test_fraction)].append(record)
    empty = [s for s in SPLITS if not by_split[s]]
    if empty:
        raise DataError(
            f"packages: split(s) {', '.join(empty)} would be empty ({len(used)} packages, "
            f"val_fraction {val_fraction}, test_fraction {test_fraction}); use a larger "
            "index, a larger max_samples or larger fractions"
        )
    table: dict[str, Any] = {
        "splits": {
            s: {"packages": [r.name for r in by_split[s]], "texts": [r.description for r in by_split[s]], "targets": {}}
            for s in SPLITS
        },
        "classes": {},
        "problems": {},
    }
    summary: dict[str, Any] = {
        "packages": {"in_index": len(records), "distinct_descriptions": len(unique), "used": len(used)},
        "splits": {s: len(by_split[s]) for s in SPLITS},
        "tasks": {},
    }
    for task in CLASSIFICATION_TASKS:
        labels = {s: [raw_label(r, task) for r in by_split[s]] for s in SPLITS}
        train_counts = Counter(label for label in labels["train"] if label is not None)
        split_of_label: dict[str, str] = {}
        for s in ("test", "val", "train"):
            split_of_label.update({label: s for label in labels[s] if label is not None})
        try:
            classes, merged = class_list(train_counts, split_of_label, min_class_count, task)
        except DataError as exc:  # only an error for runs that use this task
            table["problems"][task] = str(exc)
            summary["tasks"][task] = {"problem": str(exc)}
            continue
        index = {c: i for i, c in enumerate(classes)}
        other = index.get(OTHER, IGNORE_LABEL)
        table["classes"][task] = classes
        counts, ignored = {}, {}
        for s in SPLITS:
            ids = [IGNORE_LABEL if label is None else index.get(label, other) for label in labels[s]]
            table["splits"][s]["targets"][task] = ids
            per_class = Counter(ids)
            counts[s] = {c: per_class.get(i, 0) for i, c in enumerate(classes)}
            ignored[s] = per_class.get(IGNORE_LABEL, 0)
        summary["tasks"][task] = {"classes": classes, "counts": counts, "ignored": ignored, "merged_into_other": merged}
    try:
        table["size"], summary["tasks"]["size"] = _size_targets(table, by_split)
    except DataError as exc:
        table["problems"]["size"] = str(exc)
        summary["tasks"]["size"] = {"problem": str(exc)}
    return table, summary


def _size_targets(table: dict, by_split: Mapping[str, list[PackageRecord]]) -> tuple[dict, dict]:
    """Standardise log1p(KiB) with the train mean and (population) std; fill the size targets."""
    values = {s: [log_size(r) for r in by_split[s]] for s in SPLITS}
    train = [v for v in values["train"] if v is not None]
    mean = sum(train) / max(len(train), 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in train) / max(len(train), 1))
    if len(train) < 2 or std == 0.0:
        raise DataError(
            f"packages: task 'size' needs at least two different Installed-Size values in "
            f"the train split, got {len(train)} value(s) with std {std:g}"
        )
    summary: dict[str, Any] = {"unit": "log1p(KiB)", "mean": mean, "std": std, "missing": {}, "quantiles": {}}
    for s in SPLITS:
        table["splits"][s]["targets"]["size"] = [None if v is None else (v - mean) / std for v in values[s]]
        present = sorted(v for v in values[s] if v is not None)
        summary["missing"][s] = len(values[s]) - len(present)
        summary["quantiles"][s] = (
            {
                f"q{int(q * 100):02d}": present[min(int(q * len(present)), len(present) - 1)]
                for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
            }
            if present
            else {}
        )
    return {"mean": mean, "std": std}, summary


def save_json_atomic(path: Path, content: Any, indent: int | None = None) -> None:
    """Write JSON atomically (`tokenmtl.fileio`): readers see the old file or the whole new one."""
    with atomic_open(path, "w") as handle:
        json.dump(content, handle, indent=indent)


# --------------------------------------------------------------------------------------------
# Dataset and benchmark
# --------------------------------------------------------------------------------------------


class PackagesDataset(Dataset):
    """Items ``{"text": short description, task: 0-dim target}``; tokenizer-free (the collate tokenizes)."""

    def __init__(self, split_table: Mapping[str, Any], tasks: Sequence[str]):
        self.texts: list[str] = list(split_table["texts"])
        self.packages: list[str] = list(split_table["packages"])
        self.tasks = tuple(tasks)
        self.targets: dict[str, torch.Tensor] = {}
        for task in self.tasks:
            values = split_table["targets"][task]
            if task in REGRESSION_TASKS:
                self.targets[task] = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
            else:
                self.targets[task] = torch.tensor(values, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"text": self.texts[index]}
        for task in self.tasks:
            item[task] = self.targets[task][index]
        return item


def train_subset(split_table: Mapping[str, Any], seed: int, size: int) -> dict[str, Any]:
    """The `size` rows of a split with the smallest hash of (seed, text), in table order.

    The split is stored alphabetically, so a prefix would be biased; the hash rank is a seeded,
    order-free sample, and a smaller size is always a subset of a larger one.
    """
    texts = split_table["texts"]
    ranked = sorted(range(len(texts)), key=lambda i: unit_hash(seed, "train_size", texts[i]))
    rows = sorted(ranked[:size])
    return {
        "texts": [texts[i] for i in rows],
        "packages": [split_table["packages"][i] for i in rows],
        "targets": {task: [values[i] for i in rows] for task, values in split_table["targets"].items()},
    }


class PackagesBenchmark:
    """Debian package short descriptions -> section, debtags facets, Multi-Arch and installed size.

    ``source``: a Packages file (plain/.gz/.xz/.bz2); None runs ``apt-cache dumpavail``.
    ``val_fraction``/``test_fraction``: expected split shares (hash of seed and text).
    ``min_class_count``: labels with fewer train examples become ``other`` (0: no merging).
    ``max_samples``: cap on the number of packages used (a hash-ranked subset); None: all.
    ``train_size``: train on N training packages only (ranked by a hash of seed and text; class lists, size
    statistics, val and test are unchanged, so runs at different train sizes share one table).
    ``root`` (`--data-root`): a folder holding `Packages` (or .xz/.gz/.bz2), used when no ``source``.
    """

    name = "packages"
    modality = "text"
    available_tasks: tuple[str, ...] = CLASSIFICATION_TASKS + REGRESSION_TASKS
    default_tasks: tuple[str, ...] = ("section", "role", "multiarch", "size")
    ignore_label = IGNORE_LABEL

    def __init__(
        self,
        source: str | os.PathLike | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        min_class_count: int = 50,
        max_samples: int | None = None,
        train_size: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        root: str | os.PathLike | None = None,
    ):
        self.source = None if source is None or str(source) == "" else str(source)
        if self.source is None and root is not None and str(root) != "":
            self.source = str(index_in_folder(Path(root).expanduser()))
        self.seed = int(seed)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        for key, value in (("val_fraction", self.val_fraction), ("test_fraction", self.test_fraction)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"benchmark.{key} must be in (0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"benchmark.val_fraction + test_fraction must be < 1 (train needs a share), "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        if isinstance(min_class_count, bool) or int(min_class_count) != min_class_count or min_class_count < 0:
            raise ValueError(f"benchmark.min_class_count must be an integer >= 0, got {min_class_count!r}")
        self.min_class_count = int(min_class_count)
        if max_samples is not None and (int(max_samples) != max_samples or max_samples < 3):
            raise ValueError(f"benchmark.max_samples must be null or an integer >= 3, got {max_samples!r}")
        self.max_samples = None if max_samples is None else int(max_samples)
        if train_size is not None and (isinstance(train_size, bool) or int(train_size) != train_size or train_size < 1):
            raise ValueError(f"benchmark.train_size must be null or an integer >= 1, got {train_size!r}")
        self.train_size = None if train_size is None else int(train_size)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.progress = progress
        self._table: dict[str, Any] | None = None
        self._key: str | None = None

    # ------------------------------------------------------------------ settings and cache
    def settings(self) -> dict[str, Any]:
        """Every option that shapes the table (the source is identified by its content hash)."""
        return {
            "version": CACHE_VERSION,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "min_class_count": self.min_class_count,
            "max_samples": self.max_samples,
        }

    @staticmethod
    def cache_key(settings: Mapping[str, Any], source_sha256: str) -> str:
        """Hash of the settings and of the index bytes: a new index or option gives a new file."""
        payload = json.dumps({"settings": dict(settings), "source_sha256": source_sha256}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def cache_path(self) -> Path:
        """The cached table (reads the index to hash it the first time)."""
        self._ensure_key()
        return self.cache_dir / f"packages-{self._key}.json"

    def summary_path(self) -> Path:
        """Class lists, per-split counts and size statistics, written next to the cache."""
        self._ensure_key()
        return self.cache_dir / f"packages-{self._key}.classes.json"

    def _ensure_key(self) -> None:
        if self._key is None:
            self._index = read_index(self.source)
            self._key = self.cache_key(self.settings(), self._index.sha256)

    @property
    def table(self) -> dict[str, Any]:
        """The processed table: from memory, else the cache file, else built from the index."""
        if self._table is None:
            self._table = self._load_or_build()
        return self._table

    def _load_or_build(self) -> dict[str, Any]:
        try:
            return self._read_cache() or self._build()
        finally:
            self._index = None  # the raw text is no longer needed once the table exists

    def _read_cache(self) -> dict[str, Any] | None:
        """The cached table if it exists and matches the settings and index; None otherwise."""
        path = self.cache_path()
        if path.exists():
            try:
                with open(path, encoding="utf-8") as handle:
                    table = json.load(handle)
                complete = {"splits", "classes", "problems"} <= set(table)
                if (
                    complete
                    and table.get("settings") == self.settings()
                    and table.get("source_sha256") == self._index.sha256
                ):
                    return table
                warnings.warn(
                    f"packages cache file {path} was written with other settings; rebuilding it", stacklevel=3
                )
            except (OSError, ValueError) as exc:
                warnings.warn(
                    f"packages cache file {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
                    stacklevel=3,
                )
        return None

    def _build(self) -> dict[str, Any]:
        """Parse the index, build the table, write the summary and then the cache (both atomic)."""
        if self.progress:
            print(f"packages: building the benchmark from {self._index.origin}", flush=True)
        records = parse_records(self._index)
        table, summary = build_table(
            records, self.seed, self.val_fraction, self.test_fraction, self.min_class_count, self.max_samples
        )
        origin = {"source": self._index.origin, "source_sha256": self._index.sha256, "settings": self.settings()}
        table.update(origin)
        save_json_atomic(self.summary_path(), {**origin, **summary}, indent=1)
        save_json_atomic(self.cache_path(), table)
        return table

    # ------------------------------------------------------------------ protocol
    def _check_task(self, task: str) -> None:
        """ValueError for an unknown task; DataError (the reason) for one this index cannot supply."""
        if task not in self.available_tasks:
            raise ValueError(f"unknown packages task {task!r}; valid tasks: {list(self.available_tasks)}")
        problem = self.table["problems"].get(task)
        if problem is not None:
            raise DataError(problem)

    def class_names(self, task: str) -> list[str]:
        """Class names of classification `task`, in class-id order."""
        self._check_task(task)
        if task not in CLASSIFICATION_TASKS:
            raise ValueError(f"packages task {task!r} is a regression task; it has no classes")
        return list(self.table["classes"][task])

    @property
    def size_mean(self) -> float:
        """Train mean of log1p(Installed-Size KiB), subtracted from the size targets."""
        self._check_task("size")
        return float(self.table["size"]["mean"])

    @property
    def size_std(self) -> float:
        """Train std of log1p(Installed-Size KiB); size targets are divided by it."""
        self._check_task("size")
        return float(self.table["size"]["std"])

    def task_spec(self, task: str) -> Any:
        """TaskSpec of `task`: macro-F1 classification, or `size` L1 with MAE in log1p(KiB) units."""
        self._check_task(task)
        from tokenmtl import tasks as factories

        if task in REGRESSION_TASKS:
            return factories.scalar_regression_task(task, scale=self.size_std)
        return factories.classification_task(len(self.class_names(task)), name=task, ignore_index=IGNORE_LABEL)

    def dataset(self, split: str, train: bool, tasks: Sequence[str] | None = None) -> PackagesDataset:
        """Items of `split` ("train", "val", "test"); `train` changes nothing (no augmentation)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        tasks = self.default_tasks if tasks is None else tuple(tasks)
        for task in tasks:
            self._check_task(task)
        split_table = self.table["splits"][split]
        if split == "train" and self.train_size is not None:
            available = len(split_table["texts"])
            if self.train_size > available:
                raise ValueError(
                    f"benchmark.train_size={self.train_size} exceeds the {available} training packages "
                    "of this table (raise max_samples or lower train_size)"
                )
            split_table = train_subset(split_table, self.seed, self.train_size)
        return PackagesDataset(split_table, tasks)
