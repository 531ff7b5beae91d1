"""Run-time helpers: progress output for terminals and log files, named seed streams, devices."""

from __future__ import annotations

import io

import pytest
import torch

from spcl.utils import RngStream, derive_seed, progress, resolve_device
from spcl.utils.progress import Progress, stage


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_no_line_per_iteration() -> None:
    log = io.StringIO()
    bar = progress(range(1000), "epoch 1/3", stream=log)
    for _ in bar:
        bar.set_postfix(loss="1.234")
    assert list(progress(range(5), "x", stream=log)) == list(range(5))
    assert log.getvalue() == ""  # a short phase writes nothing, and never a carriage return


def test_a_long_phase_writes_a_plain_line_per_interval() -> None:
    log = io.StringIO()
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0  # every iteration takes 10 s
        return now[0]

    bar = Progress(range(60), "epoch 2/50", total=None, stream=log, interval=120.0, clock=clock)
    for _ in bar:
        bar.set_postfix(loss="0.500")
    lines = log.getvalue().splitlines()
    assert len(lines) == 5  # 600 s in 120 s steps, the last one at the end of the phase
    assert lines[0] == "epoch 2/50: 12/60 (20%), 2m00s elapsed, about 8m00s left, loss=0.500"
    assert lines[-1].startswith("epoch 2/50: 60/60 (100%), 10m00s elapsed")
    assert "\r" not in log.getvalue()


def test_a_terminal_gets_a_bar_and_disabled_gets_nothing() -> None:
    tty = _Terminal()
    assert list(progress(range(3), "features", stream=tty)) == [0, 1, 2]
    assert "features" in tty.getvalue()
    quiet = _Terminal()
    silent = progress(range(3), "features", enabled=False, stream=quiet)
    silent.set_postfix(loss=1)
    assert list(silent) == [0, 1, 2] and quiet.getvalue() == ""


def test_seed_streams_are_distinct_and_stable() -> None:
    # the values are part of every run's results: they must not change between versions
    assert derive_seed(1, RngStream.MODEL_INIT) == derive_seed(1, -1)
    seeds = {derive_seed(1, s) for s in RngStream}
    assert len(seeds) == len(RngStream)
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, RngStream.SOURCE_SAMPLER, 3) != derive_seed(1, RngStream.SOURCE_SAMPLER, 4)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_memory_errors_name_the_setting_that_reduces_them(monkeypatch) -> None:
    import numpy as np

    import spcl.utils.memory as memory
    from spcl.evaluation import re_rank
    from spcl.pseudo_labels import generate
    from spcl.utils import OutOfMemory, check_memory, memory_advice

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**20)  # 1 MiB left
    with pytest.raises(OutOfMemory, match=r"re-ranking 300 queries x 600 gallery images needs about .* --rerank"):
        re_rank(np.ones((300, 8), np.float32), np.ones((600, 8), np.float32))
    with pytest.raises(OutOfMemory, match="neighbour search of 5000 features .* --pseudo.neighbors approximate"):
        generate(np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32))
    check_memory(1000, "cpu", "a small step", "nothing")  # fits: no error
    with pytest.raises(OutOfMemory, match=r"extracting ran out of memory \(no room\): lower eval.batch_size"):
        with memory_advice("extracting", "lower eval.batch_size"):
            raise MemoryError("no room")


def test_workers_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from spcl.utils import resolve_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(32)), raising=False)
    assert resolve_workers(3, torch.device("cuda")) == 3  # an explicit number is kept
    assert resolve_workers(-1, torch.device("cuda")) == 16  # capped
    assert resolve_workers(-1, torch.device("cuda"), processes=8) == 3  # 32 cores / 8 ranks, one for each rank
    assert resolve_workers(-1, torch.device("cpu")) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0}, raising=False)
    assert resolve_workers(-1, torch.device("cpu")) == 0 and resolve_workers(-1, torch.device("cuda")) == 1


