"""The model tools lose nothing and never answer wrongly: output paths checked before the work,
atomic writes that name the file, optional packages checked first, caches keyed on content,
resumed extractions that notice changed images, and the inputs that used to be misread."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.cli import main
from spcl.inference import FeatureExtractor, GalleryIndex, extract_to_file, list_input_images, load_features
from spcl.utils.files import OutputError, atomic_output, check_output, check_output_folder
from test_inference import interrupted_at
from test_training import _config, _run


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tools") / "usl"
    _run(_config(data_root, out, "usl", **{"optim.epochs": 1, "optim.iters": 1, "eval.every": 0}))
    return out


def _no_encoding(monkeypatch) -> None:
    """Any image encoded from here on fails the test: the command must stop before its work."""

    def refuse(self, batch):
        raise AssertionError("the command started its work before checking its output")

    monkeypatch.setattr(FeatureExtractor, "encode", refuse)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------------
# one guard for every output path


def test_check_output_refuses_inputs_folders_and_full_disks(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "in.pth"
    source.write_bytes(b"x")
    with pytest.raises(OutputError, match="also an input of this command"):
        check_output(source, inputs=[source])
    link = tmp_path / "link.pth"
    link.symlink_to(source)
    with pytest.raises(OutputError, match="also an input"):
        check_output(link, inputs=[source])  # the same file under another name
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(f"{tmp_path / 'new'}/")
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(tmp_path / "afile" / "out.npz")
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(tmp_path / "afile")
    assert check_output(tmp_path / "deep" / "er" / "out.npz") == tmp_path / "deep" / "er" / "out.npz"

    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=10 * 2**20))
    with pytest.raises(OutputError, match=r"no space left on device for output .*out.npz: it needs about 1.0 GiB"):
        check_output(tmp_path / "out.npz", size=2**30)


def test_atomic_output_leaves_nothing_behind_and_names_the_file(tmp_path: Path) -> None:
    out = tmp_path / "result.bin"
    out.write_bytes(b"earlier")
    with pytest.raises(OutputError, match=r"cannot write output .*result.bin: no space left on device; the earlier"):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert out.read_bytes() == b"earlier" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="check failed"):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("check failed")
    assert out.read_bytes() == b"earlier" and _leftovers(tmp_path) == []
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and _leftovers(tmp_path) == []


def test_extract_and_export_never_replace_their_checkpoint(trained: Path, data_root: Path, monkeypatch, capsys) -> None:
    ckpt = trained / "last.pth"
    before = ckpt.read_bytes()
    _no_encoding(monkeypatch)
    images = str(data_root / "tgt" / "query")
    assert main(["extract", "--checkpoint", str(ckpt), "--images", images, "--out", str(ckpt), "--quiet"]) == 2
    assert "also an input of this command" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(ckpt)]) == 2
    assert "also an input of this command" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


def test_an_output_that_is_a_folder_is_refused_before_the_work(trained: Path, data_root: Path, tmp_path: Path,
                                                               monkeypatch, capsys) -> None:
    _no_encoding(monkeypatch)
    ckpt = str(trained / "last.pth")
    images = str(data_root / "tgt" / "query")
    assert main(["extract", "--checkpoint", ckpt, "--images", images, "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["search", "--checkpoint", ckpt, "--gallery", images, "--query", images, "--out",
                 str(tmp_path / "file")]) == 2
    assert "is a file: give a folder" in capsys.readouterr().err


def test_extract_onto_a_full_disk_names_the_file_keeps_the_work_and_leaves_no_temporary_file(
    trained: Path, data_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    images = list_input_images(data_root / "tgt" / "bounding_box_test")
    extractor = FeatureExtractor(trained / "last.pth", batch_size=8)
    out = tmp_path / "g.npz"
    usage = shutil.disk_usage(tmp_path)
    with monkeypatch.context() as m:  # not enough room from the start: refused before any image
        m.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1024))
        m.setattr(FeatureExtractor, "encode", lambda *a: pytest.fail("extracted onto a full disk"))
        with pytest.raises(OutputError, match=r"no space left on device for the feature file .*g.npz"):
            extract_to_file(extractor, images, out, chunk=8, progress=False, log=lambda _: None)

    real_savez = np.savez

    def full_disk(file, **arrays):  # the disk fills while the final file is written
        file.write(b"PK-half-written")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(np, "savez", full_disk)
        with pytest.raises(OutputError) as caught:
            extract_to_file(extractor, images, out, chunk=8, progress=False, log=lambda _: None)
    message = str(caught.value)
    assert "no space left on device" in message and str(out) in message and "g.npz.partial" in message
    assert not out.exists() and _leftovers(tmp_path) == []
    assert np.savez is real_savez
    encoded = {"n": 0}
    encode = FeatureExtractor.encode

    def counting(self, batch):
        encoded["n"] += 1
        return encode(self, batch)

    monkeypatch.setattr(FeatureExtractor, "encode", counting)
    done = extract_to_file(extractor, images, out, chunk=8, progress=False, log=lambda _: None)
    assert encoded["n"] == 0 and len(done) == len(images)  # written from the kept chunks
    assert not (tmp_path / "g.npz.partial").exists()


def test_export_onto_a_full_disk_names_the_file_and_leaves_no_temporary_file(trained: Path, tmp_path: Path,
                                                                            monkeypatch, capsys) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")

    def full_disk(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full_disk)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(trained / "last.pth"), "--out", str(out), "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and str(out) in err and "unexpected" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# optional packages: checked before any work, a one-line install hint, exit status 2


def test_a_missing_optional_package_is_named_before_the_work(trained: Path, data_root: Path, tmp_path: Path,
                                                              monkeypatch, capsys) -> None:
    _no_encoding(monkeypatch)
    ckpt = str(trained / "last.pth")
    images = str(data_root / "tgt" / "query")
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now fails
    assert main(["search", "--checkpoint", ckpt, "--gallery", images, "--query", images, "--index", "ivf",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "needs faiss" in err and "pip install faiss-cpu" in err and "unexpected" not in err
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "needs onnxscript" in err and "pip install 'spcl[onnx]'" in err and "unexpected" not in err


def test_training_with_the_approximate_search_needs_faiss_before_reading_data(data_root: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    from spcl.training import Trainer
    from spcl.utils.optional import MissingPackage

    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(Trainer, "build_data", lambda self: pytest.fail("data read before the package check"))
    config = _config(data_root, tmp_path / "r", "usl", **{"pseudo.neighbors": "approximate"})
    with pytest.raises(MissingPackage, match="pip install faiss-cpu"):
        Trainer(config, log=lambda _: None, progress=False)


# ---------------------------------------------------------------------------------------------------
# caches and resumed work keyed on content


def test_a_reextracted_gallery_of_the_same_name_and_size_never_reuses_its_index(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    first = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    cache = tmp_path / "g.npz.ivf.faiss"
    GalleryIndex(first, "ivf", nlist=20, nprobe=20, cache=cache)
    assert cache.is_file()
    second = first[rng.permutation(len(first))]  # the same rows, re-ordered: shape and sums unchanged
    second[:5] = rng.standard_normal((5, 16))  # and a few replaced
    index = GalleryIndex(second, "ivf", nlist=20, nprobe=20, cache=cache)
    exact_i, exact_d = GalleryIndex(second, "exact").search(queries, 10)
    got_i, got_d = index.search(queries, 10)
    np.testing.assert_array_equal(got_i, exact_i)
    np.testing.assert_allclose(got_d, exact_d, atol=1e-5)
    assert json.loads(Path(f"{cache}.key").read_text())["digest"] == index.digest()


def test_distances_are_computed_on_the_current_features_whatever_the_index(tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    gallery = rng.standard_normal((500, 8)).astype(np.float32)
    queries = rng.standard_normal((10, 8)).astype(np.float32)
    index = GalleryIndex(gallery, "ivf", nlist=5, nprobe=5)
    stale = faiss.IndexFlatIP(8)  # an index of other vectors proposes candidates
    stale.add(GalleryIndex._unit(rng.standard_normal((500, 8)).astype(np.float32)))
    index.index = stale
    got_i, got_d = index.search(queries, 7)
    unit_g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for q in range(10):  # whatever was proposed, each distance is that of the current row, in order
        expected = 1.0 - unit_g[got_i[q]] @ unit_q[q]
        np.testing.assert_allclose(got_d[q], expected, atol=1e-6)
        assert np.all(np.diff(got_d[q]) >= 0)


def test_a_read_only_cache_folder_only_means_no_cache(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("faiss")
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((800, 8)).astype(np.float32)
    cache = tmp_path / "g.npz.ivf.faiss"
    index = GalleryIndex(gallery, "ivf", nlist=8, nprobe=8, cache=cache)
    assert not cache.exists() and len(index.notes) == 1 and "not kept" in index.notes[0]
    exact = GalleryIndex(gallery, "exact").search(gallery[:5], 3)[0]
    np.testing.assert_array_equal(index.search(gallery[:5], 3)[0], exact)


def test_a_resumed_extract_notices_images_changed_since(trained: Path, data_root: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(data_root / "tgt" / "bounding_box_test", folder)
    images = list_input_images(folder)
    extractor = FeatureExtractor(trained / "last.pth", batch_size=4)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractor, "encode", interrupted_at(3, {"n": 0}))
        with pytest.raises(KeyboardInterrupt):
            extract_to_file(extractor, images, tmp_path / "f.npz", chunk=4, progress=False, log=lambda _: None)
    changed = Path(images.paths[1])  # in the first finished chunk
    with Image.open(images.paths[-1]) as other:
        other.convert("RGB").resize(Image.open(changed).size).save(changed, quality=95)
    said: list[str] = []
    resumed = extract_to_file(extractor, images, tmp_path / "f.npz", chunk=4, progress=False, log=said.append)
    assert any("another job" in line for line in said)
    np.testing.assert_allclose(resumed.features[1], extractor([str(changed)])[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# inputs that were misread


def test_a_manifest_camid_of_minus_one_is_an_unknown_camera(tmp_path: Path, data_root: Path) -> None:
    from spcl.data import DatasetError, load

    image = sorted((data_root / "tgt" / "query").glob("*.jpg"))[0]
    rows = ["path,split,pid,camid", f"{image},query,1,-1", f"{image},gallery,1,-1", f"{image},train,1,0"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    dataset = load(str(manifest))
    assert dataset.query[0][2] is None and dataset.gallery[0][2] is None and dataset.train[0][2] == 0
    manifest.write_text("\n".join([*rows[:1], f"{image},query,1,-2"]) + "\n")
    with pytest.raises(DatasetError, match=r"m.csv:2: camid must be >= 0, or -1 / empty for an unknown camera"):
        load(str(manifest))
    listing = tmp_path / "l.csv"
    listing.write_text(f"path,pid,camid\n{image},3,-7\n")
    with pytest.raises(DatasetError, match=r"l.csv:2: camid must be >= 0, or -1 / empty"):
        list_input_images(listing)


def test_sixteen_bit_greyscale_images_are_scaled_not_saturated(trained: Path, tmp_path: Path) -> None:
    from spcl.data.image_dataset import read_image

    ramp = (np.arange(32 * 16, dtype=np.uint32).reshape(32, 16) * 120).astype(np.uint16)  # 0 .. 61,320
    path16 = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path16)
    with Image.open(path16) as check:
        assert check.mode in ("I;16", "I")  # a real 16-bit file
    eight = np.rint(ramp / 257.0).astype(np.uint8)  # by hand: 65535 -> 255
    path8 = tmp_path / "grey8.png"
    Image.fromarray(eight).save(path8)
    read = np.asarray(read_image(str(path16)))
    assert read.shape == (32, 16, 3) and read[..., 0].max() < 255 and read[0, 0, 0] == 0
    np.testing.assert_array_equal(read[..., 0], eight)
    extractor = FeatureExtractor(trained / "last.pth")
    np.testing.assert_allclose(extractor([str(path16)]), extractor([str(path8)]), atol=1e-6)
    np.testing.assert_allclose(extractor(ramp), extractor([str(path8)]), atol=1e-6)  # a uint16 array


def test_ranked_lists_with_a_repeated_index_are_refused() -> None:
    from spcl.evaluation import ImageSet, metrics_from_ranked_lists

    query = ImageSet(pids=np.array([0, 1]), camids=[0, 0])
    gallery = ImageSet(pids=np.array([0, 0, 1, 1]), camids=[1, 1, 1, 1])
    good = metrics_from_ranked_lists(np.array([[0, 2, 1], [2, 3, -1]]), query, gallery)
    assert good["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)  # by hand: hits at 1, 3; and at 1, 2
    with pytest.raises(ValueError, match="query 0 names gallery index 0 more than once"):
        metrics_from_ranked_lists(np.array([[0, 0, 1], [2, 3, -1]]), query, gallery)
    with pytest.raises(ValueError, match="holds gallery index 9"):
        metrics_from_ranked_lists(np.array([[0, 9, 1], [2, 3, -1]]), query, gallery)


def test_a_damaged_feature_file_is_named(tmp_path: Path, capsys) -> None:
    from spcl.inference import FeatureSet, ImageList

    good = tmp_path / "g.npz"
    FeatureSet(np.eye(4, dtype=np.float32), ImageList([f"/x/{i}.jpg" for i in range(4)])).save(good)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut.npz: cannot read it as a feature file of spcl extract: it is truncated"):
        load_features(cut)
    assert main(["search", "--gallery", str(cut), "--query", str(good), "--no-png", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "cut.npz" in err and "unexpected" not in err


def test_bad_search_settings_are_refused_before_any_work(tmp_path: Path, capsys) -> None:
    from spcl.inference import FeatureSet, ImageList

    gallery = tmp_path / "g.npz"
    FeatureSet(np.eye(4, dtype=np.float32), ImageList([f"/x/{i}.jpg" for i in range(4)])).save(gallery)
    for flags in (["--nprobe", "-1"], ["--recall", "1.5"], ["--topk", "0"]):
        assert main(["search", "--gallery", str(gallery), "--query", str(gallery), "--no-png",
                     "--out", str(tmp_path / "s"), *flags]) == 2
        assert "--nprobe must be 0 (automatic) or more" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nprobe"):
        GalleryIndex(np.eye(4, dtype=np.float32), "exact", nprobe=-1)


def test_export_writes_the_opset_asked_for(trained: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from spcl.inference.export import export_onnx
    from spcl.utils.optional import optional

    for opset in (17, 18):  # compared with PyTorch when onnxruntime is installed
        out = export_onnx(trained / "last.pth", tmp_path / f"m{opset}.onnx", opset=opset,
                          check=optional("onnxruntime") is not None)
        model = onnx.load(str(out))
        assert {e.domain or "ai.onnx": e.version for e in model.opset_import}["ai.onnx"] == opset
    with pytest.raises(ValueError, match="opset must be an ONNX opset number"):
        export_onnx(trained / "last.pth", tmp_path / "bad.onnx", opset=3)
    assert not (tmp_path / "bad.onnx").exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# an approximate gallery index knows its recall


def test_an_ivf_index_measures_its_recall_and_raises_nprobe_to_reach_it() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    gallery = rng.standard_normal((4000, 16)).astype(np.float32)
    queries = rng.standard_normal((60, 16)).astype(np.float32)
    index = GalleryIndex(gallery, "ivf", nlist=64, nprobe=1)
    exact, _ = GalleryIndex(gallery, "exact").search(queries, 10)
    found, _ = index.search(queries, 10)
    by_hand = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert index.measure_recall(queries, 10, sample=60) == pytest.approx(by_hand)
    assert by_hand < 0.9  # one list of 64 misses neighbours of random data
    recall, nprobe = index.tune(queries, 10, 0.95, sample=60)
    assert recall >= 0.95 and nprobe == index.nprobe and nprobe > 1 and (nprobe & (nprobe - 1)) == 0  # doubled
    found, _ = index.search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)]) == pytest.approx(recall)
    assert GalleryIndex(gallery, "exact").tune(queries, 10, 0.95) == (1.0, 0)


def test_spcl_search_prints_the_recall_of_an_ivf_index(tmp_path: Path, capsys) -> None:
    pytest.importorskip("faiss")
    from spcl.inference import FeatureSet, ImageList

    rng = np.random.default_rng(5)
    gallery = tmp_path / "g.npz"
    FeatureSet(rng.standard_normal((3000, 16)).astype(np.float32),
               ImageList([f"/x/{i}.jpg" for i in range(3000)])).save(gallery)
    assert main(["search", "--gallery", str(gallery), "--query", str(gallery), "--index", "ivf", "--nprobe", "1",
                 "--recall", "0.9", "--topk", "5", "--no-png", "--json", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "ivf index: recall@5 " in err and "raised from 1 to reach --recall 0.9" in err
    recall = float(err.split("recall@5 ")[1].split()[0])
    assert recall >= 0.9
