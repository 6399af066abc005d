"""Atomic writes (tokenmtl.fileio) and the progress-bar wrapper (tokenmtl.progress)."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from tokenmtl.fileio import atomic_open, atomic_write_bytes, atomic_write_npz, atomic_write_text
from tokenmtl.progress import progress_bar


def test_each_writer_round_trips_and_leaves_no_temp_file(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01payload")
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([7], dtype=np.uint16)}
    atomic_write_npz(tmp_path / "n.npz", arrays)
    atomic_write_npz(tmp_path / "c.npz", arrays, compressed=True)
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01payload"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    for name in ("n.npz", "c.npz"):
        with np.load(tmp_path / name) as loaded:
            assert set(loaded.files) == {"x", "y"}
            np.testing.assert_array_equal(loaded["x"], arrays["x"])
            assert loaded["y"].dtype == np.uint16
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.bin", "c.npz", "n.npz", "t.txt"]
    assert stat.S_IMODE((tmp_path / "n.npz").stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path, "w") as handle:
            handle.write("half of the new cont")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_open_refuses_appending_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'a'"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_progress_bar_counts_when_enabled_and_is_inert_when_not():
    assert list(progress_bar(range(4), desc="x", enabled=False)) == [0, 1, 2, 3]
    with progress_bar(total=5, enabled=False) as bar:
        bar.update(2)
        assert bar.disable
    with progress_bar(total=5, enabled=True, unit="img") as bar:
        bar.update(3)
        assert not bar.disable and bar.n == 3 and bar.unit == "img" and bar.leave is False