def _collectives(rank: int, init_file: str, world: int, out: str) -> None:
    import torch.distributed as dist

    from spcl.utils import Distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        d = Distributed.current()
        local = torch.full((rank, 2), float(rank)) if rank else torch.empty(0, 0)  # 0, 1, 2 rows
        rows = d.gather_rows(local)
        values = torch.tensor([float(rank), 10.0 * rank])
        d.average_([values])
        results = {
            "rows": rows, "average": values, "max": d.max_int(rank * 7), "shard": d.shard(10),
            "broadcast": d.broadcast_object({"from": rank}), "mean": d.mean(torch.tensor([float(rank)])),
            "main": d.run_on_main(lambda: ["computed", d.rank], "testing"),
        }
        try:
            d.run_on_main(lambda: 1 / 0, "dividing")
        except (RuntimeError, ZeroDivisionError) as exc:
            results["error"] = f"{type(exc).__name__}: {exc}"
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_collectives_of_three_processes(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_collectives, args=(str(tmp_path / "init"), 3, str(tmp_path)), nprocs=3, start_method="spawn")
    for rank in range(3):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert torch.equal(r["rows"], torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]))  # rank order, uneven, one empty
        assert torch.allclose(r["average"], torch.tensor([1.0, 10.0]))
        assert r["max"] == 14 and r["broadcast"] == {"from": 0} and r["mean"] == [1.0]
        assert r["shard"] == [slice(0, 3), slice(3, 6), slice(6, 10)][rank]
        assert r["main"] == ["computed", 0]  # rank 0's result everywhere
        expected = "ZeroDivisionError" if rank == 0 else "RuntimeError: rank 0 failed while dividing: ZeroDivisionError"
        assert r["error"].startswith(expected)


def test_one_process_collectives_are_the_identity() -> None:
    from spcl.utils import Distributed

    d = Distributed()
    x = torch.arange(6.0).view(3, 2)
    assert d.gather_rows(x) is x and d.gather_equal(x) == [x] and d.max_int(4) == 4
    assert d.shard(5) == slice(0, 5) and d.run_on_main(lambda: 3, "x") == 3 and d.is_main and not d.enabled


def test_missing_faiss_is_named_with_its_install_and_the_exact_path(monkeypatch) -> None:
    import sys

    from spcl.inference.search import GalleryIndex
    from spcl.neighbors import nearest_neighbors
    from spcl.utils.optional import need_faiss, optional_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    assert optional_faiss() is None
    with pytest.raises(ImportError, match=r"the thing needs faiss \(not installed\): pip install faiss-cpu .*; or do it"):
        need_faiss("the thing", "do it exactly")
    x = torch.randn(20, 8)
    with pytest.raises(ImportError, match=r"knn_backend='faiss' needs faiss \(not installed\): .*knn_backend='torch'"):
        nearest_neighbors(x, 5, backend="faiss")
    with pytest.raises(ImportError, match=r"index 'ivf' needs faiss \(not installed\): .*--index exact"):
        GalleryIndex(x, kind="ivf")
    assert GalleryIndex(x, kind="auto").kind == "exact"


def test_a_single_long_step_leaves_one_line_with_its_duration() -> None:
    now = [0.0]
    log = io.StringIO()
    with stage("Jaccard: k-reciprocal sets", stream=log, clock=lambda: now[0]):
        now[0] = 3.0
    assert log.getvalue() == ""  # short: nothing in a log file
    with stage("Jaccard: k-reciprocal sets", stream=log, clock=lambda: now[0]):
        now[0] += 75.0
    assert log.getvalue() == "Jaccard: k-reciprocal sets: 1m15s\n"
    tty = _Terminal()
    with stage("DBSCAN eps 0.6", stream=tty, clock=lambda: now[0]):
        assert tty.getvalue() == "DBSCAN eps 0.6 ...\r"  # shown while it runs
    assert tty.getvalue().endswith("\x1b[2K")
    quiet = io.StringIO()
    with pytest.raises(KeyError), stage("x", enabled=False, stream=quiet, clock=lambda: now[0]):
        raise KeyError("errors pass through")
    assert quiet.getvalue() == ""
