"""Run logs: a CSV of every logged scalar and TensorBoard event files (rank 0 only)."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path


class RunLogger:
    """Appends rows {step, phase, key: value} to `metrics.csv`; mirrors them to TensorBoard.

    On resume the CSV is truncated to rows before the resume step, so a resumed run's log equals
    an uninterrupted run's.
    """

    def __init__(self, folder: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        self.path = Path(folder) / "metrics.csv"
        self._rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as handle:
                self._rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        self._write_all()
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=resume_step)
            except ImportError:
                self._writer = None

    def _write_all(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "phase", "key", "value"])
            writer.writeheader()
            writer.writerows(self._rows)

    def log(self, step: int, phase: str, scalars: Mapping[str, float]) -> None:
        """Record scalars of one phase ('train', 'val', 'test', 'dtme') at `step`."""
        rows = [{"step": str(step), "phase": phase, "key": k, "value": repr(float(v))} for k, v in scalars.items()]
        self._rows.extend(rows)
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=["step", "phase", "key", "value"]).writerows(rows)
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"{phase}/{key}", float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
