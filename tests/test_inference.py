"""Using a trained model: ``spcl eval`` on any dataset, from the checkpoint alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spcl.inference import evaluate_checkpoint
from test_data import _vehicleid_tree
from test_training import _config, _run


def test_eval_on_vehicleid_averages_ten_draws(data_root: Path, tmp_path: Path, capsys) -> None:
    _run(_config(data_root, tmp_path / "v", "usl", **{"optim.epochs": 1, "optim.iters": 1, "eval.every": 0}))
    _vehicleid_tree(tmp_path / "vid")
    result = evaluate_checkpoint(tmp_path / "v" / "last.pth", "vehicleid", str(tmp_path / "vid"), device="cpu", workers=0)
    assert len(result["draw_mAP"]) == 10
    assert result["num_identities"] == 10 and result["num_gallery"] == 10 and result["num_query"] == 30
    assert result["mAP"] == pytest.approx(float(np.mean(result["draw_mAP"])))
    assert "10 draws" in capsys.readouterr().out
    assert (tmp_path / "v" / "eval-vehicleid-800" / "draws.csv").read_text().count("\n") == 11  # header + 10 draws


def test_eval_writes_per_query_results_and_prints_first(data_root: Path, tmp_path: Path, capsys) -> None:
    _run(_config(data_root, tmp_path / "u", "usl", **{"optim.epochs": 1, "optim.iters": 1, "eval.every": 0}))
    result = evaluate_checkpoint(tmp_path / "u" / "last.pth", str(data_root / "tgt"), device="cpu", workers=0,
                                 output=tmp_path / "out", progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("last.pth on tgt: mAP ") and f"{100 * result['mAP']:.1f}%" in lines[0]
    rows = (tmp_path / "out" / "per_query.csv").read_text().splitlines()
    assert rows[0] == "query,pid,camid,ap,first_match_rank" and len(rows) == 1 + len(result["ap"])
    assert float(rows[1].split(",")[3]) == pytest.approx(result["ap"][0], abs=1e-6)
    assert np.isfinite(result["mAP"])
