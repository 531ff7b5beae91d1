"""A torch ``Dataset`` over ``(path, pid, camid)`` items that names the file when an image cannot be read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from spcl.data.base import Dataset, DatasetError, Item, relabel_train
from spcl.utils import progress as show_progress


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any PIL image.

    PIL's own ``convert("RGB")`` clips 16- and 32-bit greyscale values at 255 (nearly every pixel of
    a 16-bit image turns white), so those modes are scaled to 8 bits first: 16-bit values by
    255 / 65535, 32-bit integers by their type's 16-bit range when their values exceed 255 (PIL
    opens some 16-bit files as ``I``), floats from [0, 1] (or [0, 255] when larger values occur).
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scaled = values / 257.0
        elif mode == "I":
            scaled = values / 257.0 if values.max(initial=0) > 255 else values
        else:
            scaled = values * 255.0 if values.max(initial=0) <= 1.0 else values
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def read_image(path: str) -> Image.Image:
    """Open an image as 8-bit RGB (:func:`to_rgb`); a corrupt or missing file raises an error with its path."""
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


class ImageDataset(TorchDataset):
    """Items -> ``(image tensor, pid, index)``; the index is the item's position in the list, which
    for the training list is its memory slot. Cameras stay in the item lists (they may be None,
    which a batch cannot hold); nothing downstream of the loader needs them."""

    def __init__(self, items: Sequence[Item], transform: Callable | None = None, cache: bool = False) -> None:
        self.items = list(items)
        self.transform = transform
        # Decoding small JPEGs costs more than the augmentation: a small dataset decoded once and kept
        # in memory lets a CPU run use both cores for the network instead of for loader workers.
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, pid, _ = self.items[index]
        image = self._image(index, path)
        if self.transform is not None:
            image = self.transform(image)
        return image, pid, index

    def _image(self, index: int, path: str) -> Image.Image:
        if self._cache is None:
            return read_image(path)
        image = self._cache.get(index)
        if image is None:
            image = self._cache[index] = read_image(path)
        return image


class AugmentedImages(ImageDataset):
    """Training images: keys are ``(index, seed)`` pairs (``RandomMultipleGallerySampler(...,
    seeded=True)``), and each image is augmented with a generator of its own seed, so the result
    depends on the stream alone, not on the loader's workers or on where a run was resumed."""

    def __getitem__(self, key: tuple[int, int]):  # type: ignore[override]
        index, seed = key
        path, pid, _ = self.items[index]
        image = self._image(index, path)
        generator = torch.Generator().manual_seed(int(seed))
        return self.transform(image, generator=generator), pid, index


def verify_images(items: Sequence[Item]) -> None:
    """Decode every image once, so a corrupt file is found before hours of training, not during them."""
    for path, _, _ in items:
        read_image(path)


def without_unreadable(dataset: Dataset, progress: bool = True) -> Dataset:
    """The dataset without the images that cannot be decoded, each listed in ``skipped`` with the
    reason (the ``--skip-bad-images`` policy; without it the first bad image stops the run)."""
    lists = {"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery, "test": dataset.test}
    paths = sorted({path for items in lists.values() for path, _, _ in items})
    bad: dict[str, str] = {}
    for path in show_progress(paths, f"checking {dataset.name} images", enabled=progress):
        try:
            read_image(path)
        except DatasetError as exc:
            bad[path] = str(exc).removeprefix(f"cannot read image {path}: ")
    if not bad:
        return dataset
    kept = {name: [item for item in items if item[0] not in bad] for name, items in lists.items()}
    return replace(
        dataset,
        train=relabel_train(kept["train"]),
        query=kept["query"],
        gallery=kept["gallery"],
        test=kept["test"],
        skipped=[*dataset.skipped, *(f"{path} ({reason})" for path, reason in sorted(bad.items()))],
    )
