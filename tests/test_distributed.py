"""Multi-process training equals single-process training with the same global batch (issue 6).

Two gloo processes on CPU, each with a per-process batch of 2, are compared with one process
with a batch of 4, for a loss method (EW), gradient methods (PCGrad, DB-MTL), FAMO (a loss
method that re-evaluates the batch) and a DTME expansion after one step. Two spawned processes
run all cases in sequence; the single-process references run in the test process meanwhile.

Tolerance: the two runs do the same arithmetic up to the order of float32 sums (a gradient is
the mean of two half-batch means instead of one batch mean; batch norm statistics are summed
across processes), so parameters agree to rounding, not bit for bit. The cases train with SGD,
where that rounding stays at rounding size: rtol 1e-5, atol 1e-6. Adam divides each gradient
entry by its own magnitude, so an entry that is ~0 by cancellation turns rounding noise into a
step of up to lr: the Adam case (`ew-adam`) allows atol 1e-5, 1% of one step at lr 1e-3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tokenmtl.config import load_config
from tokenmtl.engine.checkpoint import read_manifest
from tokenmtl.engine.distributed import GlobalBatchShards
from tokenmtl.engine.trainer import Trainer, TrainingInterrupted

WORLD = 2
PER_RANK_BATCH = 2
RTOL, ATOL = 1e-5, 1e-6
ADAM_ATOL = 1e-5
METRIC_RTOL = 1e-4  # metrics are ratios of float sums; they inherit the parameters' rounding

SMALL = [
    "benchmark.image_size=32",
    "benchmark.train_size=24",
    "benchmark.val_size=8",
    "benchmark.test_size=8",
    "model.img_size=32",
    "model.patch_size=8",
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "train.iterations=3",
    "train.eval_every=3",
    "train.checkpoint_every=2",
    "eval.batch_size=4",
    "log.tensorboard=false",
    "log.progress=false",
    "train.optimizer=sgd",
    "train.lr=0.05",
]
CASES: dict[str, list[str]] = {
    "ew": ["method.name=ew"],
    "ew-adam": ["method.name=ew", "train.optimizer=adam", "train.lr=1e-3"],
    "pcgrad": ["method.name=pcgrad"],  # task order from the global RNG, seeded alike on every rank
    "dbmtl": ["method.name=dbmtl"],
    "famo": ["method.name=famo"],
    # expansion at round(0.34 * 3) = step 1, then 3 more steps; the analysis sees 2 global batches
    "dtme": ["method.name=ew", "dtme.enabled=true", "dtme.expand_at=0.34", "dtme.num_batches=2", "dtme.num_tokens=2"],
}


def _config(case: str, cache: str, batch_size: int) -> dict[str, Any]:
    return load_config(
        "demo", overrides=SMALL + CASES[case] + [f"benchmark.cache_dir={cache}", f"train.batch_size={batch_size}"]
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _outcome(trainer: Trainer, results: dict[str, Any]) -> dict[str, Any]:
    """What the comparison needs from a finished run (state dicts on CPU)."""
    balancer = trainer.balancer.state_dict() if hasattr(trainer.balancer, "state_dict") else {}
    return {
        "model": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
        "balancer": balancer,
        "plan": trainer.plan.to_dict() if trainer.plan is not None else None,
        "results": results,
    }


def _worker(rank: int, port: int, cache: str, root: str) -> None:
    """One process of the 2-process run: joins the gloo group through torchrun's environment
    variables and trains every case; rank r trains into its own folder `rank<r>/<case>`, so a
    file written by a rank other than 0 is seen."""
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
    try:
        assert (dist.rank, dist.world_size) == (rank, WORLD)
        for case in CASES:
            trainer = Trainer(_config(case, cache, PER_RANK_BATCH), Path(root) / f"rank{rank}" / case, dist=dist)
            results = trainer.run()
            torch.save(_outcome(trainer, results), Path(root) / "outcomes" / f"{case}-rank{rank}.pt")
    finally:
        dist.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, scenes_cache) -> dict[str, Any]:
    """Every case trained by 2 processes (spawned) and by 1 process (here, meanwhile)."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "outcomes").mkdir()
    # the scenes cache is written once before the processes start, so none of them generates it
    for split in ("train", "val", "test"):
        from tokenmtl.data.base import create_benchmark

        create_benchmark(_config("ew", scenes_cache, 4)["benchmark"]).dataset(split, train=False)
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(target=_worker, args=(r, port, scenes_cache, str(root)), daemon=True) for r in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    single = {}
    for case in CASES:
        trainer = Trainer(_config(case, scenes_cache, WORLD * PER_RANK_BATCH), root / "single" / case)
        single[case] = _outcome(trainer, trainer.run())
    deadline = time.monotonic() + 120
    for proc in procs:
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    codes = [proc.exitcode for proc in procs]
    assert codes == [0] * WORLD, f"distributed workers exited with {codes}"
    multi = {
        case: [torch.load(root / "outcomes" / f"{case}-rank{r}.pt", weights_only=False) for r in range(WORLD)]
        for case in CASES
    }
    return {"root": root, "single": single, "multi": multi}


