"""Shared fixtures: a tiny synthetic two-domain dataset for the training and inference tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from spcl.data.synthetic import SynthConfig, write_domain

TINY = SynthConfig(
    height=32, width=16, num_cameras=3, source_train_ids=10, source_test_ids=0, target_train_ids=10,
    target_test_ids=4, cameras_per_id=(2, 3), train_images_per_camera=(2, 3), test_images_per_camera=(2, 2),
)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``src`` (10 labelled source identities) and ``tgt`` (10 training, 4 test identities); read only."""
    root = tmp_path_factory.mktemp("tinydata")
    write_domain(root / "src", "source", seed=0, config=TINY)
    write_domain(root / "tgt", "target", seed=0, config=TINY)
    return root
