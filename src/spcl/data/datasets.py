"""Readers for the standard re-ID datasets as they are downloaded, users' manifests and image folders
(docs/datasets.md).

Every reader fails loudly: a missing folder names the layout it expected, an image whose name does not
follow the dataset's convention names the file.  Nothing is silently skipped except the junk images
(identity -1) that the Market-1501 protocol drops by definition.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from spcl.data.base import (
    IMAGE_SUFFIXES,
    Dataset,
    DatasetError,
    Item,
    list_images,
    locate_folder,
    note_skipped,
    read_csv_rows,
    register_dataset,
    relabel_train,
    require_dirs,
)
from spcl.data.vehicleid import VEHICLEID_TEST_SIZES, vehicleid_gallery_split

_PID_CAM = re.compile(r"^([-\d]+)_c(\d+)")


def _parse_market_dir(
    folder: Path,
    cam_of: Callable[[int, Path], int],
    skipped: list[str],
    drop_junk: bool = True,
    pattern: re.Pattern = _PID_CAM,
) -> list[Item]:
    items: list[Item] = []
    for path in list_images(folder, skipped):
        match = pattern.match(path.name)
        if match is None:
            raise DatasetError(
                f"{path}: file name does not follow the '<id>_c<camera>...' convention of this dataset"
            )
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1 and drop_junk:
            continue
        items.append((str(path), pid, cam_of(cam, path)))
    return items


def _cam_minus_one(cam: int, path: Path) -> int:
    return cam - 1


def _market_style(
    name: str,
    base: Path,
    dirs: tuple[str, str, str],
    cam_of: Callable[[int, Path], int] = _cam_minus_one,
) -> Dataset:
    require_dirs(base, dirs, name)
    train_dir, query_dir, gallery_dir = (base / d for d in dirs)
    skipped: list[str] = []
    train = relabel_train(_parse_market_dir(train_dir, cam_of, skipped))
    query = _parse_market_dir(query_dir, cam_of, skipped)
    gallery = _parse_market_dir(gallery_dir, cam_of, skipped)
    if not train:
        raise DatasetError(f"{name}: no training images found in {train_dir}")
    return Dataset(name=name, root=str(base), train=train, query=query, gallery=gallery, skipped=skipped)


_MARKET_DIRS = ("bounding_box_train", "query", "bounding_box_test")


def _has_dirs(*names: str) -> Callable[[Path], bool]:
    return lambda folder: all((folder / n).is_dir() for n in names)


@register_dataset("market1501", description="Market-1501 (Market-1501-v15.09.15/)")
def read_market1501(root: Path) -> Dataset:
    base = locate_folder(root, "Market-1501-v15.09.15", _MARKET_DIRS, aliases=("market1501",))
    return _market_style("market1501", base, _MARKET_DIRS)


@register_dataset("dukemtmc", description="DukeMTMC-reID (withdrawn by its authors)")
def read_dukemtmc(root: Path) -> Dataset:
    warnings.warn(
        "DukeMTMC-reID was withdrawn by its authors; results on it are reported for comparison only.",
        stacklevel=2,
    )
    base = locate_folder(root, "DukeMTMC-reID", _MARKET_DIRS, aliases=("dukemtmc", "dukemtmcreid"))
    return _market_style("dukemtmc", base, _MARKET_DIRS)


_PERSONX_CAMS = {3: 0, 4: 1, 8: 2, 10: 3, 11: 4, 12: 5}


def _personx_cam(cam: int, path: Path) -> int:
    if cam not in _PERSONX_CAMS:
        raise DatasetError(f"{path}: PersonX camera c{cam} is not one of c3, c4, c8, c10, c11, c12")
    return _PERSONX_CAMS[cam]


@register_dataset("personx", description="PersonX (synthetic; cameras c3, c4, c8, c10, c11, c12)")
def read_personx(root: Path) -> Dataset:
    base = locate_folder(root, "PersonX", _MARKET_DIRS, aliases=("personx",))
    return _market_style("personx", base, _MARKET_DIRS, _personx_cam)


_VERI_DIRS = ("image_train", "image_query", "image_test")


@register_dataset("veri", detect=_has_dirs(*_VERI_DIRS), description="VeRi-776 (VeRi/image_{train,query,test})")
def read_veri(root: Path) -> Dataset:
    base = locate_folder(root, "VeRi", _VERI_DIRS, aliases=("veri",))
    return _market_style("veri", base, _VERI_DIRS)


@register_dataset("vehiclex", description="VehicleX (AIC20_ReID_Simulation/image_train; training only)")
def read_vehiclex(root: Path) -> Dataset:
    base = locate_folder(root, "AIC20_ReID_Simulation", ("image_train",), aliases=("vehiclex",))
    skipped: list[str] = []
    train = relabel_train(_parse_market_dir(base / "image_train", lambda cam, path: cam - 6, skipped))
    if not train:
        raise DatasetError(f"vehiclex: no images found in {base / 'image_train'}")
    return Dataset(name="vehiclex", root=str(base), train=train, skipped=skipped)


def _read_list(path: Path, what: str) -> list[tuple[str, int]]:
    if not path.is_file():
        raise DatasetError(f"{what}: expected the list file {path}")
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetError(f"{path}:{lineno}: expected '<image> <id>', got {line.strip()!r}")
            rows.append((parts[0], int(parts[1])))
    return rows


def _require_files(items: list[Item], list_path: Path) -> None:
    for path, _, _ in items:
        if not Path(path).is_file():
            raise DatasetError(f"{list_path} lists {path}, which does not exist")


def _msmt_items(image_dir: Path, rows: list[tuple[str, int]], list_path: Path) -> list[Item]:
    items = []
    for rel, pid in rows:
        path = image_dir / rel
        fields = Path(rel).name.split("_")
        if len(fields) < 3 or not fields[2].isdigit():
            raise DatasetError(f"{list_path}: {rel} does not have the camera as the third field of its name")
        items.append((str(path), pid, int(fields[2]) - 1))
    _require_files(items, list_path)
    return items


@register_dataset("msmt17", description="MSMT17 (MSMT17_V1/ with list_*.txt, or MSMT17_V2/)")
def read_msmt17(root: Path) -> Dataset:
    for folder, dirs in (("MSMT17_V1", ("train", "test")), ("MSMT17_V2", ("mask_train_v2", "mask_test_v2"))):
        try:
            base = locate_folder(root, folder, (*dirs, "list_train.txt"), aliases=("msmt17",))
        except DatasetError:
            continue
        train_dir, test_dir = base / dirs[0], base / dirs[1]
        train_rows = _read_list(base / "list_train.txt", "msmt17") + _read_list(base / "list_val.txt", "msmt17")
        train = relabel_train(_msmt_items(train_dir, train_rows, base / "list_train.txt"))
        query = _msmt_items(test_dir, _read_list(base / "list_query.txt", "msmt17"), base / "list_query.txt")
        gallery = _msmt_items(test_dir, _read_list(base / "list_gallery.txt", "msmt17"), base / "list_gallery.txt")
        return Dataset(name="msmt17", root=str(base), train=train, query=query, gallery=gallery)
    raise DatasetError(
        f"msmt17: expected MSMT17_V1/{{train,test,list_train.txt,list_val.txt,list_query.txt,list_gallery.txt}} "
        f"or MSMT17_V2/{{mask_train_v2,mask_test_v2,list_*.txt}} under {root} (or {root}/msmt17)"
    )


def _vehicleid_image(image_dir: Path, name: str) -> str:
    path = image_dir / (name if Path(name).suffix else f"{name}.jpg")
    return str(path)


@register_dataset("vehicleid", description="VehicleID (image/ + train_test_split/; options test_size, draw)")
def read_vehicleid(root: Path, test_size: int = 800, draw: int = 0) -> Dataset:
    """VehicleID has no cameras (camera None): the evaluation's camera filter removes nothing.

    ``test`` holds the whole test list; the gallery holds one image per test identity, drawn with
    seed ``draw`` (0..9), and the queries are the rest. Evaluation averages over the 10 draws.
    """
    if test_size not in VEHICLEID_TEST_SIZES:
        raise DatasetError(f"vehicleid: test_size must be one of {VEHICLEID_TEST_SIZES}, got {test_size}")
    base = locate_folder(root, "VehicleID", ("image", "train_test_split"), aliases=("vehicleid", "VehicleID_V1.0"))
    split_dir = base / "train_test_split"
    train_rows = _read_list(split_dir / "train_list.txt", "vehicleid")
    test_rows = _read_list(split_dir / f"test_list_{test_size}.txt", "vehicleid")
    image_dir = base / "image"
    train = relabel_train((_vehicleid_image(image_dir, n), pid, None) for n, pid in train_rows)
    _require_files(train, split_dir / "train_list.txt")
    test: list[Item] = [(_vehicleid_image(image_dir, n), pid, None) for n, pid in test_rows]
    _require_files(test, split_dir / f"test_list_{test_size}.txt")
    query_idx, gallery_idx = vehicleid_gallery_split(np.array([pid for _, pid, _ in test]), draw)
    return Dataset(
        name=f"vehicleid-{test_size}",
        root=str(base),
        train=train,
        query=[test[i] for i in query_idx],
        gallery=[test[i] for i in gallery_idx],
        test=test,
    )


# ----------------------------------------------------------------------------------------------------
# Users' own data


_SPLITS = ("train", "query", "gallery")


@register_dataset("manifest", description="a CSV with columns path,split,pid,camid (camid optional)")
def read_manifest(path: Path) -> Dataset:
    """Read a CSV manifest: ``path,split,pid,camid``; paths are relative to the CSV's folder.

    ``pid`` empty or -1 marks an unlabelled training image.  A ``camid`` left empty or -1 (as
    ``spcl extract`` writes an unknown camera), or no ``camid`` column at all, means the camera is
    unknown (None): evaluation then removes no true match of
    that image, only a query's own file in the gallery. The file may come from a spreadsheet:
    a UTF-8 byte-order mark and Windows line ends are read as plain CSV. An image listed twice in
    one split is refused, naming both lines.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DatasetError(f"manifest: expected a CSV file with columns path,split,pid[,camid] at {path}")
    rows = read_csv_rows(path, ("path", "split", "pid"), "path,split,pid[,camid]")
    base = path.parent
    splits: dict[str, list[Item]] = {s: [] for s in _SPLITS}
    first_line: dict[tuple[str, str], int] = {}
    for lineno, row in rows:
        split = row.get("split", "").lower()
        if split not in splits:
            raise DatasetError(f"{path}:{lineno}: split must be train, query or gallery, got {row.get('split', '')!r}")
        if not row.get("path"):
            raise DatasetError(f"{path}:{lineno}: the path is empty")
        image = (base / row["path"]).resolve()
        if not image.is_file():
            raise DatasetError(f"{path}:{lineno}: image {image} does not exist")
        if (split, str(image)) in first_line:
            raise DatasetError(
                f"{path}:{lineno}: {row['path']} is already listed in the {split} split on line "
                f"{first_line[(split, str(image))]}; list every image once per split"
            )
        first_line[(split, str(image))] = lineno
        pid_text = row.get("pid", "")
        try:
            pid = int(pid_text) if pid_text else -1
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: pid must be an integer or empty, got {pid_text!r}") from None
        if pid < -1:
            raise DatasetError(f"{path}:{lineno}: pid must be >= 0, or -1 / empty for an unlabelled image, got {pid}")
        if pid < 0 and split != "train":
            raise DatasetError(f"{path}:{lineno}: {split} images must carry a pid")
        cam: int | None = None
        if row.get("camid", ""):
            try:
                cam = int(row["camid"])
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: camid must be an integer or empty, got {row['camid']!r}") from None
            if cam < -1:
                raise DatasetError(f"{path}:{lineno}: camid must be >= 0, or -1 / empty for an unknown camera, got {cam}")
            if cam == -1:
                cam = None
        splits[split].append((str(image), pid, cam))
    if not splits["train"] and not splits["query"]:
        raise DatasetError(f"{path}: the manifest lists no images")
    return Dataset(
        name=path.stem,
        root=str(base),
        train=relabel_train(splits["train"]),
        query=splits["query"],
        gallery=splits["gallery"],
    )


