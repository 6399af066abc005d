"""Labels and splits of the `packages` benchmark: pure functions of one package record.

Which label a package has for each task (debtags facets are single-valued or missing), its
standardisable size, and which split it falls in (a hash of the seed and its description, so a
package's split never depends on the rest of the index). docs/packages.md describes the rules.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenmtl.data.debian_index import PackageRecord
from tokenmtl.data.errors import DataError

OTHER = "other"
"""The class that rare labels are merged into."""

FACETS = {"role": "role", "implemented_in": "implemented-in", "use": "use"}
"""Task name -> debtags facet. A package with no value, only `TODO`, or several values is ignored."""


def facet_value(tags: Iterable[str], facet: str) -> str | None:
    """The single value of debtags `facet`, or None when it has none, only `TODO`, or several."""
    values = {tag.split("::", 1)[1] for tag in tags if tag.startswith(facet + "::")} - {"TODO"}
    return values.pop() if len(values) == 1 else None


def raw_label(record: PackageRecord, task: str) -> str | None:
    """The maintainer's label of `record` for classification `task` (None: missing)."""
    if task == "section":
        return record.section
    if task == "multiarch":
        return record.multi_arch
    return facet_value(record.tags, FACETS[task])


def log_size(record: PackageRecord) -> float | None:
    """log1p(Installed-Size in KiB), None when the stanza has no Installed-Size."""
    return None if record.installed_size is None else math.log1p(record.installed_size)


def unit_hash(*parts: Any) -> float:
    """A number in [0, 1) from SHA-256 of the parts: the same parts give the same number anywhere."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(text: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """`test` when the hash u of (seed, text) is < test_fraction, `val` below test+val, else `train`."""
    u = unit_hash(seed, "split", text)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def collapse_duplicates(records: Sequence[PackageRecord]) -> list[PackageRecord]:
    """One record per distinct description: the package whose name sorts first; sorted by name.

    Identical texts (library versions, transitional packages) would otherwise be near-free test
    points; keeping one makes every text appear once and in one split.
    """
    first: dict[str, PackageRecord] = {}
    for record in records:
        kept = first.get(record.description)
        if kept is None or record.name < kept.name:
            first[record.description] = record
    return sorted(first.values(), key=lambda r: r.name)


def select_samples(records: Sequence[PackageRecord], seed: int, max_samples: int | None) -> list[PackageRecord]:
    """At most `max_samples` records: those with the smallest hash of (seed, text); order kept."""
    if max_samples is None or len(records) <= max_samples:
        return list(records)
    ranked = sorted(records, key=lambda r: unit_hash(seed, "sample", r.description))[:max_samples]
    keep = {id(r) for r in ranked}
    return [r for r in records if id(r) in keep]


def class_list(
    train_counts: Counter, split_of_label: Mapping[str, str], min_class_count: int, task: str
) -> tuple[list[str], dict[str, int]]:
    """Classes of `task` (kept labels sorted, then `other` if used) and the labels merged into it.

    `split_of_label` maps every label seen in any split to one split it occurs in (for errors).
    A label with fewer than `min_class_count` train examples (0 included) is merged into `other`.
    With `min_class_count` 0 nothing is merged, and a label never seen in train is a DataError.
    """
    kept = sorted(c for c, n in train_counts.items() if n >= max(min_class_count, 1))
    rare = {label for label in split_of_label if label not in kept}
    if rare and min_class_count == 0:
        label = min(rare)
        raise DataError(
            f"packages: task {task!r}: class {label!r} occurs in the "
            f"{split_of_label[label]} split but never in train; set "
            f"benchmark.min_class_count >= 1 to merge such classes into {OTHER!r}"
        )
    merged = {label: train_counts.get(label, 0) for label in sorted(rare)}
    classes = kept + ([OTHER] if rare and OTHER not in kept else [])
    if len(classes) < 2:
        raise DataError(
            f"packages: task {task!r} has {len(classes)} class(es) after merging classes with "
            f"fewer than {min_class_count} train examples into {OTHER!r} (train counts: "
            f"{dict(train_counts.most_common(5))}); lower benchmark.min_class_count or use "
            "a larger index"
        )
    return classes, merged
