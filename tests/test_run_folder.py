"""One run per output folder: the lock, stale locks, moving an earlier run aside."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spcl.training import RunFolder, RunFolderError


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    first = RunFolder(tmp_path / "run", log=lambda _: None)
    first.acquire()
    holder = json.loads((tmp_path / "run" / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()} on this machine"):
        RunFolder(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / ".lock").exists()
    second = RunFolder(tmp_path / "run")
    second.acquire()
    second.release()


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then"}))
    said: list[str] = []
    folder = RunFolder(tmp_path, log=said.append)
    folder.acquire()
    assert any(f"stale lock of process {pid}" in line for line in said)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    folder.release()


def test_a_lock_from_another_host_is_not_guessed_at(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "some-other-node", "started": "then"}))
    with pytest.raises(RunFolderError, match="host some-other-node.*delete"):
        RunFolder(tmp_path).acquire()


def test_move_aside_keeps_the_earlier_run_whole(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = RunFolder(run)
    folder.acquire()
    assert folder.move_aside() is None  # nothing there yet
    (run / "last.pth").write_bytes(b"old")
    (run / "eval-epoch1").mkdir()
    (run / "eval-epoch1" / "per_query.csv").write_text("old")
    moved = folder.move_aside()
    assert moved is not None and moved.parent == tmp_path and moved.name.startswith("run.replaced-")
    assert (moved / "last.pth").read_bytes() == b"old" and (moved / "eval-epoch1" / "per_query.csv").exists()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    folder.release()
