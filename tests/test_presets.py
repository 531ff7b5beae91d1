"""Every preset builds its run and trains one tiny step: the method, backbone, pooling, memory,
clustering and schedule settings it names are the preset's; the data, image size and batch are made
tiny (``conftest.data_root``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spcl.config import list_presets, load_config, read_preset
from spcl.training import Trainer


@pytest.mark.parametrize("preset", [p for p in list_presets() if p != "demo"])
def test_every_preset_trains_one_tiny_step(preset: str, data_root: Path, tmp_path: Path) -> None:
    mode = read_preset(preset)["mode"]
    config = load_config(preset, {
        "data.source": str(data_root / "src") if mode in ("uda", "source-only") else None, "data.target": str(data_root / "tgt"),
        "data.height": 64, "data.width": 32, "data.workers": 0, "data.num_instances": 4,
        "model.pretrained": "none", "model.images_per_bn": 0, "optim.batch_size": 8, "optim.iters": 1,
        "optim.epochs": 1, "pseudo.min_samples": 2, "eval.every": 0, "eval.batch_size": 64, "device": "cpu",
        "output": str(tmp_path / preset), "seed": 0,
    })
    trainer = Trainer(config, log=lambda _: None, progress=False)
    assert trainer.config.memory.kind == load_config(preset).memory.kind
    assert trainer.config.model.arch == load_config(preset).model.arch
    history = trainer.fit()
    assert len(history) == 1 and np.isfinite(history[0].loss)
    assert set(history[0].losses) == set(trainer.memory.loss_names)
