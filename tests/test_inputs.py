"""Input as users write it: spreadsheet CSVs, missing cameras, duplicates, other image formats, bad
images; and property-based tests of the manifest reader and the config loader against slow
references written here."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from spcl.config import ConfigError, leaf_fields, load_config
from spcl.data import DatasetError, load
from spcl.data.image_dataset import without_unreadable

IMAGES = [f"img{i}.jpg" for i in range(6)]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    (root / "imgs").mkdir()
    for name in IMAGES:
        Image.new("RGB", (8, 16), (10, 20, 30)).save(root / "imgs" / name)
    return root


def test_spreadsheet_csv_with_bom_and_crlf(image_dir: Path) -> None:
    text = "path,split,pid,camid\r\nimgs/img0.jpg,train,3,1\r\nimgs/img1.jpg,query,3,0\r\nimgs/img2.jpg,gallery,3,1\r\n"
    (image_dir / "excel.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    ds = load(image_dir / "excel.csv")
    assert [(Path(p).name, pid, cam) for p, pid, cam in ds.train + ds.query + ds.gallery] == [
        ("img0.jpg", 0, 1), ("img1.jpg", 3, 0), ("img2.jpg", 3, 1)
    ]


def test_an_empty_camid_is_an_unknown_camera(image_dir: Path) -> None:
    (image_dir / "some.csv").write_text(
        "path,split,pid,camid\nimgs/img0.jpg,train,1,\nimgs/img1.jpg,train,1,2\nimgs/img2.jpg,query,1,\n"
        "imgs/img3.jpg,gallery,1,0\n"
    )
    ds = load(image_dir / "some.csv")
    assert [cam for _, _, cam in ds.train] == [None, 2] and ds.query[0][2] is None and ds.gallery[0][2] == 0
    (image_dir / "none.csv").write_text("path,split,pid,camid\nimgs/img0.jpg,train,1,\nimgs/img1.jpg,train,2,\n")
    (image_dir / "nocol.csv").write_text("path,split,pid\nimgs/img0.jpg,train,1\nimgs/img1.jpg,train,2\n")
    assert load(image_dir / "none.csv").train == load(image_dir / "nocol.csv").train


def test_an_image_listed_twice_in_a_split_names_both_lines(image_dir: Path) -> None:
    (image_dir / "dup.csv").write_text(
        "path,split,pid\nimgs/img0.jpg,train,1\nimgs/img1.jpg,query,1\nimgs/img0.jpg,train,2\n"
    )
    with pytest.raises(DatasetError, match=r"dup.csv:4: imgs/img0.jpg is already listed in the train split on line 2"):
        load(image_dir / "dup.csv")
    # the same file as a query and in the gallery is the protocol's "own file" case, not a duplicate
    (image_dir / "own.csv").write_text("path,split,pid\nimgs/img1.jpg,query,1\nimgs/img1.jpg,gallery,1\n"
                                       "imgs/img2.jpg,gallery,1\n")
    assert len(load(image_dir / "own.csv").gallery) == 2


def test_other_image_formats_are_read_and_other_files_listed(tmp_path: Path) -> None:
    root = tmp_path / "site"
    for rel, fmt in [("train/a/1.webp", "WEBP"), ("train/a/2.tif", "TIFF"), ("train/b/1.bmp", "BMP"),
                     ("query/a/3.png", "PNG"), ("gallery/a/4.jpg", "JPEG"), ("gallery/b/5.jpg", "JPEG")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16)).save(root / rel, fmt)
    (root / "train" / "a" / "notes.txt").write_text("camera 3 was moved on Monday")
    (root / "train" / "a" / "Thumbs.db").write_bytes(b"")
    (root / "train" / ".DS_Store").write_bytes(b"")
    ds = load(root)
    assert sorted(Path(p).suffix for p, _, _ in ds.train) == [".bmp", ".tif", ".webp"]
    assert ds.skipped == [str(root / "train" / "a" / "notes.txt")]
    assert "skipped 1 files" in ds.format_statistics()


def test_bad_images_stop_with_the_name_or_are_skipped_and_listed(image_dir: Path, tmp_path: Path) -> None:
    (image_dir / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (image_dir / "bad.csv").write_text("path,split,pid\nimgs/img0.jpg,train,5\nimgs/broken.jpg,train,7\n"
                                       "imgs/img4.jpg,train,9\n")
    ds = load(image_dir / "bad.csv")
    kept = without_unreadable(ds, progress=False)
    assert [(Path(p).name, pid) for p, pid, _ in kept.train] == [("img0.jpg", 0), ("img4.jpg", 1)]
    assert len(kept.skipped) == 1 and kept.skipped[0].startswith(str(image_dir / "imgs" / "broken.jpg"))
    assert without_unreadable(kept, progress=False) is kept  # nothing more to leave out


def test_a_market_style_name_that_breaks_the_convention_is_named(tmp_path: Path) -> None:
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / split).mkdir()
    Image.new("RGB", (8, 16)).save(tmp_path / "bounding_box_train" / "0001_c1s1_01.jpg")
    Image.new("RGB", (8, 16)).save(tmp_path / "bounding_box_train" / "person_one.jpg")
    with pytest.raises(DatasetError, match="person_one.jpg: file name does not follow"):
        load(tmp_path)


# ------------------------------------------------------------------------------ property tests


def slow_manifest(text: str, base: Path) -> dict[str, list[tuple[str, int, int | None]]]:
    """What a manifest means, written out line by line: splits of (absolute path, pid, camera)."""
    lines = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    header = [h.strip() for h in lines[0]]
    out: dict[str, list] = {"train": [], "query": [], "gallery": []}
    for fields in lines[1:]:
        row = dict(zip(header, (f.strip() for f in fields)))
        pid = int(row["pid"]) if row["pid"] else -1
        cam = int(row["camid"]) if row.get("camid") else None
        out[row["split"].lower()].append((str((base / row["path"]).resolve()), pid, cam))
    train = sorted(out["train"])
    labels = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in train if pid >= 0}))}
    out["train"] = [(p, labels[pid] if pid >= 0 else -1, c) for p, pid, c in train]
    return out


ROW = st.tuples(
    st.sampled_from(IMAGES),
    st.sampled_from(["train", "query", "gallery", "TRAIN", " query "]),
    st.one_of(st.integers(0, 30).map(str), st.just(""), st.just("-1")),
    st.one_of(st.integers(0, 5).map(str), st.just("")),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=10), with_cams=st.booleans(), bom=st.booleans(),
       crlf=st.booleans())
def test_valid_manifests_read_as_the_slow_reference(image_dir: Path, rows, with_cams: bool, bom: bool, crlf: bool) -> None:
    seen, clean = set(), []
    for path, split, pid, cam in rows:
        key = (split.strip().lower(), path)
        if key in seen or (split.strip().lower() != "train" and pid in ("", "-1")):
            continue
        seen.add(key)
        clean.append((f"imgs/{path}", split, pid, cam))
    if not any(s.strip().lower() in ("train", "query") for _, s, _, _ in clean):
        return
    end = "\r\n" if crlf else "\n"
    header = "path,split,pid,camid" if with_cams else "path,split,pid"
    body = [",".join(r if with_cams else r[:3]) for r in clean]
    text = ("\ufeff" if bom else "") + end.join([header, *body]) + end
    (image_dir / "prop.csv").write_bytes(text.encode())
    ds = load(image_dir / "prop.csv")
    assert {"train": ds.train, "query": ds.query, "gallery": ds.gallery} == slow_manifest(text, image_dir)


JUNK = st.one_of(st.text(max_size=8), st.integers(-5, 5).map(str), st.sampled_from(["", "1.5", "x", "-3", "img9.jpg"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.sampled_from(["path", "split", "pid", "camid", "id", ""]), min_size=1, max_size=5),
       rows=st.lists(st.lists(JUNK, min_size=0, max_size=5), max_size=5))
def test_malformed_manifests_give_a_dataset_error_naming_the_file(image_dir: Path, header, rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    (image_dir / "junk.csv").write_text(buffer.getvalue())
    try:
        load(image_dir / "junk.csv")
    except DatasetError as exc:
        assert "junk.csv" in str(exc)


FIELDS = [name for name, *_ in leaf_fields()]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(overrides=st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), VALUES, max_size=4))
def test_any_settings_load_or_give_a_config_error_naming_the_field(overrides) -> None:
    try:
        config = load_config(overrides={"mode": "usl", **overrides})
    except ConfigError as exc:
        message = str(exc)
        assert any(str(key).split(".")[0] in message for key in overrides) or "mode" in message, message
        return
    for key, value in overrides.items():  # what loaded is what was asked, in the field's type
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        assert _loaded_as_asked(node, value), (key, value, node)


def _loaded_as_asked(node, value) -> bool:
    """Whether a loaded field holds the value given, read in the field's type (a switch word, a number
    written as text, a list written as "20,40")."""
    if isinstance(node, tuple):  # a list field: from a list, or from text such as "20,40" or "()"
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            value = [] if text.lower() in ("", "none") else text.replace(",", " ").split()
        return [float(x) for x in node] == [float(x) for x in value]
    words = {"true", "false", "yes", "no", "on", "off", "1", "0", "none", "null", ""}
    if node == value or str(node) == str(value) or str(value).lower() in words:
        return True
    try:
        return float(node) == float(value)
    except (TypeError, ValueError):
        return False


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_any_config_file_loads_or_gives_a_config_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "some.yaml"
    path.write_text(text)
    try:
        load_config(path, {"mode": "usl"})
    except ConfigError as exc:
        assert "some.yaml" in str(exc) or "mode" in str(exc), str(exc)
