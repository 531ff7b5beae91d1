"""Runs that lose nothing: a tiny training killed (SIGKILL), pre-empted (SIGTERM) or interrupted
(SIGINT) at chosen points and resumed by re-running its command ends bit for bit where an
uninterrupted run ends; damaged checkpoints fall back to the previous one.

Every run is a subprocess of the real command line; ``SPCL_FAULT`` (``spcl.utils.faults``) stops it
at a named point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spcl.training import load_checkpoint


def _command(data_root: Path, output: Path) -> list[str]:
    return [
        sys.executable, "-m", "spcl", "train", "uda", "--source", str(data_root / "src"), "--target",
        str(data_root / "tgt"), "--output", str(output), "--height", "32", "--width", "16", "--workers", "0",
        "--data.padding", "2", "--data.erasing_p", "0.5", "--arch", "resnet10", "--no-pretrained",
        "--images-per-bn", "8", "--batch-size", "16", "--iters", "4", "--epochs", "2", "--pseudo.k1", "6",
        "--pseudo.k2", "3", "--eps", "0.7", "--pseudo.min_samples", "2", "--eval-every", "1",
        "--eval.batch_size", "32", "--seed", "3", "--device", "cpu", "--checkpoint-every", "2",
    ]


def _run(data_root: Path, output: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SPCL_FAULT", None)
    if fault:
        env["SPCL_FAULT"] = fault
    return subprocess.run(_command(data_root, output), env=env, capture_output=True, text=True, timeout=300)


def _final(output: Path) -> dict:
    return load_checkpoint(output / "last.pth")


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["trainer"]["epoch"] == b["trainer"]["epoch"] == 2
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in ("features", "labels"):
        assert torch.equal(a["memory"][key], b["memory"][key]), key
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in a["trainer"]["history"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in b["trainer"]["history"]]
    assert a["labels"] == b["labels"] and a["trainer"]["best"] == b["trainer"]["best"]


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = _run(data_root, out)
    assert done.returncode == 0, done.stderr
    return _final(out)


@pytest.mark.parametrize(
    "fault",
    [
        "init_memory",  # no checkpoint yet: the re-run starts over
        "labels:2",  # pseudo-labelling of the second epoch
        "step:1:3",  # mid-epoch, after the checkpoint of iteration 2
        "step:2:4",  # the last step, before the epoch's checkpoint
        "eval:1",  # evaluation of epoch 1, after its checkpoint
        "checkpoint:last.pth#3",  # in the middle of the third write of last.pth
        "checkpoint:best.pth",
    ],
)
def test_killed_and_resumed_run_ends_bit_identical(data_root: Path, tmp_path: Path, reference: dict, fault: str) -> None:
    out = tmp_path / "run"
    killed = _run(data_root, out, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(data_root, out)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference, _final(out))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"], "no stale files"
    assert not (out / ".lock").exists()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",".join(r.split(",")[:1]) for r in rows)  # both epochs, none lost


@pytest.mark.parametrize("name,status", [("TERM", 143), ("INT", 130)])
def test_signal_stops_after_the_step_with_a_checkpoint(
    data_root: Path, tmp_path: Path, reference: dict, name: str, status: int
) -> None:
    out = tmp_path / "run"
    stopped = _run(data_root, out, f"{name}@step:1:3")
    assert stopped.returncode == status, stopped.stderr
    assert f"stopped by SIG{name} at epoch 0, iteration 3" in stopped.stdout
    assert "Run the same command again" in stopped.stdout
    state = _final(out)
    assert (state["trainer"]["epoch"], state["trainer"]["iteration"]) == (0, 3)
    resumed = _run(data_root, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "iteration 3" in resumed.stdout
    _assert_same_run(reference, _final(out))


def test_a_second_signal_ends_the_process_at_once(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # the second SIGTERM arrives while the first one's checkpoint is being written
    stopped = _run(data_root, out, "TERM@step:1:3,TERM@checkpoint:last.pth#2")
    assert stopped.returncode == -signal.SIGTERM, stopped.stderr
    state = _final(out)  # the checkpoint of iteration 2 is intact
    assert (state["trainer"]["epoch"], state["trainer"]["iteration"]) == (0, 2)


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    data_root: Path, tmp_path: Path, reference: dict, damage: str
) -> None:
    out = tmp_path / "run"
    assert _run(data_root, out, "step:2:3").returncode == -signal.SIGKILL
    last = out / "last.pth"
    data = bytearray(last.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:  # one byte inside the tensor data: torch itself reads this without complaint
        data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    resumed = _run(data_root, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "last.pth" in resumed.stdout and "trying the previous checkpoint" in resumed.stdout
    assert "resumed from" in resumed.stdout and "last.previous.pth" in resumed.stdout
    _assert_same_run(reference, _final(out))