def _folder_split(folder: Path, labelled: bool, skipped: list[str]) -> list[tuple[str, str | None]]:
    """(path, identity folder name or None for a loose training image) of one split."""
    items: list[tuple[str, str | None]] = []
    for pid_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        items.extend((str(image), pid_dir.name) for image in list_images(pid_dir, skipped))
    loose = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            loose.append(p)
        elif p.is_file():
            note_skipped(p, skipped)
    if loose:
        if labelled:
            raise DatasetError(
                f"{loose[0]}: query/gallery images must sit in one sub-folder per identity ({folder}/<id>/...)"
            )
        items.extend((str(p), None) for p in loose)
    return items


@register_dataset(
    "folder",
    detect=_has_dirs("train", "query", "gallery"),
    description="image folders train/, query/, gallery/ with one sub-folder per identity",
)
def read_image_folder(root: Path) -> Dataset:
    """Identities are sub-folder names; training images directly in ``train/`` are unlabelled.

    Image folders carry no camera information: every camera is unknown (None).
    """
    require_dirs(root, _SPLITS, "image folder layout (train/, query/, gallery/, one sub-folder per identity)")
    skipped: list[str] = []
    raw = {s: _folder_split(root / s, s != "train", skipped) for s in _SPLITS}
    # Sub-folder names become identities: numeric names keep their value, other names get an index.
    names = sorted({pid for items in raw.values() for _, pid in items if pid is not None})
    numeric = all(n.isdigit() for n in names)
    ids = {n: (int(n) if numeric else i) for i, n in enumerate(names)}
    split_items: dict[str, list[Item]] = {
        s: [(p, ids[pid] if pid is not None else -1, None) for p, pid in items] for s, items in raw.items()
    }
    if not split_items["train"]:
        raise DatasetError(f"image folder layout: no training images under {root / 'train'}")
    return Dataset(
        name=root.name,
        root=str(root),
        train=relabel_train(split_items["train"]),
        query=split_items["query"],
        gallery=split_items["gallery"],
        skipped=skipped,
    )


