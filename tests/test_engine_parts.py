"""Engine pieces: step-indexed sampling, LR schedule, atomic checksummed checkpoints."""

import json

import pytest
import torch

from tokenmtl.engine.checkpoint import (
    CheckpointError,
    latest_good_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from tokenmtl.engine.sampler import SeededDataset, StepBatchSampler
from tokenmtl.engine.schedule import lr_factor


def test_batches_depend_only_on_step_not_on_resume_point():
    full = StepBatchSampler(10, 4, seed=3)
    stream = iter(full)
    first = [next(stream) for _ in range(6)]
    resumed = iter(StepBatchSampler(10, 4, seed=3, start_step=4))
    assert next(resumed) == first[4] and next(resumed) == first[5]


def test_each_epoch_is_a_permutation():
    sampler = StepBatchSampler(12, 4, seed=0)
    epoch = [i for s in range(3) for i, _ in sampler.batch(s)]
    assert sorted(epoch) == list(range(12))
    assert epoch != list(range(12))


def test_ranks_split_the_global_batch_exactly():
    single = StepBatchSampler(50, 8, seed=1)
    r0 = StepBatchSampler(50, 4, seed=1, rank=0, world_size=2)
    r1 = StepBatchSampler(50, 4, seed=1, rank=1, world_size=2)
    for step in range(9):
        assert r0.batch(step) + r1.batch(step) == single.batch(step)


def test_seeded_dataset_makes_augmentation_reproducible():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.rand(3) + i

    data = SeededDataset(Noisy())
    assert torch.equal(data[(2, 99)], data[(2, 99)])
    assert not torch.equal(data[(2, 99)], data[(2, 100)])


def test_poly_schedule_matches_formula():
    factor = lr_factor("poly", 100, power=0.9)
    assert factor(0) == 1.0
    assert factor(50) == pytest.approx(0.5**0.9)
    assert factor(100) == 0.0
    warm = lr_factor("constant", 100, warmup=10)
    assert warm(4) == pytest.approx(0.5)


def test_checkpoints_keep_the_last_k(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, keep=2)
    files = sorted(p.name for p in tmp_path.glob("ckpt-*.pt"))
    assert files == ["ckpt-00000020.pt", "ckpt-00000030.pt"]
    assert [e["step"] for e in read_manifest(tmp_path)] == [20, 30]
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(1000)}}, keep=3)
    path = save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(1000)}}, keep=3)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match="skipping a bad checkpoint"):
        good, state = latest_good_checkpoint(tmp_path)
    assert good.name == "ckpt-00000001.pt" and torch.equal(state["model"]["w"], torch.ones(1000))


def test_flipped_byte_is_detected(tmp_path):
    path = save_checkpoint(tmp_path, 5, {"model": {"w": torch.arange(100.0)}})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(CheckpointError, match="not a tokenmtl checkpoint"):
        load_checkpoint(path)
    assert latest_good_checkpoint(tmp_path / "empty") is None
    json.dumps(read_manifest(tmp_path))


def test_pickled_objects_are_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)
