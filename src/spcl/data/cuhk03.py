"""CUHK03 as downloaded: ``cuhk03_release/cuhk-03.mat`` (MATLAB v7.3), its two protocols and two kinds of boxes.

The images live inside the ``.mat`` file (an HDF5 file of object references: 5 camera pairs, each
persons x 10 image slots, slots 1-5 one view and 6-10 the other, empty slots pointing at an empty
entry). They are written once as PNGs into ``images_detected/`` or ``images_labeled/`` beside it,
named ``{pair}_{person:03d}_{view}_{slot:02d}.png`` (torchreid's layout, so a folder it extracted
reads as well). The extraction is resumable (written images are kept) and atomic (each image
appears complete or not at all; ``.spcl-complete`` marks a finished folder).

Protocols:
- ``new`` (Zhong et al., CVPR 2017; the default): 767 training and 700 test persons, from
  ``cuhk03_new_protocol_config_{detected,labeled}.mat``;
- ``classic`` (Li et al., CVPR 2014): 20 splits of 100 test persons from the ``.mat``'s
  ``testsets``, queries and gallery both the test images; the other persons train. Without the
  ``.mat`` the test persons are read from torchreid's ``splits_classic_{boxes}.json``.

Cameras are numbered 2 x (pair - 1) + view - 1 (0..9): the five camera pairs are different
cameras, and the views of one pair stay apart. Identities are pair x 1000 + person (classic) or
the protocol file's labels (new).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spcl.data.base import Dataset, DatasetError, Item, list_images, register_dataset, relabel_train
from spcl.utils.files import atomic_output, write_text
from spcl.utils.optional import need

__all__ = ["CUHK03_CLASSIC_SPLITS", "extract_cuhk03_images", "read_cuhk03"]

CUHK03_CLASSIC_SPLITS = 20
_MAT = Path("cuhk03_release") / "cuhk-03.mat"
_NAME = re.compile(r"^(\d+)_(\d+)_([12])_(\d+)$")
_COMPLETE = ".spcl-complete"
Boxes = Literal["detected", "labeled"]


def _dataset_folder(root: Path, boxes: str) -> Path:
    candidates = [root, root / "cuhk03"]
    if root.name == "cuhk03_release":
        candidates.insert(0, root.parent)
    for folder in candidates:
        if (folder / _MAT).is_file() or (folder / f"images_{boxes}").is_dir():
            return folder
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise DatasetError(
        f"cuhk03: expected a folder cuhk03/ holding {_MAT} (or images_{boxes}/ extracted from it); looked in: "
        f"{looked}. Pass the folder that contains cuhk03/ as the data root."
    )


def _h5py() -> Any:
    return need("h5py", "reading cuhk03's cuhk-03.mat (MATLAB v7.3)", "give a folder images_detected/ or "
                "images_labeled/ already extracted (torchreid's layout)")


def _open_mat(path: Path) -> Any:
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a MATLAB v7.3 (HDF5) file ({exc})") from None


def _cells(mat: Any, path: Path, boxes: str) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(pair, person, slot, H x W x 3 image) of every non-empty image slot; all 1-based."""
    try:
        pairs = np.asarray(mat[boxes]).ravel()
        for p, pair_ref in enumerate(pairs, start=1):
            slots = np.asarray(mat[pair_ref]).T  # MATLAB stores column-major: transposed, persons x 10
            for person in range(slots.shape[0]):
                for slot in range(slots.shape[1]):
                    image = np.asarray(mat[slots[person, slot]]).T
                    if image.size == 0 or image.ndim < 3:
                        continue  # an empty slot
                    yield p, person + 1, slot + 1, image
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DatasetError(
            f"{path}: expected '{boxes}' to hold 5 camera pairs of persons x 10 image references "
            f"({type(exc).__name__}: {exc})"
        ) from None


def extract_cuhk03_images(mat_path: Path, out: Path, boxes: str) -> int:
    """Write every image of ``boxes`` in ``mat_path`` into ``out`` once; returns how many there are.

    Images already there are kept (an interrupted extraction continues); each new one is written
    to a temporary file and renamed, so a killed run leaves no truncated PNG. The folder is marked
    complete at the end, and later loads never open the ``.mat`` again for its images."""
    from PIL import Image

    if (out / _COMPLETE).is_file():
        return len(list_images(out))
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with _open_mat(mat_path) as mat:
        for pair, person, slot, image in _cells(mat, mat_path, boxes):
            view = 1 if slot <= 5 else 2
            target = out / f"{pair}_{person:03d}_{view}_{slot:02d}.png"
            count += 1
            if target.is_file():
                continue
            if image.dtype != np.uint8:
                image = np.clip(image, 0, 255).astype(np.uint8)
            with atomic_output(target, what="an extracted CUHK03 image") as tmp:
                Image.fromarray(np.ascontiguousarray(image[..., :3])).save(tmp, format="PNG")
    if count == 0:
        raise DatasetError(f"{mat_path}: no {boxes} images found")
    write_text(out / _COMPLETE, json.dumps({"images": count, "from": str(mat_path)}) + "\n", what="the extraction mark")
    return count


def _parse(path: Path) -> tuple[int, int, int]:
    """(pair, person, view) of an extracted image's name."""
    match = _NAME.match(path.stem)
    if match is None:
        raise DatasetError(f"{path}: expected an extracted CUHK03 image named pair_person_view_slot.png (1_001_1_01.png)")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def _camera(pair: int, view: int) -> int:
    return 2 * (pair - 1) + view - 1


