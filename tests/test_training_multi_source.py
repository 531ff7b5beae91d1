"""Several labelled sources: combined into one source with more classes (``spcl.data.combine_sources``),
with one BatchNorm shared by all sources or one per source (``model.dsbn_per_source``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spcl.config import ConfigError, load_config
from spcl.data import Dataset, DatasetError, combine_sources, load
from spcl.models.dsbn import DomainSpecificBatchNorm
from spcl.training import Trainer


def test_combined_sources_keep_identities_and_cameras_apart() -> None:
    a = Dataset("a", "/data/a", train=[("/data/a/1.jpg", 0, 0), ("/data/a/2.jpg", 1, 1), ("/data/a/3.jpg", 1, None)],
                query=[("/data/a/q.jpg", 7, 0)], gallery=[("/data/a/g.jpg", 7, 1), ("/data/a/h.jpg", 9, 1)])
    b = Dataset("b", "/data/b", train=[("/data/b/1.jpg", 0, 2), ("/data/b/2.jpg", 0, 0)],
                query=[("/data/b/q.jpg", 3, 1)], gallery=[("/data/b/g.jpg", 3, 2)], skipped=["/data/b/x.txt"])
    both = combine_sources([a, b])
    assert both.name == "a+b" and both.root == "/data" and both.parts == [("a", 3), ("b", 2)]
    # a's classes 0, 1; b's class 0 becomes 2. a's cameras 0-1; b's cameras 0-2 become 2-4
    assert both.train == a.train + [("/data/b/1.jpg", 2, 4), ("/data/b/2.jpg", 2, 2)]
    assert both.num_train_pids == 3
    # test identities: a's go up to 9, so b's start at 10
    assert both.query == [("/data/a/q.jpg", 7, 0), ("/data/b/q.jpg", 13, 3)]
    assert both.gallery[-1] == ("/data/b/g.jpg", 13, 4)
    assert both.skipped == ["/data/b/x.txt"]
    assert combine_sources([a]) is a
    with pytest.raises(DatasetError, match="twice"):
        combine_sources([a, a])


def test_source_list_in_yaml_and_on_the_command_line(tmp_path: Path) -> None:
    preset = tmp_path / "multi.yaml"
    preset.write_text("mode: source-only\ndata: {source: [market1501, cuhk03, msmt17], target: viper}\n")
    config = load_config(str(preset))
    assert config.data.source == "market1501,cuhk03,msmt17"
    assert config.source_names == ("market1501", "cuhk03", "msmt17")
    assert load_config(overrides={"data.source": "a, b"}).source_names == ("a", "b")
    with pytest.raises(ConfigError, match="each source once"):
        load_config(overrides={"data.source": "a,a"})
    with pytest.raises(ConfigError, match="data.source"):
        load_config(overrides={"data.source": ["a", 3]})
    uda = {"mode": "uda", "data.source": "a,b,c"}
    assert load_config(overrides=uda).bn_domains == 2
    assert load_config(overrides={**uda, "model.dsbn_per_source": True}).bn_domains == 4
    assert load_config(overrides={**uda, "model.dsbn_per_source": True, "model.dsbn": False}).bn_domains == 1
    assert load_config(overrides={**uda, "mode": "source-only", "model.dsbn_per_source": True}).bn_domains == 1


@pytest.fixture(scope="module")
def two_sources(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data_root``'s source, and a copy of it under another name: a second source of 10 classes."""
    root = tmp_path_factory.mktemp("sources")
    shutil.copytree(data_root / "src", root / "src")
    shutil.copytree(data_root / "src", root / "other")
    return root


def _config(sources: Path, target: Path, out: Path, **extra):
    values = {
        "mode": "uda", "data.source": f"{sources / 'src'},{sources / 'other'}", "data.target": str(target),
        "data.height": 32, "data.width": 16, "data.padding": 0, "data.erasing_p": 0.0, "data.flip_p": 0.0,
        "data.workers": 0, "model.arch": "resnet18", "model.pretrained": "none", "model.images_per_bn": 8,
        "optim.batch_size": 8, "optim.iters": 2, "optim.epochs": 1, "pseudo.k1": 6, "pseudo.k2": 3, "pseudo.eps": 0.7,
        "pseudo.min_samples": 2, "eval.every": 0, "eval.batch_size": 32, "seed": 3, "device": "cpu", "output": str(out),
    }
    return load_config(overrides={**values, **extra})


def test_sources_share_one_bn_branch_by_default(two_sources: Path, data_root: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(two_sources, data_root / "tgt", tmp_path / "shared"), log=lambda _: None, progress=False)
    one = load(str(two_sources / "src"))
    assert trainer.num_source_classes == 2 * one.num_train_pids
    assert [name for name, _ in trainer.source.parts] == ["src", "other"]
    assert {m.num_domains for m in trainer.model.modules() if isinstance(m, DomainSpecificBatchNorm)} == {2}
    assert list(trainer._make_loaders()) == ["source", "target"]  # one stream draws from both sources
    history = trainer.fit()
    assert np.isfinite(history[0].loss) and set(history[0].losses) == {"source", "target"}
    slots = trainer.memory.state_dict()["features"].shape[0]
    assert slots == 2 * one.num_train_pids + len(trainer.target.train)  # the hybrid memory: every class, every target image


def test_one_bn_branch_per_source(two_sources: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(two_sources, data_root / "tgt", tmp_path / "per-source", **{"model.dsbn_per_source": True})
    trainer = Trainer(config, log=lambda _: None, progress=False)
    assert {m.num_domains for m in trainer.model.modules() if isinstance(m, DomainSpecificBatchNorm)} == {3}
    extracted: list[tuple[int, int, str]] = []
    real_extract = trainer._extract

    def recording(items, domain, desc, *args, **kwargs):
        extracted.append((domain, len(items), Path(items[0][0]).relative_to(two_sources).parts[0] if desc == "source features" else desc))
        return real_extract(items, domain, desc, *args, **kwargs)

    monkeypatch.setattr(trainer, "_extract", recording)
    batches: list[tuple[str, int, set[int]]] = []
    real_make = trainer._make_loaders

    def recording_loaders():
        loaders = real_make()
        for name, loader in loaders.items():
            real_next = loader.next

            def next_batch(name=name, real_next=real_next):
                images, pids, index = real_next()
                batches.append((name, len(images), {int(p) for p in pids}))
                return images, pids, index

            loader.next = next_batch
        return loaders

    monkeypatch.setattr(trainer, "_make_loaders", recording_loaders)
    bn = next(m for m in trainer.model.modules() if isinstance(m, DomainSpecificBatchNorm))
    before = [b.running_mean.clone() for b in bn.branches]
    history = trainer.fit()
    n = len(load(str(two_sources / "src")).train)
    classes = trainer.num_source_classes // 2
    # each source's memory features come through its own branch
    assert extracted[:2] == [(0, n, "src"), (1, n, "other")]
    # every step: a full batch of each source, then of the target (equal parts for the three branches)
    names = [name for name, _, _ in batches]
    assert names[:3] == ["source0", "source1", "target"] and all(size == 8 for _, size, _ in batches)
    assert all(pids <= set(range(classes)) for name, _, pids in batches if name == "source0")
    assert all(pids <= set(range(classes, 2 * classes)) for name, _, pids in batches if name == "source1")
    assert all(not torch.equal(b.running_mean, m) for b, m in zip(bn.branches, before))
    assert np.isfinite(history[0].loss)
    with pytest.raises(ValueError, match="each source on its own"):
        trainer.evaluate(on_source=True)
