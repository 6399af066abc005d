"""Resume without a shared disk: rank 0 reads the newest good checkpoint and broadcasts it.

Two gloo processes whose ranks see different folders: only rank 0's holds the checkpoints (rank
1's holds a decoy checkpoint that must never be read). Every scenario runs in the same pair of
processes, one after the other; each rank writes what it got, and the test compares.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tokenmtl.engine.checkpoint import CheckpointError, load_resume_state, save_checkpoint

WORLD = 2
TIMEOUT_S = 90
SCENARIOS = ("good", "newest_corrupted", "all_corrupted", "empty")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _state(step: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(4, 3, generator=gen)}, "optimizer": {"lr": 0.1 * step}, "step": step}


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _folders(root: Path) -> None:
    """rank0/<scenario>: the checkpoints; rank1/<scenario>: a decoy (step 99) or nothing."""
    for scenario in SCENARIOS:
        own, decoy = root / "rank0" / scenario, root / "rank1" / scenario
        if scenario != "empty":
            save_checkpoint(own, 2, _state(2))
            newest = save_checkpoint(own, 4, _state(4))
            if scenario == "newest_corrupted":
                _corrupt(newest)
            if scenario == "all_corrupted":
                _corrupt(newest)
                _corrupt(own / "ckpt-00000002.pt")
        save_checkpoint(decoy, 99, _state(99))


def _worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    from tokenmtl.engine.distributed import DistContext

    dist = DistContext.from_env()
    outcome: dict[str, Any] = {}
    try:
        for scenario in SCENARIOS:
            try:
                found = load_resume_state(Path(root) / f"rank{rank}" / scenario, dist)
            except CheckpointError as err:
                outcome[scenario] = ("error", str(err))
                continue
            outcome[scenario] = ("none",) if found is None else ("ok", found[0].name, found[1])
        torch.save(outcome, Path(root) / f"outcome-rank{rank}.pt")
    finally:
        dist.close()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("resume-broadcast")
    _folders(root)
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=_worker, args=(r, port, str(root)), daemon=True) for r in range(WORLD)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + TIMEOUT_S
    for proc in procs:
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
    hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert not hung, f"ranks {hung} hung"
    assert [proc.exitcode for proc in procs] == [0] * WORLD
    return [torch.load(root / f"outcome-rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    assert torch.equal(a["model"]["w"], b["model"]["w"])
    assert a["optimizer"] == b["optimizer"] and a["step"] == b["step"]


def test_every_rank_gets_rank_0s_newest_checkpoint(outcomes):
    for outcome in outcomes:
        kind, name, state = outcome["good"]
        assert (kind, name) == ("ok", "ckpt-00000004.pt")
        _assert_same_state(state, _state(4))  # rank 1 never read its own decoy (step 99)


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one_on_every_rank(outcomes):
    for outcome in outcomes:
        kind, name, state = outcome["newest_corrupted"]
        assert (kind, name) == ("ok", "ckpt-00000002.pt")
        _assert_same_state(state, _state(2))


def test_no_readable_checkpoint_on_rank_0_stops_every_rank_with_the_same_error(outcomes):
    errors = [outcome["all_corrupted"] for outcome in outcomes]
    assert errors[0][0] == "error" and errors[0] == errors[1]
    assert "no good checkpoint to resume from" in errors[0][1] and "corrupted or truncated" in errors[0][1]


def test_nothing_to_resume_from_on_rank_0_is_none_on_every_rank(outcomes):
    assert [outcome["empty"] for outcome in outcomes] == [("none",), ("none",)]


def test_one_process_reads_its_own_folder(tmp_path):
    from tokenmtl.engine.distributed import DistContext

    save_checkpoint(tmp_path, 3, _state(3))
    path, state = load_resume_state(tmp_path, DistContext.single())
    assert path.name == "ckpt-00000003.pt"
    _assert_same_state(state, _state(3))
    assert load_resume_state(tmp_path / "missing", DistContext.single()) is None


# ------------------------------------------------------------------ end to end, with the trainer
def _trainer_resumes_through_broadcast() -> bool:
    import tokenmtl.engine.trainer as trainer_module

    return hasattr(trainer_module, "load_resume_state")


E2E_SETS = [
    "benchmark.image_size=32",
    "benchmark.train_size=16",
    "benchmark.val_size=4",
    "benchmark.test_size=4",
    "model.img_size=32",
    "model.patch_size=8",
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "train.iterations=4",
    "train.eval_every=100",
    "train.checkpoint_every=2",
    "train.batch_size=2",
    "eval.batch_size=4",
    "log.tensorboard=false",
    "log.progress=false",
    "method.name=pcgrad",
]


def _e2e_worker(rank: int, port: int, cache: str, root: str) -> None:
    """Rank r trains into root/<run>/rank<r>: an uninterrupted run, then one stopped after step 2
    and resumed; rank 1's folder never holds a checkpoint (only rank 0 writes)."""
    torch.set_num_threads(1)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    from tokenmtl.config import load_config
    from tokenmtl.engine.distributed import DistContext
    from tokenmtl.engine.trainer import Trainer

    cfg = load_config("demo", overrides=E2E_SETS + [f"benchmark.cache_dir={cache}"])
    dist = DistContext.from_env()
    try:
        full = Trainer(cfg, Path(root) / "full" / f"rank{rank}", dist=dist)
        full.run()
        original = Trainer.train_step

        def stop_at_2(self, batch, step):
            if step == 2:
                raise KeyboardInterrupt
            return original(self, batch, step)

        Trainer.train_step = stop_at_2
        try:
            Trainer(cfg, Path(root) / "cut" / f"rank{rank}", dist=dist).run()
        except KeyboardInterrupt:
            pass
        Trainer.train_step = original
        assert not (Path(root) / "cut" / "rank1" / "checkpoints").exists() or rank == 0
        resumed = Trainer(cfg, Path(root) / "cut" / f"rank{rank}", resume=True, dist=dist)
        resumed.run()
        torch.save(
            {"full": full.model.state_dict(), "resumed": resumed.model.state_dict()}, Path(root) / f"e2e-rank{rank}.pt"
        )
    finally:
        dist.close()


@pytest.mark.skipif(
    not _trainer_resumes_through_broadcast(),
    reason="needs trainer wiring: Trainer._restore must call load_resume_state",
)
def test_two_ranks_without_a_shared_disk_resume_to_the_uninterrupted_run(tmp_path, scenes_cache):
    from tokenmtl.config import load_config
    from tokenmtl.data.base import create_benchmark

    cfg = load_config("demo", overrides=E2E_SETS + [f"benchmark.cache_dir={scenes_cache}"])
    for split in ("train", "val", "test"):  # generate the cache before the ranks start
        create_benchmark(cfg["benchmark"]).dataset(split, train=False)
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(target=_e2e_worker, args=(r, port, scenes_cache, str(tmp_path)), daemon=True)
        for r in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 240
    for proc in procs:
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
    hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert not hung and [proc.exitcode for proc in procs] == [0] * WORLD
    for rank in range(WORLD):
        states = torch.load(tmp_path / f"e2e-rank{rank}.pt", weights_only=False)
        for key, value in states["full"].items():
            assert torch.equal(states["resumed"][key], value), f"rank {rank} {key}"