def _images(base: Path, boxes: str) -> Path:
    """The folder of extracted images, extracting them from the ``.mat`` first when needed."""
    folder = base / f"images_{boxes}"
    mat_path = base / _MAT
    if mat_path.is_file() and not (folder / _COMPLETE).is_file():
        extract_cuhk03_images(mat_path, folder, boxes)
    if not folder.is_dir():
        raise DatasetError(f"cuhk03: expected {mat_path} or the extracted images in {folder}")
    return folder


def _mat_text(value: Any) -> str:
    while isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        value = value.ravel()[0]
    return str(value)


def _read_new(base: Path, boxes: str, folder: Path) -> tuple[list[Item], list[Item], list[Item]]:
    from scipy.io import loadmat

    path = base / f"cuhk03_new_protocol_config_{boxes}.mat"
    if not path.is_file():
        raise DatasetError(
            f"cuhk03 (protocol new, {boxes} boxes): expected the split file {path} (from the CUHK03-NP release); "
            "or use protocol classic"
        )
    try:
        config = loadmat(str(path))
        files = [_mat_text(f) for f in np.asarray(config["filelist"]).ravel()]
        labels = np.asarray(config["labels"]).ravel().astype(np.int64)
        index = {key: np.asarray(config[f"{key}_idx"]).ravel().astype(np.int64) - 1 for key in ("train", "query", "gallery")}
    except (KeyError, ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise DatasetError(
            f"{path}: expected filelist, labels, train_idx, query_idx and gallery_idx ({type(exc).__name__}: {exc})"
        ) from None
    if len(files) != len(labels) or any(((i < 0) | (i >= len(files))).any() for i in index.values()):
        raise DatasetError(f"{path}: its indexes do not fit its {len(files)} file names and {len(labels)} labels")

    def items(which: str) -> list[Item]:
        out = []
        for i in index[which]:
            image = folder / files[i]
            pair, _, view = _parse(image)
            out.append((str(image), int(labels[i]), _camera(pair, view)))
        missing = [p for p, _, _ in out if not Path(p).is_file()]
        if missing:
            raise DatasetError(f"{path} lists {len(missing)} {which} images that are not in {folder}, e.g. {missing[0]}")
        return out

    return items("train"), items("query"), items("gallery")


def _classic_test_sets(base: Path, boxes: str) -> list[set[tuple[int, int]]]:
    """The 20 test sets, each a set of (pair, person), from the ``.mat`` or torchreid's split file."""
    mat_path = base / _MAT
    if mat_path.is_file():
        with _open_mat(mat_path) as mat:
            try:
                refs = np.asarray(mat["testsets"]).ravel()
                return [{(int(a), int(b)) for a, b in np.asarray(mat[ref]).T.reshape(-1, 2)} for ref in refs]
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(
                    f"{mat_path}: expected 'testsets' to hold references to [pair, person] rows ({exc})"
                ) from None
    saved = base / f"splits_classic_{boxes}.json"
    if saved.is_file():
        try:
            splits = json.loads(saved.read_text(encoding="utf-8"))
            return [{_parse(Path(entry[0]))[:2] for entry in split["query"]} for split in splits]
        except (ValueError, KeyError, TypeError, IndexError, DatasetError) as exc:
            raise DatasetError(f"{saved}: expected torchreid's list of splits with 'query' entries ({exc})") from None
    raise DatasetError(
        f"cuhk03 (protocol classic): the test persons come from {mat_path} (or torchreid's {saved}); neither is there"
    )


@register_dataset(
    "cuhk03", description="CUHK03 (cuhk03/cuhk03_release/cuhk-03.mat; protocol new|classic, boxes detected|labeled, split)"
)
def read_cuhk03(
    root: Path, protocol: Literal["new", "classic"] = "new", boxes: Boxes = "detected", split: int = 0
) -> Dataset:
    """CUHK03 with the ``new`` protocol (767 / 700 persons; split 0 only) or the ``classic`` one
    (``split`` 0..19 of 100 test persons), on the ``detected`` or the hand-``labeled`` boxes."""
    if protocol not in ("new", "classic"):
        raise DatasetError(f"cuhk03: protocol must be new or classic, got {protocol!r}")
    if boxes not in ("detected", "labeled"):
        raise DatasetError(f"cuhk03: boxes must be detected or labeled, got {boxes!r}")
    limit = CUHK03_CLASSIC_SPLITS if protocol == "classic" else 1
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 0 <= split < limit:
        raise DatasetError(f"cuhk03 (protocol {protocol}): split must be an integer in 0..{limit - 1}, got {split!r}")
    base = _dataset_folder(Path(root), boxes)
    folder = _images(base, boxes)
    skipped: list[str] = []
    if protocol == "new":
        train, query, gallery = _read_new(base, boxes, folder)
        return Dataset(name=f"cuhk03-{boxes}", root=str(base), train=relabel_train(train), query=query,
                       gallery=gallery, skipped=skipped)
    tests = _classic_test_sets(base, boxes)
    if len(tests) <= split:
        raise DatasetError(f"cuhk03: the classic protocol file has {len(tests)} test sets, split {split} asked")
    test_persons = tests[split]
    train, test = [], []
    for path in list_images(folder, skipped):
        pair, person, view = _parse(path)
        item = (str(path), pair * 1000 + person, _camera(pair, view))
        (test if (pair, person) in test_persons else train).append(item)
    found = {(pid // 1000, pid % 1000) for _, pid, _ in test}
    if found != test_persons:
        missing = sorted(test_persons - found)
        raise DatasetError(f"cuhk03: classic split {split} tests persons (pair, person) without images in {folder}: {missing[:5]}")
    return Dataset(name=f"cuhk03-{boxes}-classic-split{split}", root=str(base), train=relabel_train(train),
                   query=list(test), gallery=list(test), skipped=skipped)
