"""Trainer: short UDA / USL / baseline runs on a tiny synthetic dataset (``conftest.data_root``),
exact resume, NaN handling, hooks and the checkpoint's parts."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from spcl.config import load_config
from spcl.inference import evaluate_checkpoint
from spcl.training import Hook, MetricsLog, Trainer, TrainingDiverged, load_checkpoint, save_checkpoint
from spcl.training.checkpoint import CheckpointError, config_of, load_model


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
        assert np.isfinite(entry.loss) and set(entry.losses) == {"source", "target"}
        assert entry.loss == pytest.approx(sum(entry.losses.values()), rel=1e-5) and all(map(np.isfinite, entry.losses.values()))
        assert 0.0 <= entry.eval["mAP"] <= 1.0
        assert {"pair_precision", "pair_recall", "nmi"} <= set(entry.quality)
    state = load_checkpoint(out / "last.pth")
    assert state["model"]["bn_domains"] == 2 and state["trainer"]["epoch"] == 2
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
    assert a["labels"]["alpha"] == b["labels"]["alpha"]
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


def test_hooks_extend_and_replace_the_stages(data_root: Path, tmp_path: Path) -> None:
    calls: list[str] = []

    class Recorder(Hook):
        def before_train(self, trainer) -> None:
            calls.append("before_train")

        def before_epoch(self, trainer) -> None:
            calls.append(f"before_epoch {trainer.epoch}")

        def after_step(self, trainer, losses) -> None:
            assert np.isfinite(losses.loss)
            calls.append("step")

        def after_epoch(self, trainer, entry) -> None:
            calls.append(f"after_epoch {entry.epoch}")

        def after_train(self, trainer) -> None:
            calls.append("after_train")

    out = tmp_path / "hooks"
    # no evaluation and no checkpoints: only the recorder and the metrics log
    trainer = Trainer(_config(data_root, out, "usl"), log=lambda _: None, progress=False, hooks=[Recorder(), MetricsLog()])
    trainer.fit()
    assert calls == ["before_train", "before_epoch 0", *["step"] * 4, "after_epoch 1",
                     "before_epoch 1", *["step"] * 4, "after_epoch 2", "after_train"]
    assert not (out / "last.pth").exists() and (out / "metrics.csv").is_file()
    assert all(not entry.eval for entry in trainer.history)


def test_checkpoint_holds_the_checkpointable_parts_once(data_root: Path, tmp_path: Path) -> None:
    trainer = _run(_config(data_root, tmp_path / "parts", **{"optim.epochs": 1, "eval.every": 0}))
    state = load_checkpoint(tmp_path / "parts" / "last.pth")
    assert set(state) == {"format_version", "model", "config", "fingerprints", "checksum"} | set(trainer.checkpointables())
    # the target labels live in the memory's label table only
    assert "target_labels" not in state and (trainer.memory.labels.cpu() == state["memory"]["labels"]).all()


def test_a_format_1_checkpoint_still_resumes(data_root: Path, tmp_path: Path) -> None:
    _run(_config(data_root, tmp_path / "full", **{"eval.every": 0}))
    _run(_config(data_root, tmp_path / "old", **{"eval.every": 0, "optim.epochs": 1}))
    state = load_checkpoint(tmp_path / "old" / "last.pth")
    # format 1: the trainer's values as top-level keys, the labels also kept by the trainer
    old = {k: state[k] for k in ("model", "config", "fingerprints", "state_dict", "optimizer", "scheduler", "memory", "rng")}
    old.update(format_version=1, alpha=state["labels"]["alpha"], target_labels=state["memory"]["labels"][10:] - 10,
               **state["trainer"])
    save_checkpoint(old, tmp_path / "old" / "last.pth")
    _run(_config(data_root, tmp_path / "old", **{"eval.every": 0}))
    a, b = (load_checkpoint(tmp_path / run / "last.pth") for run in ("full", "old"))
    assert b["format_version"] == 2 and b["trainer"]["epoch"] == 2
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert torch.equal(a["memory"]["features"], b["memory"]["features"])


def test_resume_refuses_other_training_settings_and_names_them(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(_config(data_root, out, "usl", **{"optim.epochs": 1, "eval.every": 0}))
    before = (out / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"optim.lr: 0.00035 in the run, 0.001 now; pseudo.eps: 0.7 in the run, 0.6 now"):
        _run(_config(data_root, out, "usl", **{"optim.epochs": 1, "eval.every": 0, "optim.lr": 1e-3, "pseudo.eps": 0.6}))
    assert (out / "config.yaml").read_text() == before, "a refused resume leaves the run's config alone"
    said: list[str] = []
    trainer = Trainer(_config(data_root, out, "usl", **{"optim.epochs": 2, "eval.every": 0}), log=said.append, progress=False)
    trainer.fit()
    assert "resuming with optim.epochs = 2 (the run had 1)" in said
    assert [e.epoch for e in trainer.history] == [1, 2]


def test_no_resume_moves_the_earlier_run_aside(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(_config(data_root, out, "usl", **{"optim.epochs": 1}))
    first = load_checkpoint(out / "last.pth")
    _run(_config(data_root, out, "usl", **{"optim.epochs": 1, "resume": False, "seed": 4}))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1
    assert torch.equal(load_checkpoint(aside[0] / "last.pth")["memory"]["features"], first["memory"]["features"])
    assert (aside[0] / "eval-epoch1" / "per_query.csv").exists() and (out / "eval-epoch1" / "per_query.csv").exists()
    assert load_checkpoint(out / "last.pth")["config"]["seed"] == 4


def test_a_finished_run_run_again_returns_its_history_and_rebuilds_metrics(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _run(_config(data_root, out, "usl"))
    (out / "metrics.csv").write_text("epoch,loss\n1,0\n")  # a row lost to a kill before the write
    again = _run(_config(data_root, out, "usl"))
    assert [e.eval["mAP"] for e in again.history] == [e.eval["mAP"] for e in first.history]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,loss,loss_target,")  # USL: no source term


def test_a_full_disk_names_the_file_and_keeps_the_checkpoint(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    out = tmp_path / "run"
    _run(_config(data_root, out, "usl", **{"optim.epochs": 1, "eval.every": 0}))
    before = (out / "last.pth").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    trainer = Trainer(_config(data_root, out, "usl", **{"optim.epochs": 2, "eval.every": 0}), log=lambda _: None,
                      progress=False)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*last.pth: no space left on device; .* left as it was"):
        trainer.fit()
    assert (out / "last.pth").read_bytes() == before
    assert not [p for p in out.iterdir() if ".pth." in p.name], "no temporary file left"
    assert not (out / ".lock").exists()


def test_checkpoints_are_readable_like_the_folders_other_files(data_root: Path, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        _run(_config(data_root, tmp_path / "run", "usl", **{"optim.epochs": 1, "eval.every": 0}))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run" / "last.pth").stat().st_mode) == 0o644


def test_a_second_trainer_in_the_same_folder_is_refused(data_root: Path, tmp_path: Path) -> None:
    from spcl.training import RunFolder, RunFolderError

    holder = RunFolder(tmp_path / "run")
    holder.acquire()
    with pytest.raises(RunFolderError, match="in use by process"):
        _run(_config(data_root, tmp_path / "run", "usl", **{"optim.epochs": 1}))
    assert not (tmp_path / "run" / "config.yaml").exists()
    holder.release()


def test_an_impossible_evaluation_fails_before_training(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    import spcl.training.trainer as trainer_module

    real_load = trainer_module.load

    def without_gallery(*args, **kwargs):
        data = real_load(*args, **kwargs)
        return dataclasses.replace(data, gallery=[]) if data.name == "tgt" else data

    monkeypatch.setattr(trainer_module, "load", without_gallery)
    trainer = Trainer(_config(data_root, tmp_path / "run", "usl"), log=lambda _: None, progress=False)
    with pytest.raises(ValueError, match="the gallery is empty"):
        trainer.fit()
    assert trainer.epoch == 0 and not (tmp_path / "run" / "last.pth").exists()


def test_bad_images_stop_the_run_naming_the_file_or_are_left_out(data_root: Path, tmp_path: Path) -> None:
    import shutil

    from spcl.data import DatasetError

    target = tmp_path / "tgt"
    shutil.copytree(data_root / "tgt", target)
    broken = sorted((target / "bounding_box_train").glob("*.jpg"))[3]
    broken.write_bytes(b"\xff\xd8 truncated")
    config = _config(data_root, tmp_path / "stop", "usl", **{"data.target": str(target), "optim.epochs": 1})
    with pytest.raises(DatasetError, match=broken.name):
        _run(config)
    said: list[str] = []
    trainer = Trainer(dataclasses.replace(config, output=str(tmp_path / "skip"),
                                          data=dataclasses.replace(config.data, skip_bad_images=True)),
                      log=said.append, progress=False)
    trainer.fit()
    assert str(broken) not in [p for p, _, _ in trainer.target.train]
    assert any("1 files left out" in line and broken.name in line for line in said)
    assert any(line.strip().startswith(str(broken)) for line in said[-3:]), "listed again at the end"


def test_data_that_cannot_teach_much_is_warned_about(data_root: Path, tmp_path: Path) -> None:
    said: list[str] = []
    Trainer(_config(data_root, tmp_path / "w", "usl", **{"optim.batch_size": 64, "model.images_per_bn": 16}),
            log=said.append, progress=False)
    assert any("fewer than a batch (64)" in line for line in said)


def _three_epochs_and_a_resume(data_root: Path, tmp_path: Path, mode: str, extra: dict, buffers: tuple[str, ...]) -> Trainer:
    """Three epochs in one go, and two epochs then a resumed third: the same weights, memory and losses."""
    full = _run(_config(data_root, tmp_path / "full", mode, **{**extra, "optim.epochs": 3}))
    _run(_config(data_root, tmp_path / "split", mode, **{**extra, "optim.epochs": 2}))
    resumed = _run(_config(data_root, tmp_path / "split", mode, **{**extra, "optim.epochs": 3}))
    a, b = load_checkpoint(tmp_path / "full" / "last.pth"), load_checkpoint(tmp_path / "split" / "last.pth")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in buffers:
        assert torch.equal(a["memory"][key], b["memory"][key]), key
    assert [e.loss for e in full.history] == [e.loss for e in resumed.history]
    return full


@pytest.mark.parametrize("mode,update", [("usl", "sample"), ("uda", "hard")])
def test_cluster_memory_trains_one_slot_per_cluster_and_resumes_bit_identical(
    data_root: Path, tmp_path: Path, mode: str, update: str
) -> None:
    extra = {"memory.kind": "cluster", "memory.cluster_update": update, "memory.momentum": 0.1, "eval.every": 0,
             "optim.epochs": 3}
    full = _three_epochs_and_a_resume(data_root, tmp_path, mode, extra, ("features", "assignment"))
    memory, labels = full.memory, full.target_labels
    assert memory.kind == "cluster" and memory.hard == (update == "hard")
    assert all(np.isfinite(e.loss) for e in full.history)
    # one slot per cluster after the source classes; outliers (-1) are out of the slots and the sampler
    clusters = full.history[-1].num_clusters
    assert memory.num_slots == full.num_source_classes + clusters == full.num_source_classes + labels.max() + 1
    assert set(np.unique(labels[labels >= 0])) == set(range(clusters))
    sampled = full._make_loaders()["target"].sampler
    assert all(labels[index] >= 0 for index, _seed in iter(sampled))
    norms = memory.features.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_float16_memory_and_approximate_neighbours_train_and_resume_bit_identical(
    data_root: Path, tmp_path: Path
) -> None:
    """The settings of a 10^6-image target on tiny data: slots in float16, the approximate search."""
    pytest.importorskip("faiss")
    extra = {"memory.precision": "float16", "pseudo.neighbors": "approximate", "pseudo.approx_probe": 2,
             "eval.every": 0}
    full = _three_epochs_and_a_resume(data_root, tmp_path, "uda", extra, ("features", "labels"))
    assert full.memory.features.dtype == torch.float16
    assert all(np.isfinite(e.loss) for e in full.history)
    assert full.history[-1].num_clusters > 0
    # the search measured its recall each epoch: in the history and in metrics.csv
    assert all({"knn_recall", "knn_probe", "knn_exact_fallback"} <= set(e.search) for e in full.history)
    assert all(e.search["knn_recall"] >= 0.99 or e.search["knn_exact_fallback"] == 1.0 for e in full.history)
    rows = (full.output / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "knn_recall" in header and len(rows) == 1 + len(full.history)
    column = header.index("knn_recall")
    assert [float(r.split(",")[column]) for r in rows[1:]] == [e.search["knn_recall"] for e in full.history]


@pytest.mark.parametrize("mode", ["usl", "uda"])
def test_camera_aware_proxies_train_and_resume_bit_identical(data_root: Path, tmp_path: Path, mode: str) -> None:
    extra = {"memory.kind": "cap", "memory.inter_camera_from": 1, "memory.negatives": 5, "eval.every": 0,
             "optim.epochs": 3}
    full = _three_epochs_and_a_resume(data_root, tmp_path, mode, extra,
                                      ("features", "assignment", "proxy_cluster", "proxy_camera"))
    memory = full.memory
    assert memory.kind == "cap" and memory.inter_camera and memory.temp == 0.07  # on from the second epoch
    assert all(np.isfinite(e.loss) for e in full.history)
    expected = ["intra", "inter"] if mode == "usl" else ["source", "intra", "inter"]
    assert all(list(e.losses) == expected for e in full.history)
    assert full.history[0].losses["inter"] == 0.0 and full.history[-1].losses["inter"] > 0
    # every proxy is one (cluster, camera) pair of the epoch's clusters; the sampler draws proxies
    labels, cams = full.target_labels, memory.target_cameras.numpy()
    pairs = {(int(l), int(c)) for l, c in zip(labels, cams) if l >= 0}
    assert memory.num_proxies == len(pairs) and memory.num_clusters == full.history[-1].num_clusters
    proxies = memory.sampling_labels.numpy()
    sampled = full._make_loaders()["target"].sampler
    drawn = [proxies[index] for index, _seed in iter(sampled)]
    assert min(drawn) >= 0 and len(set(drawn)) > memory.num_clusters  # proxies, more of them than clusters


@pytest.mark.parametrize("mode", ["usl", "uda"])
def test_o2cap_trains_its_two_terms_and_resumes_bit_identical(data_root: Path, tmp_path: Path, mode: str) -> None:
    extra = {"memory.kind": "o2cap", "memory.negatives": 5, "eval.every": 0, "optim.epochs": 3,
             "optim.warmup_epochs": 2, "optim.milestones": "2"}
    full = _three_epochs_and_a_resume(data_root, tmp_path, mode, extra,
                                      ("features", "assignment", "proxy_cluster", "proxy_camera"))
    memory = full.memory
    assert memory.kind == "o2cap" and (memory.temp, memory.momentum, memory.positives) == (0.07, 0.2, 3)
    expected = ["offline", "online"] if mode == "usl" else ["source", "offline", "online"]
    for entry in full.history:
        assert list(entry.losses) == expected and all(v > 0 for v in entry.losses.values())
        assert entry.loss == pytest.approx(sum(entry.losses.values()), rel=1e-5)
    # the warm-up, then the step at epoch 2: 0.01, 0.505, then 0.1 of the rate
    assert [e.lr for e in full.history] == pytest.approx([3.5e-6, 3.5e-4 * 0.505, 3.5e-5])
    rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss," + ",".join(f"loss_{name}" for name in expected) + ",")


def test_a_subclass_registered_under_a_new_name_trains_without_other_change(data_root: Path, tmp_path: Path) -> None:
    from spcl.memory import CameraAwareMemory, register_memory

    @register_memory("test-training-cap-variant")
    class Variant(CameraAwareMemory):
        """CAP without its intra-camera term: one method overridden, nothing else written."""

        def _intra(self, logits: torch.Tensor, proxy: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
            return logits.new_zeros(proxy.shape)

    trainer = _run(_config(data_root, tmp_path / "variant", "usl", **{"memory.kind": "test-training-cap-variant",
                                                                       "memory.inter_camera_from": 0,
                                                                       "optim.epochs": 1, "eval.every": 0}))
    assert type(trainer.memory) is Variant and trainer.memory.temp == 0.07  # CAP's constructor and defaults
    losses = trainer.history[0].losses
    assert list(losses) == ["intra", "inter"] and losses["intra"] == 0.0 and losses["inter"] > 0
    assert load_checkpoint(tmp_path / "variant" / "last.pth")["memory"]["_extra_state"]["kind"] == "test-training-cap-variant"


def test_a_run_can_start_from_an_earlier_runs_encoder(data_root: Path, tmp_path: Path) -> None:
    first = _run(_config(data_root, tmp_path / "spcl", "usl", **{"optim.epochs": 1, "eval.every": 0}))
    config = _config(data_root, tmp_path / "cc", "usl", **{"memory.kind": "cluster", "optim.epochs": 1, "eval.every": 0,
                                                            "model.init_from": str(tmp_path / "spcl" / "last.pth")})
    second = Trainer(config, log=lambda _: None, progress=False)
    for name, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name
    assert second.epoch == 0 and second.memory.kind == "cluster"
    other = dataclasses.replace(config, mode="uda", data=dataclasses.replace(config.data, source=str(data_root / "src")))
    with pytest.raises(CheckpointError, match="bn_domains: 1 there, 2 here"):
        Trainer(other, log=lambda _: None, progress=False)


def test_camera_aware_proxies_need_cameras(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "nocams"
    folder.mkdir()
    rows = ["path,split,pid,camid"]  # the camid column is there, every cell of it empty
    for i in range(12):
        Image.new("RGB", (16, 32), (20 * i, 80, 160)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{['train', 'query', 'gallery'][i % 3]},{i % 4},")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = _config(tmp_path, tmp_path / "run", "usl", **{"data.target": str(folder / "manifest.csv"),
                                                          "memory.kind": "cap"})
    with pytest.raises(ValueError, match="memory.kind cap needs the camera of every target training image"):
        Trainer(config, log=lambda _: None, progress=False)


def test_cluster_memory_without_clusters_says_what_to_change(data_root: Path, tmp_path: Path) -> None:
    config = _config(data_root, tmp_path / "none", "usl", **{"memory.kind": "cluster", "pseudo.eps": 0.02,
                                                              "pseudo.eps_gap": 0.01, "pseudo.min_samples": 4})
    with pytest.raises(ValueError, match="raise pseudo.eps or lower pseudo.min_samples"):
        _run(config)


@pytest.mark.parametrize("kind", ["hybrid", "cluster"])
@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_a_resume_restores_the_saved_state_bit_for_bit(data_root: Path, tmp_path: Path, device: str, kind: str) -> None:
    from spcl.training.checkpoint import checksum

    config = _config(data_root, tmp_path / "run", **{"optim.epochs": 2, "eval.every": 0, "device": device,
                                                     "memory.kind": kind})
    first = Trainer(config, log=lambda _: None, progress=False)
    first.init_memory()
    first.assign_labels()
    first.train_epoch()
    saved = first.state()
    second = Trainer(config, log=lambda _: None, progress=False)
    second.load_state(load_checkpoint_roundtrip(saved, tmp_path / "s.pth"))
    assert checksum(second.state()) == checksum(saved)


def load_checkpoint_roundtrip(state: dict, path: Path) -> dict:
    save_checkpoint(state, path)
    return load_checkpoint(path)


_BF16_RUN = """
import json, sys
import torch
from spcl.config import load_config
from spcl.training import Trainer