@register_dataset(
    "market-style",
    detect=_has_dirs(*_MARKET_DIRS),
    description="any folder in the Market-1501 layout (bounding_box_train/, query/, bounding_box_test/)",
)
def read_market_style(root: Path) -> Dataset:
    """Cameras are numbered by the sorted camera numbers found in the file names."""
    require_dirs(root, _MARKET_DIRS, "Market-1501 layout")
    numbers = sorted(
        {int(m.group(2)) for d in _MARKET_DIRS for p in list_images(root / d) if (m := _PID_CAM.match(p.name))}
    )
    index = {n: i for i, n in enumerate(numbers)}
    return _market_style(root.name, root, _MARKET_DIRS, lambda cam, path: index[cam])


def _synthetic_reader(domain: str) -> Callable[..., Dataset]:
    def read(root: Path, seed: int = 0, **config) -> Dataset:
        from spcl.data.synthetic import SynthConfig, ensure_synthetic

        folder = ensure_synthetic(root, f"synth-{domain}", seed=seed, config=SynthConfig(**config) if config else None)
        dataset = _market_style(f"synth-{domain}", Path(folder), _MARKET_DIRS)
        return dataset

    read.__doc__ = f"The built-in synthetic {domain} domain, generated into the data root on first use."
    return read


register_dataset("synth-source", description="built-in synthetic source domain (clean, rendered)")(
    _synthetic_reader("source")
)
register_dataset("synth-target", description="built-in synthetic target domain (surveillance-like)")(
    _synthetic_reader("target")
)
