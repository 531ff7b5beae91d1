"""The command line: every error is one readable line and exit status 2; --debug shows the traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from spcl.cli import main


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_architecture_is_named_before_any_data_is_read(capsys, tmp_path: Path) -> None:
    line = _error(capsys, ["train", "usl", "--target", "synth-target", "--data-root", str(tmp_path / "none"),
                           "--arch", "resnet5O", "--output", str(tmp_path / "run"), "--device", "cpu"])
    assert line.startswith("spcl train: error: unknown architecture 'resnet5O'; available: resnet10")
    assert not (tmp_path / "none").exists()


def test_yaml_errors_give_the_line(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: usl\noptim:\n  lr: [0.1\n")
    assert "not valid YAML at line 4" in _error(capsys, ["train", "usl", "--config", str(bad)])


def test_out_of_range_settings_are_named(capsys) -> None:
    assert "optim.gamma must be in (0, 1], got 2.0" in _error(capsys, ["train", "usl", "--optim.gamma", "2"])
    assert "data.erasing_p must be a probability" in _error(capsys, ["train", "usl", "--data.erasing_p", "1.5"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(capsys, tmp_path: Path) -> None:
    line = _error(capsys, ["train", "usl", "--device", "cuda", "--output", str(tmp_path / "run")])
    assert "sees no CUDA device; use --device cpu" in line


def test_an_option_the_dataset_does_not_take(capsys, tmp_path: Path) -> None:
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / "mine" / split).mkdir(parents=True)
    line = _error(capsys, ["data-info", str(tmp_path / "mine"), "--test-size", "800"])
    assert "option test_size does not apply to the dataset market-style" in line


def test_foreign_and_damaged_checkpoints(capsys, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, pickled)  # as other training scripts save
    line = _error(capsys, ["eval", "--checkpoint", str(pickled), "--dataset", "market1501", "--device", "cpu"])
    assert "holds pickled Python objects" in line and "weights_only=False" not in line
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    assert "truncated, damaged or not a checkpoint" in _error(
        capsys, ["eval", "--checkpoint", str(garbage), "--dataset", "market1501", "--device", "cpu"])
    assert "no checkpoint at" in _error(
        capsys, ["eval", "--checkpoint", str(tmp_path / "missing.pth"), "--dataset", "market1501", "--device", "cpu"])


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="optim.gamma"):
        main(["train", "usl", "--optim.gamma", "2", "--debug"])
    with pytest.raises(ValueError, match="optim.gamma"):
        main(["--debug", "train", "usl", "--optim.gamma", "2"])
