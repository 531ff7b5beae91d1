"""Dataset readers on tiny fake trees that follow each dataset's real file-name conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spcl.data as data
from spcl.data import DatasetError, ImageDataset, camera_codes, load, register_dataset
from spcl.evaluation import ImageSet, metrics_from_features


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 4, 3), 127, np.uint8)).save(path)
    return path


def _market_tree(base: Path, train, query, gallery) -> Path:
    for folder, names in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        (base / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            _img(base / folder / name)
    (base / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    return base


def _rel(items):
    return [(Path(p).name, pid, cam) for p, pid, cam in items]


@pytest.fixture()
def market_root(tmp_path: Path) -> Path:
    _market_tree(
        tmp_path / "Market-1501-v15.09.15",
        train=["0007_c2s1_000001_01.jpg", "0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0010_c6s2_000001_02.jpg"],
        query=["0003_c1s1_000001_00.jpg", "-1_c2s1_000001_00.jpg"],
        gallery=["0003_c2s1_000002_01.jpg", "0000_c1s1_000003_01.jpg", "-1_c1s1_000004_01.jpg"],
    )
    return tmp_path


def test_market1501_relabels_sorts_and_drops_junk(market_root: Path) -> None:
    ds = load("market1501", market_root)
    assert _rel(ds.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c3s1_000551_01.jpg", 0, 2),
        ("0007_c2s1_000001_01.jpg", 1, 1),
        ("0010_c6s2_000001_02.jpg", 2, 5),
    ]
    assert ds.num_train_pids == 3
    assert _rel(ds.query) == [("0003_c1s1_000001_00.jpg", 3, 0)]
    # the distractor (id 0) stays as a negative; junk (-1) is dropped
    assert sorted(_rel(ds.gallery)) == [("0000_c1s1_000003_01.jpg", 0, 0), ("0003_c2s1_000002_01.jpg", 3, 1)]
    stats = ds.statistics()
    assert stats["train"] == {"images": 4, "ids": 3, "unlabelled": 0, "cameras": 4}


def test_market1501_found_in_reference_nesting(tmp_path: Path, market_root: Path) -> None:
    nested = tmp_path / "nested" / "market1501"
    nested.mkdir(parents=True)
    (market_root / "Market-1501-v15.09.15").rename(nested / "Market-1501-v15.09.15")
    assert len(load("market1501", tmp_path / "nested").train) == 4
    # the dataset folder itself works as a root too
    assert len(load("market1501", nested / "Market-1501-v15.09.15").train) == 4


def test_missing_layout_names_expected_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Market-1501-v15.09.15.*bounding_box_train"):
        load("market1501", tmp_path)
    (tmp_path / "Market-1501-v15.09.15" / "bounding_box_train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="looked in"):
        load("market1501", tmp_path)


def test_badly_named_image_is_reported(tmp_path: Path) -> None:
    base = _market_tree(tmp_path / "Market-1501-v15.09.15", ["0001_c1s1_000001_00.jpg"], [], [])
    _img(base / "bounding_box_train" / "holiday.jpg")
    with pytest.raises(DatasetError, match="holiday.jpg"):
        load("market1501", tmp_path)


def test_dukemtmc_warns_withdrawn(tmp_path: Path) -> None:
    _market_tree(tmp_path / "DukeMTMC-reID", ["0005_c2_f0046985.jpg", "0005_c5_f0051291.jpg"], ["0006_c1_f1.jpg"], ["0006_c3_f2.jpg"])
    with pytest.warns(UserWarning, match="withdrawn"):
        ds = load("dukemtmc", tmp_path)
    assert _rel(ds.train) == [("0005_c2_f0046985.jpg", 0, 1), ("0005_c5_f0051291.jpg", 0, 4)]


def test_personx_multi_digit_cameras(tmp_path: Path) -> None:
    _market_tree(
        tmp_path / "PersonX",
        ["0001_c3s1_000001_00.jpg", "0001_c10s1_000002_00.jpg", "0004_c12s1_000003_00.jpg"],
        ["0009_c11s1_000004_00.jpg"],
        ["0009_c4s1_000005_00.jpg", "0009_c8s1_000006_00.jpg"],
    )
    ds = load("personx", tmp_path)
    assert sorted((pid, cam) for _, pid, cam in ds.train) == [(0, 0), (0, 3), (1, 5)]
    assert ds.query[0][2] == 4
    assert sorted(cam for _, _, cam in ds.gallery) == [1, 2]


def test_personx_unknown_camera(tmp_path: Path) -> None:
    _market_tree(tmp_path / "PersonX", ["0001_c5s1_000001_00.jpg"], [], [])
    with pytest.raises(DatasetError, match="c5"):
        load("personx", tmp_path)


def test_veri_three_digit_cameras(tmp_path: Path) -> None:
    base = tmp_path / "VeRi"
    for folder, names in (
        ("image_train", ["0001_c001_00016450_0.jpg", "0001_c020_00016460_0.jpg", "0003_c005_00001_1.jpg"]),
        ("image_query", ["0002_c002_00030600_0.jpg"]),
        ("image_test", ["0002_c003_00030605_1.jpg", "0002_c002_00030610_1.jpg"]),
    ):
        for n in names:
            _img(base / folder / n)
    ds = load("veri", tmp_path)
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 0), (0, 19), (1, 4)]
    assert ds.query[0][1:] == (2, 1)
    # a VeRi folder is recognised without its name
    assert load(base).name == "veri"


def test_vehiclex_is_train_only(tmp_path: Path) -> None:
    for n in ["0001_c006_000001.jpg", "0001_c036_000002.jpg", "0002_c010_000003.jpg"]:
        _img(tmp_path / "AIC20_ReID_Simulation" / "image_train" / n)
    ds = load("vehiclex", tmp_path)
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 0), (0, 30), (1, 4)]
    assert ds.query == [] and ds.gallery == []


def _msmt_tree(tmp_path: Path, folder: str, train_dir: str, test_dir: str) -> Path:
    base = tmp_path / folder
    lists = {
        "list_train.txt": [("0000/0000_000_01_0303morning_0015_0.jpg", 0), ("0000/0000_001_05_0303morning_0016_0.jpg", 0), ("0002/0002_005_14_0303noon_0001_1.jpg", 2)],
        "list_val.txt": [("0001/0001_002_03_0303afternoon_0020_0.jpg", 1)],
        "list_query.txt": [("0000/0000_000_15_0113morning_0001_0.jpg", 0)],
        "list_gallery.txt": [("0000/0000_001_02_0113morning_0002_0.jpg", 0), ("0001/0001_000_02_0113noon_0002_0.jpg", 1)],
    }
    for name, rows in lists.items():
        image_dir = base / (train_dir if name in ("list_train.txt", "list_val.txt") else test_dir)
        for rel, _ in rows:
            _img(image_dir / rel)
        (base / name).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))
    return base


@pytest.mark.parametrize("folder,train_dir,test_dir", [("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2")])
def test_msmt17_train_is_train_plus_val(tmp_path: Path, folder: str, train_dir: str, test_dir: str) -> None:
    _msmt_tree(tmp_path, folder, train_dir, test_dir)
    ds = load("msmt17", tmp_path)
    assert [(Path(p).name[:4], pid, cam) for p, pid, cam in ds.train] == [
        ("0000", 0, 0), ("0000", 0, 4), ("0001", 1, 2), ("0002", 2, 13)
    ]
    assert ds.num_train_pids == 3
    assert [(pid, cam) for _, pid, cam in ds.query] == [(0, 14)]
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(0, 1), (1, 1)]


def test_msmt17_missing_image_named(tmp_path: Path) -> None:
    base = _msmt_tree(tmp_path, "MSMT17_V1", "train", "test")
    (base / "test" / "0001" / "0001_000_02_0113noon_0002_0.jpg").unlink()
    with pytest.raises(DatasetError, match="0001_000_02_0113noon_0002_0.jpg"):
        load("msmt17", tmp_path)


def _vehicleid_tree(tmp_path: Path) -> Path:
    base = tmp_path / "VehicleID"
    train = [(f"{i:07d}", 10 + i // 3) for i in range(9)]
    test = [(f"{100 + i:07d}", 500 + i // 4) for i in range(40)]
    for name, _ in train + test:
        _img(base / "image" / f"{name}.jpg")
    split = base / "train_test_split"
    split.mkdir(parents=True)
    (split / "train_list.txt").write_text("".join(f"{n} {v}\n" for n, v in train))
    for size in (800, 1600, 2400):
        (split / f"test_list_{size}.txt").write_text("".join(f"{n} {v}\n" for n, v in test))
    return base


def test_vehicleid_one_gallery_image_per_identity(tmp_path: Path) -> None:
    _vehicleid_tree(tmp_path)
    ds = load("vehicleid", tmp_path, test_size=800, draw=0)
    assert ds.num_train_pids == 3 and len(ds.train) == 9
    assert all(cam is None for _, _, cam in ds.train + ds.query + ds.gallery)  # no cameras
    assert ds.test == [t for t in ds.test if t in ds.query or t in ds.gallery] and len(ds.test) == 40
    gallery_pids = [pid for _, pid, _ in ds.gallery]
    assert sorted(gallery_pids) == list(range(500, 510))
    assert len(ds.query) == 30
    # every image its own camera: the same-camera filter can never remove a true match
    cams = camera_codes([cam for _, _, cam in ds.train + ds.query + ds.gallery])
    assert len(set(cams)) == len(cams)
    other = load("vehicleid", tmp_path, test_size=800, draw=1)
    assert {p for p, _, _ in other.gallery} != {p for p, _, _ in ds.gallery}
    again = load("vehicleid", tmp_path, test_size=800, draw=0)
    assert again.gallery == ds.gallery
    with pytest.raises(DatasetError, match="test_size"):
        load("vehicleid", tmp_path, test_size=900)


def test_manifest_with_and_without_cameras(tmp_path: Path) -> None:
    for n in ["a.jpg", "b.jpg", "c.jpg", "q.jpg", "g1.jpg", "g2.jpg"]:
        _img(tmp_path / "imgs" / n)
    (tmp_path / "m.csv").write_text(
        "path,split,pid,camid\nimgs/b.jpg,train,42,0\nimgs/a.jpg,train,7,1\nimgs/c.jpg,train,,2\n"
        "imgs/q.jpg,query,5,0\nimgs/g1.jpg,gallery,5,1\nimgs/g2.jpg,gallery,6,0\n"
    )
    ds = load(tmp_path / "m.csv")
    assert _rel(ds.train) == [("a.jpg", 0, 1), ("b.jpg", 1, 0), ("c.jpg", -1, 2)]
    assert ds.num_train_pids == 2 and all(cam is not None for _, _, cam in ds.train + ds.query + ds.gallery)
    assert ds.statistics()["train"]["unlabelled"] == 1
    (tmp_path / "n.csv").write_text("path,split,pid\nimgs/a.jpg,train,-1\nimgs/q.jpg,query,5\nimgs/g1.jpg,gallery,5\nimgs/q.jpg,gallery,5\n")
    ds = load(tmp_path / "n.csv")
    assert all(cam is None for _, _, cam in ds.train + ds.query + ds.gallery)
    # without cameras every image is its own camera: the evaluation removes the query's own file
    # from the gallery, and no other true match
    features = np.eye(3)[[0, 1, 0]]  # the query, g1, and the query's own file again
    result = metrics_from_features(
        ImageSet.from_items(ds.query, features[:1]), ImageSet.from_items(ds.gallery, features[1:])
    )
    assert result["num_matches"].tolist() == [1] and result["first_match_rank"].tolist() == [1]


@pytest.mark.parametrize(
    "text,message",
    [
        ("path,pid\nimgs/a.jpg,1\n", "expected columns"),
        ("path,split,pid\nimgs/a.jpg,test,1\n", "split must be"),
        ("path,split,pid\nimgs/a.jpg,query,\n", "must carry a pid"),
        ("path,split,pid\nimgs/zz.jpg,train,1\n", "zz.jpg does not exist"),
        ("path,split,pid\nimgs/a.jpg,train,x\n", "pid must be"),
    ],
)
def test_manifest_errors(tmp_path: Path, text: str, message: str) -> None:
    _img(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load(tmp_path / "m.csv")


def test_image_folder_layout(tmp_path: Path) -> None:
    for rel in ["train/alice/1.jpg", "train/alice/2.jpg", "train/bob/1.png", "train/loose.jpg",
                "query/carol/1.jpg", "gallery/carol/2.jpg", "gallery/dave/1.jpg"]:
        _img(tmp_path / "site" / rel)
    ds = load(tmp_path / "site")
    assert [(Path(p).parent.name + "/" + Path(p).name, pid) for p, pid, _ in ds.train] == [
        ("alice/1.jpg", 0), ("alice/2.jpg", 0), ("bob/1.png", 1), ("train/loose.jpg", -1)
    ]
    assert ds.query[0][1] == ds.gallery[0][1] != ds.gallery[1][1]
    assert all(cam is None for _, _, cam in ds.train + ds.query + ds.gallery)


def test_market_style_folder_detected(tmp_path: Path) -> None:
    _market_tree(tmp_path / "mine", ["0001_c4s1_000001_00.jpg", "0002_c9s1_000001_00.jpg"], [], [])
    ds = load(tmp_path / "mine")
    assert [cam for _, _, cam in ds.train] == [0, 1]


def test_unknown_name_or_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a known dataset"):
        load("no-such-dataset")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="could not recognise the layout"):
        load(tmp_path / "empty")


def test_corrupt_image_names_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        ImageDataset([(str(bad), 0, 0)])[0]


def test_registry_accepts_user_reader(tmp_path: Path) -> None:
    name = "unit-test-toy"

    @register_dataset(name)
    def read_toy(root: Path, size: int = 2) -> data.Dataset:
        return data.Dataset(name=name, root=str(root), train=[(str(root / f"{i}.jpg"), i, 0) for i in range(size)])

    assert load(name, tmp_path, size=3).num_train_pids == 3
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(name)(read_toy)


def test_fingerprint_tracks_training_list(market_root: Path) -> None:
    a = load("market1501", market_root)
    b = load("market1501", market_root)
    assert a.fingerprint() == b.fingerprint()
    _img(market_root / "Market-1501-v15.09.15" / "bounding_box_train" / "0011_c1s1_000001_00.jpg")
    assert load("market1501", market_root).fingerprint() != a.fingerprint()
