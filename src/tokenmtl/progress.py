"""Progress bars: one tqdm wrapper that every long loop uses, switched off by a flag.

`log.progress: false` (and non-main ranks) pass `enabled=False`, which gives a disabled bar with
the same interface, so callers never branch on whether progress is shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
    leave: bool = False,
    **options: Any,
) -> tqdm:
    """A tqdm bar over `iterable` (or a manual one of `total` steps), inert when not `enabled`.

    Transient by default (`leave=False`); other tqdm keywords (`initial`, `dynamic_ncols`, ...)
    pass through.
    """
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=not enabled, **options)


def progress_write(message: str) -> None:
    """Print a line without breaking any progress bar on screen."""
    tqdm.write(message)