torch.backends.mkldnn.enabled = False  # PyTorch's own convolutions (see the test's docstring)
trainer = Trainer(load_config(overrides=json.loads(sys.argv[1])), log=lambda _: None, progress=False)
seen = []
trainer.model.backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
outputs = []
trainer.model.register_forward_hook(lambda m, i, o: outputs.append(str(o.dtype)))
trainer.fit()
entry = trainer.history[-1]
print(json.dumps({
    "amp": str(trainer.amp_dtype), "channels_last": trainer.channels_last, "conv1": sorted(set(seen)),
    "encoder_output": sorted(set(outputs)), "losses": [entry.loss, *entry.losses.values()],
    "memory": str(trainer.memory.features.dtype),
    "norm_error": float((trainer.memory.features.norm(dim=1) - 1).abs().max()),
    "scaler": "scaler" in trainer.checkpointables(), "kernels": torch.backends.cpu.get_cpu_capability(),
}))
"""


def test_bf16_autocast_and_channels_last_on_cpu(data_root: Path, tmp_path: Path) -> None:
    """bf16 autocast + channels-last on the CPU trains with finite losses and a float32 memory.

    The run uses PyTorch's AVX2 kernels and its own convolutions rather than oneDNN's: with the
    kernels one CI processor dispatched to, the losses of this tiny run became NaN within three
    steps (with or without channels-last), while on an AVX2 processor they stay finite. The test
    checks this project's precision handling, which is the same whatever kernels run it."""
    import json
    import subprocess
    import sys

    overrides = {"mode": "uda", "data.source": str(data_root / "src"), "data.target": str(data_root / "tgt"),
                 "data.height": 32, "data.width": 16, "data.padding": 0, "data.erasing_p": 0.0, "data.flip_p": 0.0,
                 "data.workers": 0, "model.arch": "resnet18", "model.pretrained": "none", "model.images_per_bn": 16,
                 "optim.batch_size": 16, "optim.iters": 3, "optim.epochs": 1, "optim.lr": 3.5e-4, "pseudo.k1": 6,
                 "pseudo.k2": 3, "pseudo.eps": 0.7, "pseudo.min_samples": 2, "eval.every": 0, "seed": 3,
                 "device": "cpu", "output": str(tmp_path / "amp"), "runtime.amp": "bf16", "runtime.channels_last": "on"}
    env = dict(os.environ)
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    done = subprocess.run([sys.executable, "-c", _BF16_RUN, json.dumps(overrides)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["amp"] == "torch.bfloat16" and result["channels_last"], result
    assert "torch.bfloat16" in result["conv1"], result  # the backbone's training steps ran in bf16 ...
    assert result["encoder_output"] == ["torch.float32"], result  # ... its head in float32
    assert all(np.isfinite(result["losses"])), result
    assert result["memory"] == "torch.float32" and result["norm_error"] < 1e-5, result  # unit-length float32 memory
    assert not result["scaler"], result  # bf16 needs no loss scaling


def test_fp16_on_cpu_is_refused(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA device"):
        Trainer(_config(data_root, tmp_path / "fp16", **{"runtime.amp": "fp16"}), log=lambda _: None, progress=False)
