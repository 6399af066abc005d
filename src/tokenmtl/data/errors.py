"""Bad data on disk: the `DataError` users see, readers that raise it, skip-bad accounting.

A loader never fails with a bare numpy/PIL/scipy error: every read goes through a reader here that
names the file and the task. With `skip_bad=True` a dataset marks a failing sample in a
`BadSampleLog` (shared across DataLoader workers) and serves the next good one instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class DataError(RuntimeError):
    """A dataset file is missing, unreadable or malformed; names the file and the task."""

    def __init__(self, message: str, path: str | Path | None = None, task: str | None = None):
        where = []
        if task is not None:
            where.append(f"task {task!r}")
        if path is not None:
            where.append(f"file {str(path)!r}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.path = None if path is None else str(path)
        self.task = task


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    """`path` if it is a directory, else a DataError saying what was expected there."""
    if not path.is_dir():
        raise DataError(f"{what} folder not found{'; ' + hint if hint else ''}", path=path)
    return path


def read_image(path: Path, task: str = "image") -> np.ndarray:
    """An RGB image as float32 (H, W, 3) in 0..255."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.float32).copy()
    except FileNotFoundError:
        raise DataError("file not found", path=path, task=task) from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DataError(f"unreadable image ({type(exc).__name__}: {exc})", path=path, task=task) from None


def read_png(path: Path, task: str) -> np.ndarray:
    """A PNG's raw values (8- or 16-bit, grey or colour) as float32 (H, W) or (H, W, C)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode == "P":
                arr = np.asarray(img)  # palette indices are the labels (VOC style)
            elif img.mode in ("RGBA", "LA"):
                arr = np.asarray(img.convert(img.mode[:-1]))
            else:
                arr = np.asarray(img)
            return arr.astype(np.float32)
    except FileNotFoundError:
        raise DataError("file not found", path=path, task=task) from None
    except Exception as exc:
        raise DataError(f"unreadable PNG ({type(exc).__name__}: {exc})", path=path, task=task) from None


def read_npy(path: Path, task: str) -> np.ndarray:
    """A `.npy` array as float32, refusing pickled objects."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except FileNotFoundError:
        raise DataError("file not found", path=path, task=task) from None
    except Exception as exc:
        raise DataError(f"unreadable .npy ({type(exc).__name__}: {exc})", path=path, task=task) from None


def read_mat(path: Path, task: str, key: str) -> Any:
    """Variable `key` of a MATLAB `.mat` file (scipy.io.loadmat)."""
    from scipy.io import loadmat

    try:
        content = loadmat(path)
    except FileNotFoundError:
        raise DataError("file not found", path=path, task=task) from None
    except Exception as exc:
        raise DataError(f"unreadable .mat ({type(exc).__name__}: {exc})", path=path, task=task) from None
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(f".mat file has no variable {key!r} (found: {found})", path=path, task=task)
    return content[key]


def check_shape(array: np.ndarray, hw: tuple[int, int], path: Path, task: str) -> None:
    """DataError unless the array's first two dims equal the image's (H, W)."""
    if tuple(array.shape[:2]) != tuple(hw):
        raise DataError(f"label has shape {tuple(array.shape)}, the image is {tuple(hw)}", path=path, task=task)


def check_values(array: np.ndarray, allowed_max: float, path: Path, task: str, extra: Sequence[float] = ()) -> None:
    """DataError unless all values are integers in 0..allowed_max (or one of `extra`)."""
    bad = (array < 0) | (array > allowed_max) | (array != np.round(array))
    for value in extra:
        bad &= array != value
    if bad.any():
        seen = np.unique(array[bad])[:5].tolist()
        allowed = f"0..{allowed_max:g}" + "".join(f" or {v:g}" for v in extra)
        raise DataError(f"label values {seen} out of range (allowed: {allowed})", path=path, task=task)


