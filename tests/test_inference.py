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


# ---------------------------------------------------------------------------------------------------
# the trained model as a tool: features, extract, search, pictures, report, ONNX


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny USL run with one evaluation (its ranked lists) and a memory."""
    out = tmp_path_factory.mktemp("run") / "usl"
    _run(_config(data_root, out, "usl", **{"optim.epochs": 1, "optim.iters": 2}))
    return out


def _by_hand(model, image, height: int, width: int) -> np.ndarray:
    """The test preprocessing written out: bicubic resize, [0, 1], ImageNet mean / std, NCHW."""
    import torch
    from PIL import Image

    x = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).numpy()[0]


def test_feature_extractor_takes_paths_pil_and_arrays(trained: Path, data_root: Path) -> None:
    import spcl
    from PIL import Image

    extractor = spcl.FeatureExtractor(trained / "last.pth", device="cpu")
    paths = sorted((data_root / "tgt" / "query").glob("*.jpg"))[:5]
    features = extractor([str(p) for p in paths])
    assert features.shape == (5, extractor.feature_dim) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    images = [Image.open(p) for p in paths]
    np.testing.assert_allclose(extractor(images), features, atol=1e-6)
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in images])
    np.testing.assert_allclose(extractor(arrays), features, atol=1e-6)  # N x H x W x 3 uint8
    assert extractor(arrays[0]).shape == (1, extractor.feature_dim)
    expected = _by_hand(extractor.model, images[2], 32, 16)
    np.testing.assert_allclose(features[2], expected, atol=1e-5)
    assert tuple(extractor(images, as_tensor=True).shape) == (5, extractor.feature_dim)
    with pytest.raises(ValueError, match="uint8"):
        extractor(np.zeros((8, 8, 3), dtype=np.float32))


def test_extract_writes_features_paths_and_identities(trained: Path, data_root: Path, tmp_path: Path) -> None:
    from spcl.cli import main
    from spcl.inference import load_features

    folder = data_root / "tgt" / "bounding_box_test"
    out = tmp_path / "g.npz"
    assert main(["extract", "--checkpoint", str(trained / "last.pth"), "--images", str(folder), "--out", str(out),
                 "--device", "cpu", "--workers", "0", "--quiet"]) == 0
    loaded = load_features(out)
    files = sorted(folder.glob("*.jpg"))
    assert loaded.features.shape[0] == len(files) and loaded.images.paths == [str(p.resolve()) for p in files]
    assert loaded.images.pids.tolist() == [int(p.name.split("_")[0]) for p in files]  # from the Market-style names
    assert loaded.images.camids.tolist() == [int(p.name.split("_c")[1][0]) for p in files]
    assert loaded.meta["preprocessing"]["height"] == 32 and not out.with_name("g.npz.partial").exists()


def interrupted_at(batch: int, calls: dict[str, int]):
    """An ``encode`` that counts its batches in ``calls["n"]`` and is interrupted at the ``batch``-th."""
    from spcl.inference import FeatureExtractor

    encode = FeatureExtractor.encode

    def failing(self, images):
        calls["n"] += 1
        if calls["n"] == batch:
            raise KeyboardInterrupt
        return encode(self, images)

    return failing


def test_an_interrupted_extract_resumes_without_recomputing(trained: Path, data_root: Path, tmp_path: Path, monkeypatch) -> None:
    from spcl.inference import FeatureExtractor, extract_to_file, list_input_images

    images = list_input_images(data_root / "tgt" / "bounding_box_test")
    extractor = FeatureExtractor(trained / "last.pth", batch_size=4)
    whole = extract_to_file(extractor, images, tmp_path / "whole.npz", chunk=4, progress=False, log=lambda _: None)
    calls = {"n": 0}
    monkeypatch.setattr(FeatureExtractor, "encode", interrupted_at(3, calls))
    with pytest.raises(KeyboardInterrupt):
        extract_to_file(extractor, images, tmp_path / "f.npz", chunk=4, progress=False, log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "f.npz.partial").glob("0*.npy")) == ["000000.npy", "000001.npy"]
    calls["n"] = -10**9  # no failure this time; count the batches encoded
    said = []
    resumed = extract_to_file(extractor, images, tmp_path / "f.npz", chunk=4, progress=False, log=said.append)
    batches = -(-len(images) // 4)
    assert calls["n"] + 10**9 == batches - 2  # the two finished chunks were not encoded again
    assert "8 of" in said[0]
    np.testing.assert_allclose(resumed.features, whole.features, atol=1e-6)


def test_search_finds_the_query_first_and_draws_the_lists(trained: Path, data_root: Path, tmp_path: Path, capsys) -> None:
    import json

    from PIL import Image

    from spcl.cli import main

    gallery = tmp_path / "g.npz"
    folder = data_root / "tgt" / "bounding_box_test"
    ckpt = str(trained / "last.pth")
    main(["extract", "--checkpoint", ckpt, "--images", str(folder), "--out", str(gallery), "--device", "cpu", "--quiet"])
    capsys.readouterr()
    query = sorted(folder.glob("*.jpg"))[3]
    out = tmp_path / "s"
    assert main(["search", "--checkpoint", ckpt, "--gallery", str(gallery), "--query", str(query), "--topk", "5",
                 "--json", "--out", str(out), "--device", "cpu", "--index", "exact"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 1 and len(results[0]["results"]) == 5
    first = results[0]["results"][0]
    assert first["path"] == str(query.resolve()) and first["distance"] == pytest.approx(0, abs=1e-5)
    assert first["ignored"] and first["match"] is True  # its own file: the protocol would leave it out
    distances = [r["distance"] for r in results[0]["results"]]
    assert distances == sorted(distances)
    with Image.open(out / "ranked.png") as png:
        png.load()
        # query column 180 + gap 28 + 5 cells of 96 + 8, margins 8; header 58 + one row of 180, margin 8
        assert png.size == (8 * 2 + 180 + 28 + 5 * 104, 58 + 180 + 8)
    assert json.loads((out / "results.json").read_text()) == results

    # --metrics on lists as long as the gallery: the exact evaluation of the same features
    from spcl.evaluation import ImageSet, metrics_from_features
    from spcl.inference.feature_file import load_features

    stored = load_features(gallery)
    size = len(stored.features)
    assert main(["search", "--gallery", str(gallery), "--query", str(gallery), "--topk", str(size), "--metrics",
                 "--json", "--no-png", "--out", str(out), "--index", "exact"]) == 0
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    side = ImageSet(stored.features, stored.images.pids, [int(c) for c in stored.images.camids], stored.images.paths)
    exact = metrics_from_features(side, side, topk=size)
    assert metrics["mAP"] == pytest.approx(exact["mAP"], abs=1e-9) and metrics["recall"] == 1.0
    np.testing.assert_allclose(metrics["cmc"], exact["cmc"], atol=1e-9)


def test_faiss_indexes_agree_with_the_exact_search() -> None:
    pytest.importorskip("faiss")
    from spcl.inference import GalleryIndex

    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    exact_i, exact_d = GalleryIndex(gallery, "exact").search(queries, 10)
    flat_i, flat_d = GalleryIndex(gallery, "flat").search(queries, 10)
    np.testing.assert_array_equal(flat_i, exact_i)
    np.testing.assert_allclose(flat_d, exact_d, atol=1e-5)
    ivf = GalleryIndex(gallery, "ivf", nlist=16, nprobe=16)  # every list probed: exact
    np.testing.assert_array_equal(ivf.search(queries, 10)[0], exact_i)
    # by hand: the nearest by cosine
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_array_equal(exact_i[:, 0], np.argmax(q @ unit.T, axis=1))


def test_visualize_and_report(trained: Path) -> None:
    import re

    from PIL import Image

    from spcl.cli import main

    assert main(["visualize", str(trained), "--count", "3", "--topk", "4"]) == 0
    for name in ("worst", "best"):
        with Image.open(trained / "eval-epoch1" / "ranked" / f"{name}.png") as png:
            png.load()
            assert png.size[1] == 58 + 3 * 180 + 8
    assert main(["report", str(trained), "--max-points", "200"]) == 0
    page = (trained / "report.html").read_text()
    assert "<img" in page and "loss" in page.lower()
    assert not re.search(r"https?://|//cdn|<script|<link", page)  # nothing from outside
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for png_file in (trained / "report").glob("*.png"):
        with Image.open(png_file) as png:
            png.load()
    assert (trained / "report" / "embedding.png").is_file() and (trained / "report" / "loss.png").is_file()


def test_onnx_export_matches_pytorch(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript", reason="ONNX export needs onnx and onnxscript: pip install 'spcl[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="the parity check needs onnxruntime: pip install 'spcl[onnx]'")
    import onnx
    import torch

    from spcl.cli import main
    from spcl.inference import FeatureExtractor

    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(trained / "last.pth"), "--format", "onnx", "--out", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["input_height"] == "32" and meta["input_width"] == "16" and meta["resize_interpolation"] == "bicubic"
    assert meta["normalize_mean"] == "0.485,0.456,0.406" and meta["normalize_std"] == "0.229,0.224,0.225"
    extractor = FeatureExtractor(trained / "last.pth")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        images = torch.randn(batch, 3, 32, 16, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"images": images.numpy()})[0]
        assert got.shape == (batch, extractor.feature_dim)
        assert float(np.abs(got - extractor.encode(images).numpy()).max()) < 1e-4
