"""Atomic, checksummed checkpoints: write to a temp file, fsync, rename, then record the SHA-256
in a manifest (also replaced atomically). A truncated or corrupted file is detected on load, and
the last K good checkpoints are kept so a bad one never costs the run.

Multi-process runs need no shared disk to resume: `load_resume_state` reads on rank 0 only and
broadcasts the state (or the reason it could not) to the other ranks."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tokenmtl.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from tokenmtl.engine.distributed import DistContext

MANIFEST = "checkpoints.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the run."""


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The recorded checkpoints of a run folder, oldest first ([] when there are none)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text())["checkpoints"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint manifest {str(path)!r} is unreadable: {err}") from None


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` as `ckpt-<step>.pt` atomically, record its checksum, keep the newest `keep`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = folder / f"ckpt-{step:08d}.pt"
    atomic_write_bytes(path, data)
    entries = [e for e in read_manifest(folder) if e["file"] != path.name]
    entries.append({"file": path.name, "step": step, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    entries.sort(key=lambda e: e["step"])
    stale, entries = entries[:-keep], entries[-keep:]
    atomic_write_bytes(folder / MANIFEST, json.dumps({"checkpoints": entries}, indent=1).encode())
    for entry in stale:
        (folder / entry["file"]).unlink(missing_ok=True)
    return path


def _verify(path: Path, entry: dict[str, Any] | None) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from None
    if entry is not None and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or truncated: its SHA-256 does not match the "
            f"manifest ({len(data)} bytes on disk, {entry.get('bytes')} recorded)"
        )
    return data


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file, verified against its run folder's manifest when it has one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    entry = next((e for e in read_manifest(path.parent) if e["file"] == path.name), None)
    data = _verify(path, entry)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's weights_only refusal: a long multi-line text
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be loaded: not a torch file, or one holding "
            "pickled objects other than tensors and plain containers"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded: {type(err).__name__}: {first}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{str(path)!r} is not a tokenmtl checkpoint (no 'model' entry)")
    return state


def latest_good_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run folder that verifies; corrupted ones are reported and skipped."""
    folder = Path(folder)
    problems = []
    for entry in reversed(read_manifest(folder)):
        path = folder / entry["file"]
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        for problem in problems:
            warnings.warn(f"skipping a bad checkpoint: {problem}", stacklevel=2)
        return path, state
    if problems:
        raise CheckpointError("no good checkpoint to resume from:\n  " + "\n  ".join(problems))
    return None


def load_resume_state(folder: str | Path, dist: DistContext) -> tuple[Path, dict[str, Any]] | None:
    """`latest_good_checkpoint(folder)` as rank 0 sees it, on every rank.

    Only rank 0 reads (the other ranks' `folder` may be empty or absent: no shared disk); the
    state travels with `torch.distributed.broadcast_object_list`. When rank 0 cannot resume (no
    good checkpoint, unreadable manifest, any error), every rank raises the same CheckpointError
    instead of waiting for a state that never comes. None on every rank when there is nothing to
    resume from.
    """
    if dist.world_size == 1:
        return latest_good_checkpoint(folder)
    import torch.distributed as tdist

    message: tuple[str, Any, Any] | None = None
    if dist.rank == 0:
        try:
            found = latest_good_checkpoint(folder)
            message = ("none", None, None) if found is None else ("ok", str(found[0]), found[1])
        except Exception as err:  # noqa: BLE001 - every rank must learn that rank 0 failed
            text = str(err) if isinstance(err, CheckpointError) else f"{type(err).__name__}: {err}"
            message = ("error", text, None)
    box = [message]
    tdist.broadcast_object_list(box, src=0)
    kind, detail, state = box[0]
    if kind == "error":
        raise CheckpointError(detail)
    if kind == "none":
        return None
    return Path(detail), state
