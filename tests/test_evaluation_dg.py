"""The domain-generalisation protocol (``spcl eval --protocol dg``): each small set present under the
data root, averaged over its 10 splits, checked against a by-hand mAP from the extractor's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.cli import main
from spcl.data import DatasetError, load
from spcl.evaluation.dg import evaluate_dg
from spcl.inference import FeatureExtractor
from spcl.inference.evaluate import _test_transform, evaluate_checkpoint_dg
from test_training import _config, _run


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def dg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VIPeR (12 persons) and PRID (8 shared persons, 3 more in cam_b); no GRID, no iLIDS."""
    root = tmp_path_factory.mktemp("dg")
    for i in range(12):
        _image(root / "viper" / "VIPeR" / "cam_a" / f"{i:03d}_0.bmp", 2 * i)
        _image(root / "viper" / "VIPeR" / "cam_b" / f"{i:03d}_1.bmp", 2 * i + 1)
    for person in range(1, 12):
        if person <= 8:
            _image(root / "prid2011" / "prid_2011" / "single_shot" / "cam_a" / f"person_{person:04d}.png", 100 + person)
        _image(root / "prid2011" / "prid_2011" / "single_shot" / "cam_b" / f"person_{person:04d}.png", 200 + person)
    return root


@pytest.fixture(scope="module")
def checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dgrun") / "usl"
    _run(_config(data_root, out, "usl", **{"optim.epochs": 1, "optim.iters": 1, "eval.every": 0}))
    return out / "last.pth"


def _map_by_hand(query: np.ndarray, gallery: np.ndarray, qpids: list[int], gpids: list[int]) -> float:
    """Each query has one true match in the gallery (another camera): AP = 1 / its rank by cosine distance."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    aps = []
    for i, pid in enumerate(qpids):
        order = np.argsort(-(g @ q[i]), kind="stable")
        rank = 1 + [gpids[j] for j in order].index(pid)
        aps.append(1.0 / rank)
    return float(np.mean(aps))


def test_each_present_set_is_averaged_over_its_ten_splits(dg_root: Path, checkpoint: Path, capsys) -> None:
    results = evaluate_checkpoint_dg(checkpoint, str(dg_root), device="cpu", workers=0, progress=False)
    assert list(results) == ["viper", "prid"]  # GRID and iLIDS are not there: left out, said
    out = capsys.readouterr().out
    assert "note: grid left out: expected a folder 'underground_reid'" in out and "note: ilids left out" in out
    extractor = FeatureExtractor(checkpoint, device="cpu", workers=0)
    for name in ("viper", "prid"):
        result = results[name]
        assert len(result["split_mAP"]) == 10
        by_hand = []
        for k in range(10):
            split = load(name, dg_root, split=k)
            features_q = extractor([p for p, _, _ in split.query])
            features_g = extractor([p for p, _, _ in split.gallery])
            by_hand.append(_map_by_hand(features_q, features_g, [p for _, p, _ in split.query],
                                        [p for _, p, _ in split.gallery]))
        np.testing.assert_allclose(result["split_mAP"], by_hand, atol=1e-5)
        assert result["mAP"] == pytest.approx(np.mean(by_hand), abs=1e-5)
    assert (results["viper"]["num_query"], results["viper"]["num_gallery"]) == (6, 6)
    assert (results["prid"]["num_query"], results["prid"]["num_gallery"]) == (4, 7)
    table = out[out.index("dataset"):]
    mean_map = 100 * (results["viper"]["mAP"] + results["prid"]["mAP"]) / 2
    assert f"{mean_map:5.1f}" in table.splitlines()[4] and table.splitlines()[4].startswith("mean")
    rows = (checkpoint.parent / "eval-dg" / "dg.csv").read_text().splitlines()
    assert rows[0] == "dataset,split,mAP,rank1,rank5,rank10" and len(rows) == 1 + 20


def test_dg_from_the_command_line(dg_root: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    code = main(["eval", "--checkpoint", str(checkpoint), "--protocol", "dg", "--data-root", str(dg_root),
                 "--datasets", "viper", "--device", "cpu", "--output", str(tmp_path / "dg")])
    out = capsys.readouterr().out
    assert code == 0 and "viper" in out and "prid" not in out.split("dataset", 1)[1]
    assert (tmp_path / "dg" / "dg.csv").read_text().count("\n") == 11
    with pytest.raises(SystemExit, match="--datasets"):
        main(["eval", "--checkpoint", str(checkpoint), "--protocol", "dg", "--dataset", "viper"])


def test_no_set_present_or_an_unknown_one(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(DatasetError, match="none of the domain-generalisation test sets.*viper"):
        evaluate_checkpoint_dg(checkpoint, str(tmp_path), device="cpu", workers=0)
    with pytest.raises(ValueError, match="not market1501"):
        evaluate_dg(None, tmp_path, None, "cpu", ["viper", "market1501"])


def test_eval_uses_the_normalisation_the_checkpoint_records() -> None:
    state = {"model": {"preprocessing": {"height": 32, "width": 16, "interpolation": "bicubic",
                                         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}}
    normalize = _test_transform(state).transforms[-1]
    assert list(normalize.mean) == [0.5, 0.5, 0.5] and list(normalize.std) == [0.5, 0.5, 0.5]
