"""The small person sets (CUHK01, CUHK02, VIPeR, GRID, PRID, iLIDS) on generated trees of their
published layouts: counts, identities, cameras and splits against values computed by hand here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from spcl.data import DatasetError, load


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (10, 20, 30)).save(path)


def _ids(items: list) -> set[int]:
    return {pid for _, pid, _ in items}


def _names(items: list) -> list[str]:
    return sorted(Path(p).name for p, _, _ in items)


def _expected_split(ids: list[int], num_train: int, k: int) -> tuple[set[int], set[int]]:
    """The documented draw, written out: default_rng(k) permutes the ascending identities."""
    order = np.random.default_rng(k).permutation(len(ids))
    ordered = sorted(ids)
    train = {ordered[i] for i in order[:num_train]}
    return train, set(ids) - train


# ----------------------------------------------------------------------------------------------------
# VIPeR


@pytest.fixture
def viper_root(tmp_path: Path) -> Path:
    for i in range(10):
        _image(tmp_path / "viper" / "VIPeR" / "cam_a" / f"{i:03d}_45.bmp")
        _image(tmp_path / "viper" / "VIPeR" / "cam_b" / f"{i:03d}_90.bmp")
    return tmp_path


def test_viper_split_sizes_cameras_and_the_documented_seed(viper_root: Path) -> None:
    for k in (0, 3):
        data = load("viper", viper_root, split=k)
        train_ids, test_ids = _expected_split(list(range(10)), 5, k)
        assert data.name == f"viper-split{k}"
        assert len(data.train) == 10 and data.num_train_pids == 5
        assert _ids(data.query) == _ids(data.gallery) == test_ids
        assert {Path(p).name[:3] for p, _, _ in data.train} == {f"{i:03d}" for i in train_ids}
        assert {c for _, _, c in data.query} == {0} and {c for _, _, c in data.gallery} == {1}
        assert all("cam_a" in p for p, _, _ in data.query) and all("cam_b" in p for p, _, _ in data.gallery)
        assert _ids(data.train) == set(range(5))  # relabelled
    assert _ids(load("viper", viper_root, split=0).query) != _ids(load("viper", viper_root, split=1).query)


def test_split_file_is_written_once_then_read_back(viper_root: Path) -> None:
    first = load("viper", viper_root, split=2)
    path = viper_root / "viper" / "VIPeR" / "splits_viper.json"
    record = json.loads(path.read_text())
    assert record["identities"] == list(range(10)) and len(record["splits"]) == 10
    assert "default_rng" in record["seed"]
    # a split file edited by hand (or from another machine's draw) is what later loads use
    record["splits"][2] = {"train": [0, 1, 2, 3, 4], "test": [5, 6, 7, 8, 9]}
    path.write_text(json.dumps(record))
    again = load("viper", viper_root, split=2)
    assert _ids(again.query) == {5, 6, 7, 8, 9}
    assert _ids(first.query) == _expected_split(list(range(10)), 5, 2)[1]


def test_split_file_of_other_images_is_refused(viper_root: Path) -> None:
    load("viper", viper_root)
    for cam in ("cam_a", "cam_b"):
        next((viper_root / "viper" / "VIPeR" / cam).iterdir()).unlink()
    with pytest.raises(DatasetError, match=r"splits_viper\.json.*drawn for 10 identities.*9"):
        load("viper", viper_root)


def test_viper_unpaired_cameras_are_reported(viper_root: Path) -> None:
    (viper_root / "viper" / "VIPeR" / "cam_b" / "003_90.bmp").unlink()
    _image(viper_root / "viper" / "VIPeR" / "cam_b" / "077_90.bmp")
    with pytest.raises(DatasetError, match="name different persons"):
        load("viper", viper_root)


def test_viper_found_from_dataset_folder_and_fastreid_nesting(viper_root: Path) -> None:
    assert len(load("viper", viper_root / "viper").query) == 5
    assert len(load("viper", viper_root / "viper" / "VIPeR").query) == 5


@pytest.mark.parametrize("split", [-1, 10, 1.5, True])
def test_split_index_out_of_range(viper_root: Path, split: object) -> None:
    with pytest.raises(DatasetError, match=r"split must be an integer in 0\.\.9"):
        load("viper", viper_root, split=split)


def test_read_only_data_folder_still_gets_the_seeded_splits(viper_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spcl.data import splits
    from spcl.utils.files import OutputError

    def refuse(path, text, what="output"):
        raise OutputError(30, f"cannot write {what} {path}: read-only file system", str(path))

    monkeypatch.setattr(splits, "write_text", refuse)
    data = load("viper", viper_root, split=4)
    assert _ids(data.query) == _expected_split(list(range(10)), 5, 4)[1]
    assert not (viper_root / "viper" / "VIPeR" / "splits_viper.json").exists()


# ----------------------------------------------------------------------------------------------------
# CUHK01


def _cuhk01_tree(folder: Path, persons: int = 7) -> None:
    for p in range(1, persons + 1):
        for c in range(1, 5):
            _image(folder / "campus" / f"{p:04d}{c:03d}.png")


def test_cuhk01_cameras_and_half_split(tmp_path: Path) -> None:
    _cuhk01_tree(tmp_path / "cuhk01")
    data = load("cuhk01", tmp_path, split=1)
    train_ids, test_ids = _expected_split(list(range(1, 8)), 3, 1)
    assert data.num_train_pids == 3 and len(data.train) == 12
    assert _ids(data.query) == _ids(data.gallery) == test_ids
    assert len(data.query) == len(data.gallery) == 8  # 4 persons x 2 images per camera
    assert _names(data.query) == sorted(f"{p:04d}{c:03d}.png" for p in test_ids for c in (1, 2))
    assert {c for _, _, c in data.query} == {0} and {c for _, _, c in data.gallery} == {1}


@pytest.mark.parametrize("inside", ["campus", "CUHK01/campus"])
def test_cuhk01_unpacks_its_zip_once(tmp_path: Path, inside: str) -> None:
    import zipfile

    staged = tmp_path / "staged"
    _cuhk01_tree(staged, persons=4)
    folder = tmp_path / "cuhk01"
    folder.mkdir()
    with zipfile.ZipFile(folder / "CUHK01.zip", "w") as zf:
        for path in sorted((staged / "campus").iterdir()):
            zf.write(path, f"{inside}/{path.name}")
    data = load("cuhk01", tmp_path)
    assert len(data.train) + len(data.query) + len(data.gallery) == 16
    assert (folder / "campus").is_dir() and not [p for p in folder.iterdir() if p.name.startswith(".campus")]


def test_cuhk01_bad_name(tmp_path: Path) -> None:
    _cuhk01_tree(tmp_path / "cuhk01", persons=2)
    _image(tmp_path / "cuhk01" / "campus" / "person1.png")
    with pytest.raises(DatasetError, match="person1.png: expected a CUHK01 file name"):
        load("cuhk01", tmp_path)


# ----------------------------------------------------------------------------------------------------
# CUHK02


def test_cuhk02_pairs_train_and_p5_tests(tmp_path: Path) -> None:
    base = tmp_path / "cuhk02" / "Dataset"
    for pair in ("P1", "P2", "P3", "P4", "P5"):
        for person in (1, 2):  # every pair numbers its persons from 1
            for view in (1, 2):
                _image(base / pair / f"cam{view}" / f"{person:04d}_{view}.png")
    data = load("cuhk02", tmp_path)
    assert data.num_train_pids == 8 and len(data.train) == 16  # persons of P1..P4 kept apart
    assert sorted({c for _, _, c in data.train}) == list(range(8))
    assert {c for _, _, c in data.query} == {8} and {c for _, _, c in data.gallery} == {9}
    assert _ids(data.query) == _ids(data.gallery) == {1, 2}
    with pytest.raises(DatasetError, match=r"split must be an integer in 0\.\.0"):
        load("cuhk02", tmp_path, split=1)


# ----------------------------------------------------------------------------------------------------
# GRID


def _grid_tree(root: Path, splits: list[list[int]]) -> Path:
    base = root / "grid" / "underground_reid"
    for person in range(1, 7):
        _image(base / "probe" / f"{person:04d}_{person % 8 + 1}_x.jpeg")
        _image(base / "gallery" / f"{person:04d}_{(person + 3) % 8 + 1}_x.jpeg")
    for d in range(3):
        _image(base / "gallery" / f"0000_{d + 1}_d{d}.jpeg")
    record = np.dtype([("cam", "O"), ("fid", "O"), ("personIdx", "O")])
    cells = np.empty((1, len(splits)), dtype=object)
    for k, ids in enumerate(splits):
        entry = np.zeros((1, 1), dtype=record)
        entry[0, 0]["cam"], entry[0, 0]["fid"] = np.array([[1]]), np.array([[2]])
        entry[0, 0]["personIdx"] = np.array([ids], dtype=np.float64)
        cells[0, k] = entry
    savemat(base / "features_and_partitions.mat", {"trainIdxAll": cells})
    return base


def test_grid_splits_come_from_its_mat(tmp_path: Path) -> None:
    splits = [[1 + (k % 5), 2 + (k % 5)] for k in range(10)]
    base = _grid_tree(tmp_path, splits)
    mat = loadmat(base / "features_and_partitions.mat")
    assert mat["trainIdxAll"][0][4][0][0][2][0].tolist() == [5, 6]  # torchreid's indexing reads the same file
    data = load("grid", tmp_path, split=4)
    assert data.num_train_pids == 2 and len(data.train) == 4
    assert _ids(data.query) == {1, 2, 3, 4}
    assert len(data.gallery) == 4 + 3 and _ids(data.gallery) == {0, 1, 2, 3, 4}
    person = next(it for it in data.query if it[1] == 3)
    assert person[2] == 3  # file 0003_4_...: camera 4 - 1


def test_grid_split_with_persons_without_images(tmp_path: Path) -> None:
    _grid_tree(tmp_path, [[1, 99]] * 10)
    with pytest.raises(DatasetError, match=r"split 0 trains on persons without images.*99"):
        load("grid", tmp_path)


# ----------------------------------------------------------------------------------------------------
# PRID2011


def test_prid_query_cam_a_gallery_cam_b_with_distractors(tmp_path: Path) -> None:
    base = tmp_path / "prid2011" / "prid_2011" / "single_shot"
    for person in range(1, 8):  # 1-4 in both cameras, 5-6 only in cam_a, 7 only in cam_b (and 5 in cam_b)
        if person <= 6:
            _image(base / "cam_a" / f"person_{person:04d}.png")
    for person in (1, 2, 3, 4, 7, 8):
        _image(base / "cam_b" / f"person_{person:04d}.png")
    data = load("prid", tmp_path, split=2)
    train_ids, test_ids = _expected_split([1, 2, 3, 4], 2, 2)
    assert data.num_train_pids == 2 and len(data.train) == 4
    assert _ids(data.query) == test_ids and len(data.query) == 2
    assert _ids(data.gallery) == test_ids | {7, 8} and len(data.gallery) == 4
    assert {c for _, _, c in data.query} == {0} and {c for _, _, c in data.gallery} == {1}


# ----------------------------------------------------------------------------------------------------
# QMUL iLIDS


def test_ilids_one_query_and_one_gallery_image_per_test_person(tmp_path: Path) -> None:
    base = tmp_path / "ilids" / "i-LIDS_Pedestrian" / "Persons"
    counts = {1: 4, 2: 3, 3: 2, 4: 4, 5: 2}
    for person, n in counts.items():
        for i in range(1, n + 1):
            _image(base / f"{person:04d}{i:03d}.jpg")
    data = load("ilids", tmp_path, split=3)
    train_ids, test_ids = _expected_split(list(counts), 2, 3)
    assert data.num_train_pids == 2 and len(data.train) == sum(counts[p] for p in train_ids)
    assert _ids(data.query) == _ids(data.gallery) == test_ids
    assert len(data.query) == len(data.gallery) == 3
    for (qp, qpid, qcam), (gp, gpid, gcam) in zip(sorted(data.query, key=lambda i: i[1]), sorted(data.gallery, key=lambda i: i[1])):
        assert qpid == gpid and qp != gp and qcam == int(Path(qp).stem[4:]) - 1
    again = load("ilids", tmp_path, split=3)
    assert again.query == data.query and again.gallery == data.gallery  # the image draw is in the file
    (base / Path(data.query[0][0]).name).unlink()
    with pytest.raises(DatasetError, match="splits_ilids.json"):
        load("ilids", tmp_path, split=3)


def test_every_reader_names_its_layout_when_missing(tmp_path: Path) -> None:
    for name in ("cuhk01", "cuhk02", "viper", "grid", "prid", "ilids", "cuhk03"):
        with pytest.raises(DatasetError, match="expected"):
            load(name, tmp_path)


def _trees(root: Path) -> dict[str, Path]:
    """One small tree of each layout under ``root``; the dataset folder of each."""
    for i in range(4):
        _image(root / "viper" / "VIPeR" / "cam_a" / f"{i:03d}_0.bmp")
        _image(root / "viper" / "VIPeR" / "cam_b" / f"{i:03d}_1.bmp")
    _cuhk01_tree(root / "cuhk01", persons=4)
    for pair in ("P1", "P2", "P3", "P4", "P5"):
        for view in (1, 2):
            _image(root / "cuhk02" / "Dataset" / pair / f"cam{view}" / f"0001_{view}.png")
    _grid_tree(root, [[1, 2]] * 10)
    for person in (1, 2, 3, 4):
        _image(root / "prid2011" / "prid_2011" / "single_shot" / "cam_a" / f"person_{person:04d}.png")
        _image(root / "prid2011" / "prid_2011" / "single_shot" / "cam_b" / f"person_{person:04d}.png")
        for i in (1, 2):
            _image(root / "ilids" / "i-LIDS_Pedestrian" / "Persons" / f"{person:04d}{i:03d}.jpg")
    return {"viper": root / "viper", "cuhk01": root / "cuhk01", "cuhk02": root / "cuhk02", "grid": root / "grid",
            "prid": root / "prid2011", "ilids": root / "ilids"}


def test_data_root_and_dataset_folder_read_the_same(tmp_path: Path) -> None:
    for name, folder in _trees(tmp_path).items():
        from_root, from_folder = load(name, tmp_path), load(name, folder)
        assert from_root.train == from_folder.train and from_root.query == from_folder.query, name
        assert from_root.gallery == from_folder.gallery and from_root.query, name


def test_data_info_and_datasets_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spcl.cli import main

    _trees(tmp_path)
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    assert all(f"\n{name} " in "\n" + listed for name in ("cuhk01", "cuhk02", "cuhk03", "viper", "grid", "prid", "ilids"))
    assert main(["data-info", "viper", "--data-root", str(tmp_path), "--split", "3"]) == 0
    out = capsys.readouterr().out
    assert "dataset viper-split3" in out and "query   |       2 |      2 |       1" in out


def test_fastreid_train_only_layouts(tmp_path: Path) -> None:
    """fast-reid's GRID, PRID and iLIDS folders: training images only, cameras numbered in sorted
    order of their labels; GRID's distractors (person 0) left out."""
    for name in ("0001_1_a.jpeg", "0001_3_b.jpeg", "0002_3_c.jpeg", "0000_2_d.jpeg"):
        _image(tmp_path / "underground_reid" / "images" / name)
    for person, cams in (("person_0007", ("cam_a", "cam_b")), ("person_0009", ("cam_b",))):
        for cam in cams:
            _image(tmp_path / "prid_2011" / "slim_train" / person / f"{cam.replace('_', '-')}_1.png")
    for person, cams in (("0003", ("1", "2", "2")), ("0004", ("1",))):
        for i, cam in enumerate(cams):
            _image(tmp_path / "iLIDS" / person / f"{cam}_{i}.png")
    grid = load("grid", tmp_path)
    assert grid.name == "grid-train-only" and not grid.query and not grid.gallery
    assert [(Path(p).name, pid, cam) for p, pid, cam in grid.train] == [
        ("0001_1_a.jpeg", 0, 0), ("0001_3_b.jpeg", 0, 1), ("0002_3_c.jpeg", 1, 1)]
    prid = load("prid", tmp_path, split=4)
    assert prid.num_train_pids == 2 and [cam for _, _, cam in prid.train] == [0, 1, 1]
    ilids = load("ilids", tmp_path)
    assert ilids.num_train_pids == 2 and len(ilids.train) == 4 and {c for _, _, c in ilids.train} == {0, 1}


def test_dg_leaves_out_a_train_only_set(tmp_path: Path) -> None:
    from spcl.evaluation.dg import present_datasets

    _image(tmp_path / "underground_reid" / "images" / "0001_1_a.jpeg")
    _trees(tmp_path / "full")
    present, absent = present_datasets(["grid", "viper"], tmp_path)
    assert present == [] and "training images only" in absent["grid"]
    present, absent = present_datasets(["grid", "viper"], tmp_path / "full")
    assert present == ["grid", "viper"] and not absent
