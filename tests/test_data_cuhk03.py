"""CUHK03 from a generated ``cuhk-03.mat`` in MATLAB v7.3's layout (HDF5 object references, stored
column-major as MATLAB writes them), its two protocols and both kinds of boxes; counts, identities
and cameras against values computed by hand here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from spcl.data import DatasetError, load
from spcl.data import cuhk03 as cuhk03_module

h5py = pytest.importorskip("h5py")

# persons per camera pair and, for each person, the non-empty slots (1-based; 1-5 view 1, 6-10 view 2)
PERSONS = (3, 2, 2, 1, 1)
SLOTS = {
    (1, 1): (1, 2, 6, 7), (1, 2): (1, 6), (1, 3): (2, 3, 4, 8),
    (2, 1): (1, 6, 7), (2, 2): (5, 10),
    (3, 1): (1, 2, 3, 6), (3, 2): (1, 7),
    (4, 1): (1, 9),
    (5, 1): (3, 4, 8),
}
TEST_SETS = [[(1, 1), (2, 2)], [(1, 3), (3, 1)]] * 10  # 20 sets of [pair, person] rows


def _pixels(pair: int, person: int, slot: int, boxes: str) -> np.ndarray:
    """A distinct H x W x 3 image per slot (detected and labeled differ), to check what was written."""
    value = (pair * 40 + person * 10 + slot + (100 if boxes == "labeled" else 0)) % 256
    image = np.full((6, 4, 3), value, dtype=np.uint8)
    image[0, 0] = (1, 2, 3)
    return image


def write_mat(path: Path) -> None:
    """MATLAB v7.3: ``detected``/``labeled`` (1 x 5 references to persons x 10 cells, stored 10 x
    persons), images stored 3 x W x H, empty cells as a 2-element uint64 array; ``testsets`` (1 x 20
    references to 100 x 2 double arrays, stored 2 x 100)."""
    path.parent.mkdir(parents=True)
    ref = h5py.ref_dtype
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        counter = iter(range(10**6))

        def store(data: np.ndarray) -> object:
            return refs.create_dataset(f"r{next(counter)}", data=data).ref

        empty = store(np.zeros(2, dtype=np.uint64))
        for boxes in ("detected", "labeled"):
            pairs = np.empty((1, 5), dtype=ref)
            for p, persons in enumerate(PERSONS, start=1):
                cells = np.empty((10, persons), dtype=ref)  # transposed, as MATLAB stores persons x 10
                for person in range(1, persons + 1):
                    for slot in range(1, 11):
                        filled = slot in SLOTS[(p, person)]
                        cells[slot - 1, person - 1] = store(_pixels(p, person, slot, boxes).T) if filled else empty
                pairs[0, p - 1] = store(cells)
            f.create_dataset(boxes, data=pairs)
        sets = np.empty((1, len(TEST_SETS)), dtype=ref)
        for k, rows in enumerate(TEST_SETS):
            sets[0, k] = store(np.array(rows, dtype=np.float64).T)
        f.create_dataset("testsets", data=sets)


def _name(pair: int, person: int, slot: int) -> str:
    return f"{pair}_{person:03d}_{1 if slot <= 5 else 2}_{slot:02d}.png"


ALL_FILES = sorted(_name(p, q, s) for (p, q), slots in SLOTS.items() for s in slots)


def write_new_protocol(base: Path, boxes: str, train: list[str], query: list[str], gallery: list[str]) -> None:
    files = sorted(set(train) | set(query) | set(gallery))
    labels = [100 + int(f.split("_")[0]) * 10 + int(f.split("_")[1]) for f in files]  # a global label per person
    position = {f: i + 1 for i, f in enumerate(files)}  # 1-based, as MATLAB writes them
    filelist = np.empty((len(files), 1), dtype=object)
    for i, f in enumerate(files):
        filelist[i, 0] = f
    savemat(base / f"cuhk03_new_protocol_config_{boxes}.mat", {
        "filelist": filelist, "labels": np.array(labels, dtype=np.float64).reshape(-1, 1),
        **{f"{key}_idx": np.array([position[f] for f in names], dtype=np.float64).reshape(-1, 1)
           for key, names in (("train", train), ("query", query), ("gallery", gallery))},
    })


@pytest.fixture
def cuhk03_root(tmp_path: Path) -> Path:
    base = tmp_path / "cuhk03"
    write_mat(base / "cuhk03_release" / "cuhk-03.mat")
    train = [f for f in ALL_FILES if f.startswith(("1_001", "2_001", "3_002"))]
    query = [f for f in ALL_FILES if f.startswith(("1_002", "4_001")) and f.split("_")[2] == "1"]
    gallery = [f for f in ALL_FILES if f.startswith(("1_002", "4_001", "5_001")) and f.split("_")[2] == "2"]
    for boxes in ("detected", "labeled"):
        write_new_protocol(base, boxes, train, query, gallery)
    return tmp_path


def test_mat_is_extracted_once_with_names_views_and_pixels(cuhk03_root: Path) -> None:
    data = load("cuhk03", cuhk03_root, protocol="classic", split=0)
    folder = cuhk03_root / "cuhk03" / "images_detected"
    assert sorted(p.name for p in folder.glob("*.png")) == ALL_FILES  # empty cells skipped
    pixels = np.asarray(Image.open(folder / "3_001_2_06.png"))
    assert pixels.shape == (6, 4, 3) and (pixels == _pixels(3, 1, 6, "detected")).all()
    assert (folder / ".spcl-complete").is_file()
    assert not (cuhk03_root / "cuhk03" / "images_labeled").exists()  # only the boxes asked for
    load("cuhk03", cuhk03_root, protocol="classic", boxes="labeled")
    labeled = np.asarray(Image.open(cuhk03_root / "cuhk03" / "images_labeled" / "3_001_2_06.png"))
    assert (labeled == _pixels(3, 1, 6, "labeled")).all()
    assert len(data.train) + len(data.query) == len(ALL_FILES)


def test_classic_split_cameras_and_identities(cuhk03_root: Path) -> None:
    for split, test_persons in ((0, {(1, 1), (2, 2)}), (3, {(1, 3), (3, 1)})):
        data = load("cuhk03", cuhk03_root, protocol="classic", boxes="detected", split=split)
        test_files = sorted(f for f in ALL_FILES if (int(f[0]), int(f[2:5])) in test_persons)
        assert data.name == f"cuhk03-detected-classic-split{split}"
        assert _names(data.query) == _names(data.gallery) == test_files
        assert data.num_train_pids == 9 - 2 and len(data.train) == len(ALL_FILES) - len(test_files)
        for path, pid, cam in data.query:
            pair, person, view = (int(x) for x in Path(path).stem.split("_")[:3])
            assert pid == pair * 1000 + person and cam == 2 * (pair - 1) + view - 1
    cameras = {cam for _, _, cam in load("cuhk03", cuhk03_root, protocol="classic").train}
    assert cameras == set(range(10))  # five pairs x two views, all apart


def test_new_protocol_reads_its_config(cuhk03_root: Path) -> None:
    data = load("cuhk03", cuhk03_root, protocol="new", boxes="detected")
    assert data.name == "cuhk03-detected"
    assert len(data.train) == 4 + 3 + 2 and data.num_train_pids == 3  # slots of 1_001, 2_001, 3_002
    assert _names(data.query) == ["1_002_1_01.png", "4_001_1_01.png"]
    assert _names(data.gallery) == ["1_002_2_06.png", "4_001_2_09.png", "5_001_2_08.png"]
    assert {pid for _, pid, _ in data.query} == {112, 141}  # the config's labels
    assert sorted(cam for _, _, cam in data.gallery) == [1, 7, 9]
    assert load("cuhk03", cuhk03_root).name == "cuhk03-detected"  # the defaults: new protocol, detected boxes


def test_torchreid_extracted_folder_without_the_mat(cuhk03_root: Path) -> None:
    load("cuhk03", cuhk03_root)  # extracts
    base = cuhk03_root / "cuhk03"
    (base / "cuhk03_release" / "cuhk-03.mat").unlink()
    (base / "images_detected" / ".spcl-complete").unlink()  # torchreid writes no mark
    assert len(load("cuhk03", base).query) == 2  # new protocol: images and config suffice
    with pytest.raises(DatasetError, match="splits_classic_detected.json"):
        load("cuhk03", cuhk03_root, protocol="classic")
    # torchreid's classic split file: absolute paths of the machine that wrote it
    splits = [{"train": [], "query": [[f"/elsewhere/images_detected/{f}", 0, 0] for f in ALL_FILES
                                     if (int(f[0]), int(f[2:5])) in set(rows)], "gallery": []} for rows in TEST_SETS]
    (base / "splits_classic_detected.json").write_text(json.dumps(splits))
    data = load("cuhk03", cuhk03_root, protocol="classic", split=1)
    assert {pid for _, pid, _ in data.query} == {1003, 3001}


def test_extraction_resumes_and_never_leaves_a_partial_image(cuhk03_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image as PILImage

    folder = cuhk03_root / "cuhk03" / "images_detected"
    real_save = PILImage.Image.save
    calls = {"n": 0}

    def failing_save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            Path(fp).write_bytes(b"\x89PNG half")  # a write cut short ...
            raise OSError(28, "No space left on device")  # ... by a full disk
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", failing_save)
    with pytest.raises(OSError, match="extracted CUHK03 image"):
        load("cuhk03", cuhk03_root)
    written = sorted(p.name for p in folder.iterdir())
    assert written == ALL_FILES[:4]  # four complete images, no temporary file, no mark
    times = {p: os.stat(folder / p).st_mtime_ns for p in written}
    monkeypatch.setattr(PILImage.Image, "save", real_save)
    data = load("cuhk03", cuhk03_root, protocol="classic")
    assert sorted(p.name for p in folder.glob("*.png")) == ALL_FILES
    assert all(os.stat(folder / p).st_mtime_ns == t for p, t in times.items())  # kept, not rewritten
    assert len(data.train) + len(data.query) == len(ALL_FILES)


def test_options_are_checked(cuhk03_root: Path) -> None:
    with pytest.raises(DatasetError, match="protocol must be new or classic"):
        load("cuhk03", cuhk03_root, protocol="np")
    with pytest.raises(DatasetError, match="boxes must be detected or labeled"):
        load("cuhk03", cuhk03_root, boxes="manual")
    with pytest.raises(DatasetError, match=r"split must be an integer in 0\.\.19"):
        load("cuhk03", cuhk03_root, protocol="classic", split=20)
    with pytest.raises(DatasetError, match=r"protocol new\): split must be an integer in 0\.\.0"):
        load("cuhk03", cuhk03_root, split=1)


def test_not_a_mat_file(tmp_path: Path) -> None:
    mat = tmp_path / "cuhk03" / "cuhk03_release" / "cuhk-03.mat"
    mat.parent.mkdir(parents=True)
    mat.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DatasetError, match="not a MATLAB v7.3"):
        load("cuhk03", tmp_path)


def test_missing_h5py_says_how_to_install(cuhk03_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spcl.utils.optional import MissingPackage

    monkeypatch.setattr(cuhk03_module, "need", lambda module, purpose, instead="": (_ for _ in ()).throw(
        MissingPackage(f"{purpose} needs {module} (not installed): pip install h5py; or {instead}")))
    with pytest.raises(MissingPackage, match="needs h5py"):
        load("cuhk03", cuhk03_root)


def _names(items: list) -> list[str]:
    return sorted(Path(p).name for p, _, _ in items)