class BadSampleLog:
    """Which samples of one dataset were found bad; the flags live in shared memory so marks made
    in DataLoader worker processes are visible to the trainer in the main process."""

    def __init__(self, dataset: str, ids: Sequence[str]):
        self.dataset = dataset
        self.ids = list(ids)
        self._flags = torch.zeros(len(self.ids), dtype=torch.uint8).share_memory_()
        self._messages: dict[int, str] = {}  # only the marks made in this process

    def mark(self, index: int, error: Exception) -> None:
        """Record sample `index` as bad because of `error`."""
        self._flags[index] = 1
        self._messages[index] = str(error)

    def is_bad(self, index: int) -> bool:
        """Whether sample `index` was marked bad (by any process)."""
        return bool(self._flags[index])

    @property
    def count(self) -> int:
        """How many samples were found bad so far (in any worker)."""
        return int(self._flags.sum())

    def bad_ids(self) -> list[str]:
        """Ids of the samples marked bad, in dataset order."""
        return [self.ids[i] for i in torch.nonzero(self._flags).flatten().tolist()]

    def summary(self, limit: int = 5) -> str:
        """One line for the end of training, plus the first reasons known in this process."""
        if self.count == 0:
            return f"{self.dataset}: no bad samples"
        ids = self.bad_ids()
        shown = ", ".join(ids[:limit]) + (", ..." if len(ids) > limit else "")
        lines = [f"{self.dataset}: skipped {len(ids)} of {len(self.ids)} samples as bad: {shown}"]
        lines += [f"  {msg}" for msg in list(self._messages.values())[:limit]]
        return "\n".join(lines)


class SampleDataset(Dataset):
    """Samples by id: `load(index)` reads a raw sample, `transform` makes the model's dict.

    With `skip_bad` a sample whose load raises DataError is marked in `bad_samples` and the next
    good one is served instead; without it the DataError propagates. `known_bad` are indices found
    bad before loading (e.g. files missing at construction).
    """

    def __init__(
        self,
        name: str,
        ids: Sequence[str],
        load: Callable[[int], dict],
        transform: Callable[[dict], dict],
        skip_bad: bool = False,
        known_bad: dict[int, Exception] | None = None,
    ):
        self.name, self.ids, self._load, self.transform = name, list(ids), load, transform
        self.skip_bad = skip_bad
        self.bad_samples = BadSampleLog(name, self.ids)
        for index, error in (known_bad or {}).items():
            self.bad_samples.mark(index, error)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad:
            return self.transform(self._load(index))
        n = len(self.ids)
        for step in range(n):
            i = (index + step) % n
            if self.bad_samples.is_bad(i):
                continue
            try:
                return self.transform(self._load(i))
            except DataError as exc:
                self.bad_samples.mark(i, exc)
        raise DataError(f"every sample of {self.name} is bad; see bad_samples.summary()")


def resolve_root(root: str | Path | None, folder: str, marker: str, benchmark: str) -> Path:
    """The dataset folder: `root` itself or `root/folder`, whichever contains `marker`.

    Errors say how to point the run at the data (`--data-root` / `benchmark.root`).
    """
    if root is None or str(root) == "":
        raise DataError(
            f"{benchmark}: no data folder given; pass --data-root PATH or set "
            f"benchmark.root (the folder that holds {folder}/{marker})"
        )
    root = Path(root).expanduser()
    for candidate in (root, root / folder):
        if (candidate / marker).exists():
            return candidate
    raise DataError(
        f"{benchmark}: data folder not found or incomplete: expected {marker!r} in it "
        f"or in {folder}/ below it; see docs/real_benchmarks.md",
        path=root,
    )


def read_ids(path: Path, what: str) -> list[str]:
    """Sample ids of a split file, one per line (blank lines ignored)."""
    if not path.is_file():
        raise DataError(f"split file for {what} not found", path=path)
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split file for {what} is empty", path=path)
    return ids


def missing_files(paths: Sequence[dict[str, Path]], skip_bad: bool) -> dict[int, Exception]:
    """Indices of samples with a missing file; without skip_bad the first one raises DataError."""
    bad: dict[int, Exception] = {}
    for index, files in enumerate(paths):
        for task, path in files.items():
            if not path.is_file():
                error = DataError("file listed in the split is missing", path=path, task=task)
                if not skip_bad:
                    raise error
                bad[index] = error
                break
    return bad
