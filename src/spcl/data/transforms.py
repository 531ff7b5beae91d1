"""Training and test image transforms (docs/method.md#training-loop).

Training: bicubic resize, random horizontal flip, pad + random crop, ToTensor, ImageNet
normalisation, then the reference's random erasing (Zhong et al.), whose sampling differs from
torchvision's ``RandomErasing``: up to 100 tries of an area in [2%, 40%] and an aspect ratio in
[0.3, 1/0.3] with rounded side lengths that must be strictly smaller than the image, filled with
the constants 0.485, 0.456, 0.406 written into the already normalised tensor.

Randomness comes from one torch generator per call: ``transform(image, generator=g)``. The trainer
gives every sample of its stream its own generator, seeded from (run seed, epoch, position in the
stream), so an image's augmentation does not depend on the loader's workers, on where a run was
resumed, or on how many processes share the stream. Without a generator the global one is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PADDING_MODES",
    "RandomErasing",
    "TrainTransform",
    "build_test_transform",
    "build_train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomErasing(torch.nn.Module):
    """The reference's random erasing on a normalised C x H x W tensor (returns a new tensor).

    With probability ``p``, try up to ``max_tries`` times: area = U(sl, sh) * H * W, aspect
    ratio r = U(r1, 1 / r1), h = round(sqrt(area * r)), w = round(sqrt(area / r)); the first
    rectangle with h < H and w < W is placed uniformly (top-left corner in 0..H-h, 0..W-w) and
    filled with ``value`` (one number per channel; a single-channel image takes the first).
    """

    def __init__(
        self,
        p: float = 0.5,
        sl: float = 0.02,
        sh: float = 0.4,
        r1: float = 0.3,
        value: Sequence[float] = IMAGENET_MEAN,
        max_tries: int = 100,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"erasing probability must be in [0, 1], got {p}")
        if not 0.0 < sl <= sh:
            raise ValueError(f"erasing area range must satisfy 0 < sl <= sh, got sl={sl}, sh={sh}")
        if not 0.0 < r1 <= 1.0:
            raise ValueError(f"erasing aspect ratio bound r1 must be in (0, 1], got {r1}")
        self.p = float(p)
        self.sl = float(sl)
        self.sh = float(sh)
        self.r1 = float(r1)
        self.value = tuple(float(v) for v in value)
        self.max_tries = int(max_tries)
        self.generator = generator

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator`` (default: the one given at construction, else torch's global one) draws."""
        g = generator if generator is not None else self.generator

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=g))

        def randint(high_inclusive: int) -> int:
            return int(torch.randint(high_inclusive + 1, (), generator=g))

        if uniform(0.0, 1.0) >= self.p:
            return img
        _, height, width = img.shape
        area = height * width
        for _ in range(self.max_tries):
            target_area = uniform(self.sl, self.sh) * area
            aspect = uniform(self.r1, 1.0 / self.r1)
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = randint(height - h)
                left = randint(width - w)
                out = img.clone()
                if out.shape[0] == len(self.value):
                    fill = torch.tensor(self.value, dtype=out.dtype).view(-1, 1, 1)
                    out[:, top : top + h, left : left + w] = fill
                else:
                    out[0, top : top + h, left : left + w] = self.value[0]
                return out
        return img

    def extra_repr(self) -> str:
        return f"p={self.p}, area=({self.sl}, {self.sh}), r1={self.r1}, value={self.value}"


PADDING_MODES = ("constant", "edge", "reflect")
"""How the pad-and-crop step fills its border: a constant grey level (``padding_fill``; 0 = black,
the reference's, right for street photos), the edge pixels repeated, or the image mirrored. On
light or uniform backgrounds (documents, product shots, drawn symbols) a black frame is an artefact
the model learns; ``edge`` or ``reflect`` (or ``constant`` with the background's grey level) avoid it."""


class TrainTransform:
    """PIL image -> normalised tensor with the reference's augmentations (docs/method.md#training-loop): bicubic
    resize, horizontal flip, pad + random crop, ImageNet normalisation, random erasing.

    The draws are torchvision's (``RandomHorizontalFlip``, ``RandomCrop``), made from the generator
    passed with each image.
    """

    def __init__(
        self,
        height: int,
        width: int,
        flip_p: float = 0.5,
        padding: int = 10,
        erasing_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        padding_mode: str = "constant",
        padding_fill: int = 0,
    ) -> None:
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {flip_p}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        if not 0 <= padding_fill <= 255:
            raise ValueError(f"padding_fill is a grey level in [0, 255], got {padding_fill}")
        self.size = (height, width)
        self.flip_p, self.padding = float(flip_p), int(padding)
        self.padding_mode, self.padding_fill = padding_mode, int(padding_fill)
        self.resize = T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)
        self.normalize = T.Normalize(mean=list(mean), std=list(std))
        self.erasing = RandomErasing(p=erasing_p) if erasing_p > 0 else None

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = self.resize(image)
        if self.flip_p > 0 and torch.rand(1, generator=generator) < self.flip_p:
            image = TF.hflip(image)
        if self.padding > 0:
            image = TF.pad(image, self.padding, fill=self.padding_fill, padding_mode=self.padding_mode)
            height, width = self.size
            top = int(torch.randint(0, image.height - height + 1, size=(1,), generator=generator))
            left = int(torch.randint(0, image.width - width + 1, size=(1,), generator=generator))
            image = TF.crop(image, top, left, height, width)
        tensor = self.normalize(TF.to_tensor(image))
        if self.erasing is not None:
            tensor = self.erasing(tensor, generator=generator)
        return tensor

    def __repr__(self) -> str:
        pad = f"{self.padding_mode}" + (f" {self.padding_fill}" if self.padding_mode == "constant" else "")
        return (f"TrainTransform(size={self.size}, flip_p={self.flip_p}, padding={self.padding} ({pad}), "
                f"erasing={self.erasing!r})")


build_train_transform = TrainTransform
"""The training augmentation (docs/method.md#training-loop); each step can be switched off: ``flip_p=0``,
``padding=0``, ``erasing_p=0``."""


def build_test_transform(
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> T.Compose:
    """PIL image -> normalised tensor: resize (bicubic, as in training), ToTensor, normalisation
    (ImageNet's by default). The arguments are what a checkpoint's ``preprocessing`` records."""
    try:
        mode = T.InterpolationMode(interpolation)
    except ValueError:
        names = ", ".join(m.value for m in T.InterpolationMode)
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {names}") from None
    return T.Compose(
        [
            T.Resize((height, width), interpolation=mode),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )
