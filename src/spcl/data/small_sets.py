"""Readers of the small person sets: CUHK01, CUHK02, VIPeR, GRID, PRID2011 (single-shot) and QMUL iLIDS.

VIPeR, PRID, GRID and iLIDS are the test sets of the multi-source domain-generalisation protocol
(``spcl eval --protocol dg``); CUHK02 (and CUHK01) are among its training sources. Each reader takes
the folders as torchreid's instructions lay them out (``<root>/viper/VIPeR/cam_a``, ...), the
dataset folder itself, or fast-reid's shallower nesting, and builds split ``split`` (0..9):

- the random splits (CUHK01, VIPeR, PRID, iLIDS) come from ``splits_<name>.json`` beside the images,
  drawn once with a seed per split index (``spcl.data.splits``) so every machine tests on the same
  identities;
- GRID's 10 splits are the ones its ``features_and_partitions.mat`` ships; CUHK02's one split is
  fixed (camera pairs P1-P4 train, P5 test);
- fast-reid's folders of GRID (``underground_reid/images``), PRID (``prid_2011/slim_train``) and
  iLIDS (``iLIDS/<person>/``) hold no test split: they read as training-only datasets (named
  ``<name>-train-only``, ``split`` ignored), for training on several sources.

Training identities are relabelled 0..n-1 in path order, as for every reader; test identities keep
the number of their file (or, for VIPeR, their pair's position), which is all evaluation needs.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from spcl.data.base import (
    Dataset,
    DatasetError,
    Item,
    list_images,
    locate_folder,
    register_dataset,
    relabel_train,
    require_dirs,
)
from spcl.data.splits import NUM_SPLITS, check_split_index, draw_id_split, load_splits

__all__ = ["read_cuhk01", "read_cuhk02", "read_grid", "read_ilids", "read_prid", "read_viper"]


def _split_dataset(name: str, base: Path, split: int, train: list[Item], query: list[Item], gallery: list[Item],
                   skipped: list[str]) -> Dataset:
    return Dataset(name=f"{name}-split{split}", root=str(base), train=relabel_train(train), query=query,
                   gallery=gallery, skipped=skipped)


def _id_split_check(split: dict[str, Any]) -> str | None:
    train, test = split.get("train"), split.get("test")
    if not isinstance(train, list) or not isinstance(test, list):
        return "it has no train and test identity lists"
    if set(train) & set(test):
        return "an identity is both in train and test"
    return None


# ----------------------------------------------------------------------------------------------------
# CUHK01


_CUHK01_NAME = re.compile(r"^(\d{4})(\d{3})$")


def _cuhk01_folder(root: Path) -> Path:
    """The folder holding ``campus/``; ``CUHK01.zip`` is unpacked into it once when only the zip is there."""
    try:
        return locate_folder(root, "cuhk01", ("campus",))
    except DatasetError:
        for folder in (root, root / "cuhk01"):
            archive = folder / "CUHK01.zip"
            if archive.is_file():
                _unpack_campus(archive)
                return folder
        raise


def _unpack_campus(archive: Path) -> None:
    """Unpack ``campus/`` from the zip into a temporary folder beside it, then move it in place:
    an interrupted unpack leaves no half folder that a later load would take for the data."""
    with tempfile.TemporaryDirectory(prefix=".campus.", dir=archive.parent) as tmp:
        try:
            with zipfile.ZipFile(archive) as zf:
                # campus/ at the top, or inside one folder (CUHK01/campus/); nothing outside the target
                members = [m for m in zf.namelist() if "campus" in Path(m).parts[:2] and ".." not in Path(m).parts]
                if not members:
                    raise DatasetError(f"{archive}: expected a folder campus/ inside the archive")
                zf.extractall(tmp, members)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{archive}: not a readable zip file ({exc})") from None
        unpacked = next(p for p in (Path(tmp) / "campus", *Path(tmp).glob("*/campus")) if p.is_dir())
        shutil.move(str(unpacked), str(archive.parent / "campus"))


@register_dataset("cuhk01", description="CUHK01 (cuhk01/campus/ or CUHK01.zip; split 0..9: 485 train ids)")
def read_cuhk01(root: Path, split: int = 0) -> Dataset:
    """971 identities, two images in each of two cameras (file ``PPPPCCC.png``: person, image 1-4;
    images 1-2 are camera 0, 3-4 camera 1). Split k trains on half of the identities; its test
    queries are the other half's camera-0 images, the gallery their camera-1 images."""
    split = check_split_index("cuhk01", split)
    base = _cuhk01_folder(root)
    skipped: list[str] = []
    items: list[Item] = []
    for path in list_images(base / "campus", skipped):
        match = _CUHK01_NAME.match(path.stem)
        if match is None:
            raise DatasetError(f"{path}: expected a CUHK01 file name PPPPCCC.png (4 digits person, 3 digits image)")
        items.append((str(path), int(match.group(1)), (int(match.group(2)) - 1) // 2))
    if not items:
        raise DatasetError(f"cuhk01: no images in {base / 'campus'}")
    ids = sorted({pid for _, pid, _ in items})
    chosen = load_splits(base, "cuhk01", ids, lambda k: draw_id_split(ids, len(ids) // 2, k), _id_split_check)[split]
    train_ids = set(chosen["train"])
    train = [it for it in items if it[1] in train_ids]
    test = [it for it in items if it[1] not in train_ids]
    query = [it for it in test if it[2] == 0]
    gallery = [it for it in test if it[2] == 1]
    return _split_dataset("cuhk01", base, split, train, query, gallery, skipped)


# ----------------------------------------------------------------------------------------------------
# CUHK02


_CUHK02_PAIRS = ("P1", "P2", "P3", "P4", "P5")


def _leading_number(path: Path, what: str) -> int:
    head = path.stem.split("_")[0]
    if not head.isdigit():
        raise DatasetError(f"{path}: expected a {what} file name that starts with the person number ('0001_...')")
    return int(head)


@register_dataset("cuhk02", description="CUHK02 (cuhk02/Dataset/P1..P5/cam{1,2}; P5 is the test pair)")
def read_cuhk02(root: Path, split: int = 0) -> Dataset:
    """Five camera pairs; P1-P4 train (each pair's persons are its own: numbers restart in every
    pair), P5 tests with its cam1 as queries and its cam2 as gallery. Cameras are numbered
    2 x (pair - 1) + view - 1 (0..9), so no two pairs share one. The split is fixed: only split 0."""
    check_split_index("cuhk02", split, 1)
    base = locate_folder(root, "Dataset", _CUHK02_PAIRS, aliases=("cuhk02",))
    skipped: list[str] = []
    train: list[Item] = []
    query: list[Item] = []
    gallery: list[Item] = []
    for p, pair in enumerate(_CUHK02_PAIRS):
        require_dirs(base / pair, ("cam1", "cam2"), f"cuhk02 camera pair {pair}")
        for view in (1, 2):
            camera = 2 * p + view - 1
            for path in list_images(base / pair / f"cam{view}", skipped):
                person = _leading_number(path, "CUHK02")
                if pair != "P5":
                    train.append((str(path), p * 1_000_000 + person, camera))  # persons of different pairs differ
                else:
                    (query if view == 1 else gallery).append((str(path), person, camera))
    if not train or not query or not gallery:
        raise DatasetError(f"cuhk02: expected images in P1-P4 (train) and P5/cam1, P5/cam2 (test) under {base}")
    return _split_dataset("cuhk02", base, 0, train, query, gallery, skipped)


# ----------------------------------------------------------------------------------------------------
# VIPeR


def _viper_pairs(base: Path, skipped: list[str]) -> list[tuple[Path, Path]]:
    """The (cam_a, cam_b) image of each person: the two folders sorted and taken side by side (as
    the dataset is published: one image per person and camera). When the names start with a number,
    the numbers of each pair must agree, so a missing image is reported, never silently shifted."""
    cam_a, cam_b = list_images(base / "cam_a", skipped), list_images(base / "cam_b", skipped)
    if len(cam_a) != len(cam_b) or not cam_a:
        raise DatasetError(
            f"viper: expected one image per person in each of {base / 'cam_a'} and {base / 'cam_b'}, "
            f"found {len(cam_a)} and {len(cam_b)}"
        )
    for a, b in zip(cam_a, cam_b):
        ka, kb = a.stem.split("_")[0], b.stem.split("_")[0]
        if ka.isdigit() and kb.isdigit() and int(ka) != int(kb):
            raise DatasetError(f"viper: {a} and {b} are paired by order but name different persons ({ka}, {kb})")
    return list(zip(cam_a, cam_b))


@register_dataset("viper", description="VIPeR (viper/VIPeR/cam_{a,b}; split 0..9: 316 train / 316 test)")
def read_viper(root: Path, split: int = 0) -> Dataset:
    """632 persons, one image in each of two cameras; a person's identity is its position in the
    sorted listing (0..631). Split k trains on half the persons; the other half's cam_a images are
    the queries and their cam_b images the gallery (316 / 316)."""
    split = check_split_index("viper", split)
    base = locate_folder(root, "VIPeR", ("cam_a", "cam_b"), aliases=("viper",))
    skipped: list[str] = []
    pairs = _viper_pairs(base, skipped)
    ids = list(range(len(pairs)))
    chosen = load_splits(base, "viper", ids, lambda k: draw_id_split(ids, len(ids) // 2, k), _id_split_check)[split]
    train_ids = set(chosen["train"])
    train, query, gallery = [], [], []
    for pid, (a, b) in enumerate(pairs):
        if pid in train_ids:
            train += [(str(a), pid, 0), (str(b), pid, 1)]
        else:
            query.append((str(a), pid, 0))
            gallery.append((str(b), pid, 1))
    return _split_dataset("viper", base, split, train, query, gallery, skipped)


# ----------------------------------------------------------------------------------------------------
# GRID


def _grid_train_ids(partitions: Any, k: int, path: Path) -> list[int]:
    """The training persons of split k: field ``personIdx`` (the third) of ``trainIdxAll``'s k-th entry."""
    try:
        entries = np.asarray(partitions["trainIdxAll"]).ravel()
        entry = entries[k]
        while isinstance(entry, np.ndarray) and entry.dtype.names is None and entry.dtype == object:
            entry = entry.ravel()[0]  # a cell holding the struct
        record = entry.ravel()[0] if isinstance(entry, np.ndarray) else entry
        names = record.dtype.names or ()
        value = record["personIdx"] if "personIdx" in names else record[2]
        return sorted(int(v) for v in np.asarray(value).ravel())
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{path}: expected trainIdxAll with {NUM_SPLITS} entries, each holding personIdx as its third field "
            f"({type(exc).__name__}: {exc})"
        ) from None


@register_dataset(
    "grid", description="GRID (grid/underground_reid/{probe,gallery} + features_and_partitions.mat; split 0..9)"
)
def read_grid(root: Path, split: int = 0) -> Dataset:
    """8 cameras; file ``IIII_C_...``: person IIII (0000 marks the 775 gallery distractors), camera
    C. Split k's 125 training persons are the ones ``features_and_partitions.mat`` ships; the
    other probe images are the queries (125), the other gallery images the gallery (900)."""
    from scipy.io import loadmat

    split = check_split_index("grid", split)
    try:
        base = locate_folder(root, "underground_reid", ("probe", "gallery", "features_and_partitions.mat"),
                             aliases=("grid",))
    except DatasetError:
        train_only = _fastreid_grid(root)
        if train_only is None:
            raise
        return train_only
    mat_path = base / "features_and_partitions.mat"
    try:
        partitions = loadmat(str(mat_path))
    except (ValueError, OSError, NotImplementedError) as exc:
        raise DatasetError(f"{mat_path}: not a readable MATLAB file ({exc})") from None
    train_ids = set(_grid_train_ids(partitions, split, mat_path))
    skipped: list[str] = []
    train: list[Item] = []
    sides: dict[str, list[Item]] = {"probe": [], "gallery": []}
    for side in sides:
        for path in list_images(base / side, skipped):
            fields = path.stem.split("_")
            if len(fields) < 2 or not fields[0].isdigit() or not fields[1].isdigit():
                raise DatasetError(f"{path}: expected a GRID file name IIII_C_... (person, camera)")
            pid, cam = int(fields[0]), int(fields[1]) - 1
            if pid in train_ids:
                train.append((str(path), pid, cam))
            else:
                sides[side].append((str(path), pid, cam))
    missing = sorted(train_ids - {pid for _, pid, _ in train})
    if missing:
        raise DatasetError(f"{mat_path}: split {split} trains on persons without images in {base}: {missing[:5]}")
    return _split_dataset("grid", base, split, train, sides["probe"], sides["gallery"], skipped)


# ----------------------------------------------------------------------------------------------------
# PRID2011 (single-shot)


def _prid_camera(folder: Path, skipped: list[str]) -> dict[int, Path]:
    images = {}
    for path in list_images(folder, skipped):
        match = re.fullmatch(r"person_(\d+)", path.stem)
        if match is None:
            raise DatasetError(f"{path}: expected a PRID file name person_XXXX.png")
        images[int(match.group(1))] = path
    return images


@register_dataset("prid", description="PRID2011 single-shot (prid2011/prid_2011/single_shot/cam_{a,b}; split 0..9)")
def read_prid(root: Path, split: int = 0) -> Dataset:
    """cam_a holds 385 persons, cam_b 749; persons 1-200 are in both. Split k trains on half of
    those shared persons (both cameras); the queries are the other half's cam_a images (100), the
    gallery their cam_b images plus every cam_b person not in cam_a (100 + 549 = 649). cam_a's
    persons missing from cam_b are not used."""
    split = check_split_index("prid", split)
    try:
        base = locate_folder(root, "single_shot", ("cam_a", "cam_b"),
                             aliases=("prid2011/prid_2011", "prid_2011", "prid2011"))
    except DatasetError:
        train_only = _fastreid_prid(root)
        if train_only is None:
            raise
        return train_only
    skipped: list[str] = []
    cam_a, cam_b = _prid_camera(base / "cam_a", skipped), _prid_camera(base / "cam_b", skipped)
    shared = sorted(set(cam_a) & set(cam_b))
    if len(shared) < 2:
        raise DatasetError(f"prid: expected persons in both {base / 'cam_a'} and {base / 'cam_b'}, found {len(shared)}")
    chosen = load_splits(base, "prid", shared, lambda k: draw_id_split(shared, len(shared) // 2, k), _id_split_check)[split]
    train_ids = set(chosen["train"])
    train: list[Item] = [(str(cam_a[p]), p, 0) for p in shared if p in train_ids]
    train += [(str(cam_b[p]), p, 1) for p in shared if p in train_ids]
    query = [(str(cam_a[p]), p, 0) for p in shared if p not in train_ids]
    gallery = [(str(cam_b[p]), p, 1) for p in sorted(cam_b) if p not in train_ids]
    return _split_dataset("prid", base, split, train, query, gallery, skipped)


# ----------------------------------------------------------------------------------------------------
# QMUL iLIDS


_ILIDS_NAME = re.compile(r"^(\d{4})(\d{3})$")


def _ilids_draw(by_person: dict[int, list[str]], k: int) -> dict[str, Any]:
    """Split k: half of the persons (rounded down) train; each test person gives one random image to
    the queries and another to the gallery (a person with one image: to the gallery only)."""
    ids = sorted(by_person)
    split = draw_id_split(ids, len(ids) // 2, k)
    rng = np.random.default_rng([k, 1])  # the image draw: its own stream, so the identity draw stays draw_id_split's
    query, gallery = [], []
    for pid in split["test"]:
        names = sorted(by_person[pid])
        picked = [names[i] for i in rng.choice(len(names), size=min(2, len(names)), replace=False)]
        if len(picked) == 2:
            query.append(picked[0])
        gallery.append(picked[-1])
    return {**split, "query": query, "gallery": gallery}


@register_dataset("ilids", description="QMUL iLIDS (ilids/i-LIDS_Pedestrian/Persons; split 0..9: 60 / 60 test)")
def read_ilids(root: Path, split: int = 0) -> Dataset:
    """476 images of 119 persons (file ``PPPPIII.jpg``). The "camera" is the image's number III - 1:
    the set records no cameras, and counting each image as its own camera keeps evaluation from
    filtering a true match. Split k trains on 59 persons; each of the other 60 gives one random
    query and one random gallery image (the choice is saved in the split file)."""
    split = check_split_index("ilids", split)
    try:
        base = locate_folder(root, "i-LIDS_Pedestrian", ("Persons",), aliases=("ilids",))
    except DatasetError:
        train_only = _fastreid_ilids(root)
        if train_only is None:
            raise
        return train_only
    skipped: list[str] = []
    items: dict[str, Item] = {}
    by_person: dict[int, list[str]] = defaultdict(list)
    for path in list_images(base / "Persons", skipped):
        match = _ILIDS_NAME.match(path.stem)
        if match is None:
            raise DatasetError(f"{path}: expected an iLIDS file name PPPPIII.jpg (4 digits person, 3 digits image)")
        pid = int(match.group(1))
        items[path.name] = (str(path), pid, int(match.group(2)) - 1)
        by_person[pid].append(path.name)
    if len(by_person) < 2:
        raise DatasetError(f"ilids: expected images of several persons in {base / 'Persons'}")

    def check(chosen: dict[str, Any]) -> str | None:
        problem = _id_split_check(chosen)
        if problem:
            return problem
        named = list(chosen.get("query", [])) + list(chosen.get("gallery", []))
        missing = [n for n in named if n not in items]
        return f"it names images that are not there: {missing[:3]}" if missing else None

    chosen = load_splits(base, "ilids", sorted(by_person), lambda k: _ilids_draw(by_person, k), check)[split]
    train_ids = set(chosen["train"])
    train = [it for it in items.values() if it[1] in train_ids]
    query = [items[n] for n in chosen["query"]]
    gallery = [items[n] for n in chosen["gallery"]]
    return _split_dataset("ilids", base, split, train, query, gallery, skipped)


# ----------------------------------------------------------------------------------------------------
# fast-reid's train-only layouts of GRID, PRID and iLIDS (used there as extra training sources)


def _train_only(name: str, base: Path, items: list[tuple[str, int, str]], skipped: list[str]) -> Dataset:
    """A training-only dataset; camera labels (text) numbered in sorted order."""
    if not items:
        raise DatasetError(f"{name}: no training images in {base} (fast-reid's layout)")
    cameras = {cam: i for i, cam in enumerate(sorted({cam for _, _, cam in items}))}
    train = relabel_train((path, pid, cameras[cam]) for path, pid, cam in items)
    return Dataset(name=f"{name}-train-only", root=str(base), train=train, skipped=skipped)


def _fastreid_grid(root: Path) -> Dataset | None:
    """``underground_reid/images/IIII_C_...jpeg``; person 0000 (the gallery distractors, many different
    people) is left out of training."""
    base = next((c for c in (root / "underground_reid", root) if (c / "images").is_dir()), None)
    if base is None:
        return None
    skipped: list[str] = []
    items = []
    for path in list_images(base / "images", skipped):
        fields = path.stem.split("_")
        if len(fields) < 2 or not fields[0].isdigit():
            raise DatasetError(f"{path}: expected a GRID file name IIII_C_... (person, camera)")
        if int(fields[0]) > 0:
            items.append((str(path), int(fields[0]), fields[1]))
    return _train_only("grid", base, items, skipped)


def _identity_folders(folder: Path, what: str, skipped: list[str]) -> list[tuple[str, int, str]]:
    """(path, identity, camera text) of images in one sub-folder per identity: the identity is the
    folder name's last number, the camera the image name's first field."""
    items = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        numbers = re.findall(r"\d+", person.name)
        if not numbers:
            raise DatasetError(f"{person}: expected a {what} identity folder whose name holds its number")
        items += [(str(p), int(numbers[-1]), p.stem.split("_")[0]) for p in list_images(person, skipped)]
    return items


def _fastreid_prid(root: Path) -> Dataset | None:
    """``prid_2011/slim_train/<person folder>/<camera>_....png``."""
    base = next((c for c in (root / "prid_2011", root / "prid2011" / "prid_2011", root) if (c / "slim_train").is_dir()), None)
    if base is None:
        return None
    skipped: list[str] = []
    return _train_only("prid", base, _identity_folders(base / "slim_train", "PRID", skipped), skipped)


def _fastreid_ilids(root: Path) -> Dataset | None:
    """``iLIDS/<person folder>/<camera>_....png``."""
    base = next((c for c in (root / "iLIDS", root) if c.name == "iLIDS" and c.is_dir()), None)
    if base is None:
        return None
    skipped: list[str] = []
    return _train_only("ilids", base, _identity_folders(base, "iLIDS", skipped), skipped)
