"""Tests for the built-in synthetic two-domain re-ID dataset (docs/method.md#the-two-problems, docs/datasets.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.data import synthetic
from spcl.data.synthetic import SynthConfig, ensure_synthetic, write_synthetic
from spcl.data.synthetic import writer as synthetic_writer

MARKET_RE = re.compile(r"([-\d]+)_c(\d)")
NAME_RE = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_00\.jpg$")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")

# Small enough to generate in a couple of seconds, large enough for retrieval statistics.
EVAL_CONFIG = SynthConfig(source_train_ids=6, source_test_ids=40, target_train_ids=6, target_test_ids=40)
TINY_CONFIG = SynthConfig(source_train_ids=3, source_test_ids=2, target_train_ids=2, target_test_ids=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic(tmp_path_factory.mktemp("synth"), seed=0, config=EVAL_CONFIG)


def _read_split(folder: Path) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    files = sorted(folder.glob("*.jpg"))
    parsed = [MARKET_RE.search(f.name) for f in files]
    assert all(parsed)
    pids = np.array([int(m.group(1)) for m in parsed])
    cams = np.array([int(m.group(2)) for m in parsed])
    return pids, cams, files


def _images(files: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files])


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_layout_names_and_counts(dataset: dict[str, Path]) -> None:
    for domain, folder in dataset.items():
        assert folder.name == f"synth-{domain}"
        n_train, n_test = EVAL_CONFIG.ids(domain)
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["version"] == synthetic.GENERATOR_VERSION and meta["seed"] == 0
        assert meta["config"] == EVAL_CONFIG.to_json()
        split = {s: _read_split(folder / s) for s in SPLITS}
        for s, (pids, cams, files) in split.items():
            assert all(NAME_RE.match(f.name) for f in files), s
            assert set(cams) <= set(range(1, EVAL_CONFIG.num_cameras + 1))
            assert meta["splits"][s]["images"] == len(files)
            assert meta["splits"][s]["identities"] == len(set(pids))
            assert len({f.name for f in files}) == len(files)
        train_pids = set(split["bounding_box_train"][0])
        query_pids = set(split["query"][0])
        gallery_pids = set(split["bounding_box_test"][0])
        assert train_pids == set(range(1, n_train + 1))
        assert query_pids == gallery_pids == set(range(n_train + 1, n_train + n_test + 1))
        assert not train_pids & (query_pids | gallery_pids)
        # Market-style query: one image per test identity and camera it appears in.
        qp, qc, _ = split["query"]
        gp, gc, _ = split["bounding_box_test"]
        assert len(set(zip(qp, qc))) == len(qp)
        assert set(zip(qp, qc)) == set(zip(gp, gc)), "every camera of a test identity keeps gallery images"
        for pid, cam in zip(qp, qc):
            assert np.any((gp == pid) & (gc != cam)), "every query has a cross-camera true match"
        lo, hi = EVAL_CONFIG.cameras_per_id
        for pids, cams, _ in split.values():
            for pid in set(pids):
                assert len(set(cams[pids == pid])) <= hi
        # Images per identity and camera follow the configured ranges.
        per_cam_train = Counter(zip(*split["bounding_box_train"][:2]))
        lo_img, hi_img = EVAL_CONFIG.train_images(domain)
        assert lo_img <= min(per_cam_train.values()) and max(per_cam_train.values()) <= hi_img
        per_cam_test = Counter(zip(qp, qc)) + Counter(zip(gp, gc))
        lo_img, hi_img = EVAL_CONFIG.test_images_per_camera
        assert lo_img <= min(per_cam_test.values()) and max(per_cam_test.values()) <= hi_img
        all_pids = np.concatenate([split[s][0] for s in SPLITS])
        all_cams = np.concatenate([split[s][1] for s in SPLITS])
        per_id = [len(set(all_cams[all_pids == p])) for p in set(all_pids)]
        assert min(per_id) >= lo and max(per_id) <= hi
        # Images have the configured size and are decodable.
        with Image.open(split["query"][2][0]) as img:
            assert img.size == (EVAL_CONFIG.width, EVAL_CONFIG.height) and img.mode == "RGB"


def test_contact_sheet_is_written(dataset: dict[str, Path]) -> None:
    for folder in dataset.values():
        with Image.open(folder / "contact_sheet.png") as sheet:
            width, height = sheet.size
        assert width > EVAL_CONFIG.num_cameras * EVAL_CONFIG.width
        assert height > EVAL_CONFIG.contact_sheet_ids * EVAL_CONFIG.height


def test_identities_are_disjoint_between_domains(dataset: dict[str, Path]) -> None:
    records = {d: json.loads((f / "identities.json").read_text()) for d, f in dataset.items()}
    hashes = {d: {r["hash"] for r in recs} for d, recs in records.items()}
    attrs = {d: {json.dumps(r["attributes"], sort_keys=True) for r in recs} for d, recs in records.items()}
    for d in dataset:
        assert len(hashes[d]) == len(records[d])
    assert not hashes["source"] & hashes["target"]
    assert not attrs["source"] & attrs["target"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", seed=3, config=TINY_CONFIG)
    b = write_synthetic(tmp_path / "b", seed=3, config=TINY_CONFIG)
    c = write_synthetic(tmp_path / "c", seed=4, config=TINY_CONFIG)
    for d in synthetic.DOMAINS:
        assert _digest(a[d]) == _digest(b[d])
        assert _digest(a[d]) != _digest(c[d])
    # A domain does not depend on whether the other one was generated.
    alone = ensure_synthetic(tmp_path / "alone", "synth-target", seed=3, config=TINY_CONFIG)
    assert _digest(alone) == _digest(a["target"])


def test_domains_differ_measurably(dataset: dict[str, Path]) -> None:
    stats = {}
    for domain, folder in dataset.items():
        _, _, files = _read_split(folder / "bounding_box_test")
        x = _images(files)
        stats[domain] = {
            "mean": x.reshape(-1, 3).mean(0),
            "std": x.reshape(-1, 3).std(0),
            "sat": (x.max(-1) - x.min(-1)).mean(),
        }
    s, t = stats["source"], stats["target"]
    moments = np.concatenate([s["mean"] - t["mean"], s["std"] - t["std"]])
    assert np.abs(moments).max() > 5.0, "per-channel colour statistics differ"
    assert s["sat"] > t["sat"] + 5.0, "the target is less colourful"


def _colour_histogram(x: np.ndarray, bins: int = 4) -> np.ndarray:
    """Colour histograms of the upper and lower body (central columns), Hellinger-normalised."""
    n, h, w, _ = x.shape
    parts = []
    for top, bottom in ((0.12, 0.5), (0.5, 0.92)):
        region = x[:, int(top * h) : int(bottom * h), int(0.3 * w) : w - int(0.3 * w)]
        q = np.clip((region / 256 * bins).astype(int), 0, bins - 1)
        code = ((q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]).reshape(n, -1)
        hist = np.stack([np.bincount(row, minlength=bins**3) for row in code]).astype(np.float64)
        parts.append(np.sqrt(hist / hist.sum(1, keepdims=True)))
    f = np.concatenate(parts, 1)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _rank1(folder: Path) -> float:
    qp, qc, qf = _read_split(folder / "query")
    gp, gc, gf = _read_split(folder / "bounding_box_test")
    sim = _colour_histogram(_images(qf)) @ _colour_histogram(_images(gf)).T
    hits = []
    for i in range(len(qp)):
        valid = ~((gp == qp[i]) & (gc == qc[i]))
        order = np.argsort(-sim[i][valid], kind="stable")
        hits.append(gp[valid][order[0]] == qp[i])
    return float(np.mean(hits))


def test_learnable_on_source_harder_on_target(dataset: dict[str, Path]) -> None:
    chance = 1.0 / EVAL_CONFIG.source_test_ids
    source, target = _rank1(dataset["source"]), _rank1(dataset["target"])
    assert source > 12 * chance, f"source rank-1 {source:.2f}: identities should be recognisable"
    assert target < source - 0.2, f"target rank-1 {target:.2f} vs source {source:.2f}"
    assert target > 1.5 / EVAL_CONFIG.target_test_ids, "the target is not noise"


def test_ensure_reuses_and_regenerates(tmp_path: Path) -> None:
    folder = ensure_synthetic(tmp_path, "synth-source", seed=1, config=TINY_CONFIG)
    marker = folder / "marker"
    marker.write_text("kept while the dataset is reused")
    assert ensure_synthetic(tmp_path, "synth-source", seed=1, config=TINY_CONFIG) == folder
    assert marker.exists()
    other = dataclasses.replace(TINY_CONFIG, height=48, width=24)
    assert ensure_synthetic(tmp_path, "source", seed=1, config=other) == folder
    assert not marker.exists()
    with Image.open(next((folder / "query").glob("*.jpg"))) as img:
        assert img.size == (24, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth-source"], "no temporary folders left"


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = ensure_synthetic(tmp_path, "synth-target", seed=0, config=TINY_CONFIG)
    before = _digest(good)
    real_render = synthetic_writer.render_image
    calls = {"n": 0}

    def failing_render(*args: object, **kwargs: object) -> Image.Image:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic_writer, "render_image", failing_render)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, "synth-target", seed=5, config=TINY_CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth-target"]
    assert _digest(good) == before, "the previous complete dataset is untouched"
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "fresh", "synth-source", seed=0, config=TINY_CONFIG)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_train_images_per_camera_override() -> None:
    assert SynthConfig().train_images("source") == (1, 4)
    assert SynthConfig().train_images("target") == (2, 5)
    both = SynthConfig(train_images_per_camera=(3, 3))
    assert both.train_images("source") == both.train_images("target") == (3, 3)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_cameras"):
        SynthConfig(num_cameras=12)
    with pytest.raises(ValueError, match="query has a match"):
        SynthConfig(test_images_per_camera=(1, 3))
    with pytest.raises(ValueError, match="unknown synthetic"):
        ensure_synthetic("unused", "synth-other")
