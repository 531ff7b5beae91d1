"""Trainer: short UDA / USL / baseline runs on a tiny synthetic dataset, exact resume, NaN handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spcl.config import load_config
from spcl.data.synthetic import SynthConfig, generate_domain
from spcl.training import Trainer, TrainingDiverged, load_checkpoint
from spcl.training.checkpoint import CheckpointError, config_of, evaluate_checkpoint, load_model

TINY = SynthConfig(
    height=32, width=16, num_cameras=3, source_train_ids=10, source_test_ids=0, target_train_ids=10,
    target_test_ids=4, cameras_per_id=(2, 3), train_images_per_camera=(2, 3), test_images_per_camera=(2, 2),
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tinydata")
    generate_domain(root / "src", "source", seed=0, config=TINY)
    generate_domain(root / "tgt", "target", seed=0, config=TINY)
    return root


def _config(root: Path, out: Path, mode: str = "uda", **extra):
    values = {
        "mode": mode, "data.source": str(root / "src") if mode in ("uda", "source-only") else None,
        "data.target": str(root / "tgt"), "data.height": 32, "data.width": 16, "data.padding": 0, "data.erasing_p": 0.0, "data.flip_p": 0.0, "data.workers": 0,
        "model.arch": "resnet18", "model.pretrained": "none", "model.images_per_bn": 16,
        "optim.batch_size": 16, "optim.iters": 4, "optim.epochs": 2, "optim.lr": 3.5e-4,
        "pseudo.k1": 6, "pseudo.k2": 3, "pseudo.eps": 0.7, "pseudo.min_samples": 2,
        "eval.every": 1, "eval.batch_size": 32, "seed": 3, "device": "cpu", "output": str(out),
    }
    values.update(extra)
    return load_config(overrides=values)


def _run(config) -> Trainer:
    trainer = Trainer(config, log=lambda _: None, progress=False)
    trainer.fit()
    return trainer


def test_uda_runs_logs_and_checkpoints(data_root: Path, tmp_path: Path) -> None:
    trainer = _run(_config(data_root, tmp_path / "uda"))
    out = tmp_path / "uda"
    assert {"config.yaml", "metrics.csv", "last.pth", "best.pth"} <= {p.name for p in out.iterdir()}
    assert (out / "eval-epoch2" / "per_query.csv").is_file()
    assert len(trainer.history) == 2
    for entry in trainer.history:
        assert np.isfinite(entry.loss) and np.isfinite(entry.loss_source) and np.isfinite(entry.loss_target)
        assert 0.0 <= entry.eval["mAP"] <= 1.0
        assert {"pair_precision", "pair_recall", "nmi"} <= set(entry.quality)
    state = load_checkpoint(out / "last.pth")
    assert state["model"]["bn_domains"] == 2 and state["epoch"] == 2
    assert state["config"]["mode"] == "uda"
    assert config_of(state) == trainer.config  # the run's config can be rebuilt from the checkpoint
    assert state["memory"]["features"].shape[0] == 10 + len(trainer.target.train)
    # the memory holds unit vectors after training
    norms = state["memory"]["features"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # the deployed model evaluates from the checkpoint alone
    result = evaluate_checkpoint(out / "last.pth", str(data_root / "tgt"), device="cpu", workers=0)
    assert result["mAP"] == pytest.approx(trainer.history[-1].eval["mAP"], abs=1e-6)


@pytest.mark.parametrize("mode", ["usl", "source-only", "oracle"])
def test_other_modes_run(data_root: Path, tmp_path: Path, mode: str) -> None:
    trainer = _run(_config(data_root, tmp_path / mode, mode, **{"optim.epochs": 1}))
    entry = trainer.history[-1]
    assert np.isfinite(entry.loss)
    assert trainer.memory.num_slots == {"usl": 0, "source-only": 10, "oracle": 0}[mode] + trainer.num_target
    if mode == "oracle":
        assert entry.num_clusters == 10


def test_loss_goes_down(data_root: Path, tmp_path: Path) -> None:
    # with fixed labels (source classes) the loss of successive epochs is comparable
    config = _config(data_root, tmp_path / "down", "source-only", **{"optim.epochs": 3, "optim.iters": 10, "eval.every": 0})
    trainer = _run(config)
    losses = [e.loss for e in trainer.history]
    assert losses[-1] < losses[0]


def test_resume_is_bit_identical(data_root: Path, tmp_path: Path) -> None:
    full = _run(_config(data_root, tmp_path / "full", **{"eval.every": 0}))
    # first epoch only, then a new trainer resumes from last.pth and runs the second
    _run(_config(data_root, tmp_path / "split", **{"eval.every": 0, "optim.epochs": 1}))
    resumed = _run(_config(data_root, tmp_path / "split", **{"eval.every": 0}))
    a = load_checkpoint(tmp_path / "full" / "last.pth")
    b = load_checkpoint(tmp_path / "split" / "last.pth")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert torch.equal(a["memory"]["features"], b["memory"]["features"])
    assert torch.equal(a["memory"]["labels"], b["memory"]["labels"])
    assert a["alpha"] == b["alpha"]
    assert full.history[-1].loss == resumed.history[-1].loss


def test_resume_refuses_other_data(data_root: Path, tmp_path: Path) -> None:
    _run(_config(data_root, tmp_path / "run", **{"optim.epochs": 1, "eval.every": 0}))
    with pytest.raises(CheckpointError, match="is a uda run"):
        _run(_config(data_root, tmp_path / "run", "source-only", **{"eval.every": 0}))
    with pytest.raises(CheckpointError, match="fingerprints differ"):
        _run(_config(data_root, tmp_path / "run", **{"eval.every": 0, "data.source": str(data_root / "tgt")}))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "nan"
    _run(_config(data_root, out, **{"optim.epochs": 1, "eval.every": 0}))
    before = (out / "last.pth").read_bytes()
    trainer = Trainer(_config(data_root, out, **{"eval.every": 0}), log=lambda _: None, progress=False)
    resume = trainer.load_state

    def resume_then_poison(state):
        resume(state)
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("nan"))

    trainer.load_state = resume_then_poison
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.fit()
    assert (out / "last.pth").read_bytes() == before


def test_checkpoint_loads_with_weights_only(data_root: Path, tmp_path: Path) -> None:
    _run(_config(data_root, tmp_path / "w", "usl", **{"optim.epochs": 1, "eval.every": 0}))
    model, state = load_model(tmp_path / "w" / "last.pth")
    assert state["model"]["preprocessing"]["height"] == 32
    assert not model.training
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(tmp_path / "bad.pth")


def test_eval_on_vehicleid_averages_ten_draws(data_root: Path, tmp_path: Path, capsys) -> None:
    from test_data import _vehicleid_tree

    _run(_config(data_root, tmp_path / "v", "usl", **{"optim.epochs": 1, "optim.iters": 1, "eval.every": 0}))
    _vehicleid_tree(tmp_path / "vid")
    result = evaluate_checkpoint(tmp_path / "v" / "last.pth", "vehicleid", str(tmp_path / "vid"), device="cpu", workers=0)
    assert len(result["draw_mAP"]) == 10
    assert result["num_identities"] == 10 and result["num_gallery"] == 10 and result["num_query"] == 30
    assert result["mAP"] == pytest.approx(float(np.mean(result["draw_mAP"])))
    assert "10 draws" in capsys.readouterr().out


@pytest.mark.parametrize(
    "switch", [{"pseudo.discard_outliers": True}, {"pseudo.self_paced": False}, {"model.dsbn": False}]
)
def test_ablation_switches(data_root: Path, tmp_path: Path, switch: dict) -> None:
    trainer = _run(_config(data_root, tmp_path / "abl", **{"optim.epochs": 1, "eval.every": 0, **switch}))
    assert np.isfinite(trainer.history[-1].loss)
    labels = trainer.target_labels
    if "pseudo.discard_outliers" in switch:
        # un-clustered samples leave training: their slots belong to no class
        assert (labels == -1).sum() == trainer.history[-1].num_outliers
        assert (trainer.memory.target_labels.cpu().numpy() == labels).all()
    if "pseudo.self_paced" in switch:
        assert np.isnan(trainer.history[-1].alpha)
    if "model.dsbn" in switch:
        from spcl.models import num_bn_domains

        assert num_bn_domains(trainer.model) == 1