def _assert_state_close(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str, atol: float = ATOL
) -> None:
    assert actual.keys() == expected.keys(), what
    for key, value in expected.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(actual[key], value, rtol=RTOL, atol=atol, msg=lambda m: f"{what} {key}: {m}")
        else:
            assert torch.equal(actual[key], value), f"{what} {key}"


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_reach_the_parameters_of_one_process_with_the_same_global_batch(runs, case):
    atol = ADAM_ATOL if "adam" in case else ATOL
    for rank, outcome in enumerate(runs["multi"][case]):
        _assert_state_close(outcome["model"], runs["single"][case]["model"], f"{case} rank {rank}", atol)


@pytest.mark.parametrize("case", ["dbmtl", "famo"])
def test_balancer_state_is_the_same_on_every_rank_and_in_one_process(runs, case):
    """DB-MTL's EMA gradient buffers, FAMO's task logits and their Adam moments.

    FAMO's logit gradient is a difference of log losses before and after a step (a small
    difference of close numbers), which its own Adam normalises: rounding shows at ~1e-5.
    """
    expected = runs["single"][case]["balancer"]
    for outcome in runs["multi"][case]:
        assert outcome["balancer"].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(outcome["balancer"][key], value, rtol=1e-4, atol=1e-5)


def test_dtme_plan_is_identical_on_every_rank(runs):
    plans = [outcome["plan"] for outcome in runs["multi"]["dtme"]]
    assert plans[0] is not None and (plans[0]["tm"] or plans[0]["te"])
    assert all(plan == plans[0] for plan in plans)
    saved = json.loads((runs["root"] / "rank0" / "dtme" / "plan.json").read_text())
    assert saved == plans[0]


def test_dtme_plan_of_two_processes_equals_one_process(runs):
    assert runs["multi"]["dtme"][0]["plan"] == runs["single"]["dtme"]["plan"]


def _read_report(path: Path) -> dict[str, Any]:
    """conflicts.json as a dict (decoding it a second time while the trainer double-encodes it)."""
    data = json.loads(path.read_text())
    return json.loads(data) if isinstance(data, str) else data


def test_dtme_conflict_report_all_reduced_equals_one_process(runs):
    """Covariance sums and conflict counts are summed over ranks: the report is the global one."""
    single = _read_report(runs["root"] / "single" / "dtme" / "conflicts.json")
    multi = _read_report(runs["root"] / "rank0" / "dtme" / "conflicts.json")
    assert multi["num_tokens"] == single["num_tokens"]
    for got, want in zip(multi["layers"], single["layers"], strict=True):
        assert got["k"] == want["k"] and got["pairs_counted"] == want["pairs_counted"]
        for key in ("range_conflict_rate", "null_conflict_rate", "range_mean_cosine", "null_mean_cosine"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("case", list(CASES))
def test_metrics_are_all_reduced_sums_equal_to_one_process(runs, case):
    single = runs["single"][case]["results"]["tasks"]
    written = json.loads((runs["root"] / "rank0" / case / "results.json").read_text())["tasks"]
    for rank, outcome in enumerate(runs["multi"][case]):
        for tasks in (outcome["results"]["tasks"], written):
            assert tasks.keys() == single.keys()
            for task, metrics in single.items():
                for name, value in metrics.items():
                    assert tasks[task][name] == pytest.approx(value, rel=METRIC_RTOL, abs=1e-4), (
                        f"{case} rank {rank} {task}/{name}"
                    )


def test_conflicts_json_is_a_json_object(runs):
    assert isinstance(json.loads((runs["root"] / "rank0" / "dtme" / "conflicts.json").read_text()), dict)


def test_only_rank_0_writes_files(runs):
    rank1 = runs["root"] / "rank1"
    written = sorted(str(p.relative_to(rank1)) for p in rank1.rglob("*")) if rank1.exists() else []
    assert written == []
    for case in CASES:
        folder = runs["root"] / "rank0" / case
        assert (folder / "results.json").is_file() and (folder / "checkpoints" / "checkpoints.json").is_file()
    assert (runs["root"] / "rank0" / "dtme" / "plan.json").is_file()


def test_torchrun_cli_trains_two_processes_and_writes_one_results_file(tmp_path, scenes_cache):
    """The launcher path end to end: `torchrun --nproc_per_node 2 -m tokenmtl train`."""
    sets = SMALL + ["train.iterations=2", f"benchmark.cache_dir={scenes_cache}", f"train.batch_size={PER_RANK_BATCH}"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "tokenmtl",
        "train",
        "demo",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.count("results (test split)") == 1  # rank 0 prints, rank 1 stays silent
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    single = Trainer(
        load_config("demo", overrides=sets[:-1] + [f"train.batch_size={WORLD * PER_RANK_BATCH}"]), tmp_path / "single"
    ).run()
    for task, metrics in single["tasks"].items():
        for name, value in metrics.items():
            assert results["tasks"][task][name] == pytest.approx(value, rel=METRIC_RTOL, abs=1e-4)


@pytest.mark.parametrize("world, batch, size", [(1, 4, 10), (2, 2, 10), (2, 3, 16), (3, 2, 7)])
def test_global_batch_shards_of_all_ranks_are_the_batches_of_one_process(world, batch, size):
    single = GlobalBatchShards(size, batch * world, seed=5)
    ranks = [GlobalBatchShards(size, batch, seed=5, rank=r, world_size=world) for r in range(world)]
    for _ in range(2):  # every pass draws the next permutation, on every rank alike
        expected = list(single)
        shares = [list(s) for s in ranks]
        assert [len(s) for s in shares] == [len(s) for s in ranks]
        merged = [sum((shares[r][k] for r in range(world) if k < len(shares[r])), []) for k in range(len(expected))]
        assert merged == expected
    assert sorted(i for b in expected for i in b) == list(range(size))


def _signal_worker(rank: int, port: int, cache: str, root: str) -> None:
    """A slow 2-process run (0.2 s per step); records how it stopped in `root/stop-rank<r>.json`."""
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
    from tokenmtl.engine.callbacks import Callback
    from tokenmtl.engine.distributed import DistContext

    class Slow(Callback):
        def on_step_start(self, step: int, run: Any) -> None:
            time.sleep(0.2)

    cfg = load_config(
        "demo",
        overrides=SMALL
        + [
            f"benchmark.cache_dir={cache}",
            f"train.batch_size={PER_RANK_BATCH}",
            "train.iterations=60",
            "train.eval_every=1000",
        ],
    )
    dist = DistContext.from_env()
    record = Path(root) / f"stop-rank{rank}.json"
    try:
        Trainer(cfg, Path(root) / "run", dist=dist, callbacks=[Slow()]).run()
        record.write_text(json.dumps({"finished": True}))
    except TrainingInterrupted as err:
        record.write_text(json.dumps({"step": int(str(err).split("at iteration ")[1].split(";")[0])}))
    finally:
        dist.close()


def test_sigterm_reaching_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path, scenes_cache):
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(target=_signal_worker, args=(r, port, scenes_cache, str(tmp_path)), daemon=True)
        for r in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    try:
        deadline = time.monotonic() + 60
        while not read_manifest(tmp_path / "run" / "checkpoints"):
            assert time.monotonic() < deadline and all(p.is_alive() for p in procs), "no checkpoint appeared"
            time.sleep(0.02)
        os.kill(procs[1].pid, signal.SIGTERM)  # only rank 1 is told, as with a skewed delivery
        for proc in procs:
            proc.join(timeout=10)
        assert not any(p.is_alive() for p in procs), "the ranks did not stop together (hang)"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    records = [json.loads((tmp_path / f"stop-rank{r}.json").read_text()) for r in range(WORLD)]
    assert records[0] == records[1] and "step" in records[0]
    assert read_manifest(tmp_path / "run" / "checkpoints")[-1]["step"] == records[0]["step"]
