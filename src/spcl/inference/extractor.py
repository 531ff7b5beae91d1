"""``FeatureExtractor``: a trained checkpoint as a function from images to re-ID features.

The checkpoint records how its encoder was built and how images were prepared for it (size,
interpolation, mean and std), so a user never repeats a training flag to use the model: the
preprocessing here is the one evaluation used during training. DSBN models answer through their
target-domain BatchNorms unless asked for the source ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from spcl.data.image_dataset import read_image, to_rgb
from spcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from spcl.models import num_bn_domains, set_domain
from spcl.utils import resolve_device
from spcl.utils import progress as show_progress

__all__ = ["FeatureExtractor", "ImageInput", "Preprocessing", "as_pil"]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
"""One image: a file path, a PIL image, or a uint8 array (H x W x 3 RGB, or H x W grey)."""

DOMAINS = {"target": -1, "source": 0}


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the encoder (as recorded in a checkpoint)."""

    height: int
    width: int
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Preprocessing:
        prep = state["model"]["preprocessing"]
        return cls(
            int(prep["height"]), int(prep["width"]), str(prep.get("interpolation", "bicubic")),
            tuple(float(v) for v in prep.get("mean", IMAGENET_MEAN)), tuple(float(v) for v in prep.get("std", IMAGENET_STD)),
        )

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return build_test_transform(self.height, self.width, self.mean, self.std, self.interpolation)


def as_pil(image: ImageInput) -> Image.Image:
    """An RGB PIL image from any accepted input; a bad input names what was expected."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (1, 3, 4)
        ):
            raise ValueError(
                "an image array must be uint8 (or uint16: scaled to 8 bits), H x W x 3 (RGB), H x W x 4 or H x W; "
                f"got {image.dtype} {image.shape}"
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.dtype == np.uint16:
            image = np.rint(image / 257.0).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise TypeError(f"expected an image path, a PIL image or a uint8 array, got {type(image).__name__}")


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[ImageInput], transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(as_pil(self.images[index]))


class FeatureExtractor:
    """Features of images under a trained checkpoint: ``FeatureExtractor("runs/x/best.pth")(paths)``.

    ``domain``: "target" (default) or "source", the BatchNorm branch of a DSBN model (a model
    with one branch uses it for both). ``batch_size`` images go through the encoder at a time;
    ``workers`` > 0 decodes them in loader processes (paths only: in-memory images are prepared
    in this process). The model is in eval mode and its features are L2-normalised.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        *,
        domain: str = "target",
        batch_size: int = 64,
        workers: int = 0,
    ) -> None:
        from spcl.models import load_model

        if domain not in DOMAINS:
            raise ValueError(f"domain must be 'target' or 'source', got {domain!r}")
        if batch_size < 1 or workers < 0:
            raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size}, {workers}")
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.model: nn.Module
        self.model, self.state = load_model(checkpoint, self.device)
        self.domain = domain
        if num_bn_domains(self.model) > 1:
            set_domain(self.model, DOMAINS[domain])
        self.preprocessing = Preprocessing.from_checkpoint(self.state)
        self.transform = self.preprocessing.transform()
        self.batch_size, self.workers = batch_size, workers
        self.feature_dim = int(self.state["model"].get("out_features") or self._probe_dim())

    def _probe_dim(self) -> int:
        p = self.preprocessing
        with torch.no_grad():
            return int(self.model(torch.zeros(1, 3, p.height, p.width, device=self.device)).shape[1])

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"FeatureExtractor({str(self.checkpoint)!r}, device={str(self.device)!r}, domain={self.domain!r}: "
                f"{self.state['model']['arch']} {p.height}x{p.width} -> {self.feature_dim}-d)")

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image as the encoder's input (3 x H x W float32), prepared as in evaluation."""
        return self.transform(as_pil(image))

    @torch.no_grad()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Features (float32, on the CPU) of a preprocessed batch (N x 3 x H x W)."""
        return self.model(batch.to(self.device, non_blocking=True)).float().cpu()

    def batches(self, images: Sequence[ImageInput], progress: bool = False, desc: str = "features") -> Iterator[torch.Tensor]:
        """Features of ``images`` one batch at a time, in order (for streaming large lists)."""
        in_memory = any(not isinstance(image, (str, os.PathLike)) for image in images)
        loader = torch.utils.data.DataLoader(
            _Images(images, self.transform), batch_size=self.batch_size, shuffle=False,
            num_workers=0 if in_memory else self.workers, pin_memory=self.device.type == "cuda",
        )
        for batch in show_progress(loader, desc, total=len(loader), enabled=progress):
            yield self.encode(batch)

    def __call__(
        self, images: ImageInput | Sequence[ImageInput], *, as_tensor: bool = False, progress: bool = False
    ) -> np.ndarray | torch.Tensor:
        """N x d float32 features, L2-normalised, one row per image in order (one image: 1 x d).

        ``images``: paths, PIL images or uint8 arrays, one or a sequence (an N x H x W x 3 uint8
        array is N images). ``as_tensor`` returns a torch tensor instead of a numpy array."""
        if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4):
            images = [images]
        images = list(images)
        if not images:
            features = torch.zeros(0, self.feature_dim)
        else:
            features = torch.cat(list(self.batches(images, progress)))
        return features if as_tensor else features.numpy()
