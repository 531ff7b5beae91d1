"""Training and test image transforms (SPEC section 7).

Training: bicubic resize, random horizontal flip, pad + random crop, ToTensor, ImageNet
normalisation, then the reference's random erasing (Zhong et al.), whose sampling differs from
torchvision's ``RandomErasing``: up to 100 tries of an area in [2%, 40%] and an aspect ratio in
[0.3, 1/0.3] with rounded side lengths that must be strictly smaller than the image, filled with
the constants 0.485, 0.456, 0.406 written into the already normalised tensor.

Randomness comes from torch's generator (global by default, which DataLoader seeds per worker),
so the whole pipeline follows one seeding scheme.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomErasing",
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

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _randint(self, high_inclusive: int) -> int:
        return int(torch.randint(high_inclusive + 1, (), generator=self.generator))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self._uniform(0.0, 1.0) >= self.p:
            return img
        _, height, width = img.shape
        area = height * width
        for _ in range(self.max_tries):
            target_area = self._uniform(self.sl, self.sh) * area
            aspect = self._uniform(self.r1, 1.0 / self.r1)
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = self._randint(height - h)
                left = self._randint(width - w)
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


def build_train_transform(
    height: int,
    width: int,
    flip_p: float = 0.5,
    padding: int = 10,
    erasing_p: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """PIL image -> normalised tensor with the reference's augmentations (SPEC section 7).

    Each augmentation can be switched off: ``flip_p=0``, ``padding=0``, ``erasing_p=0``.
    """
    steps: list[object] = [T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)]
    if flip_p > 0:
        steps.append(T.RandomHorizontalFlip(p=flip_p))
    if padding > 0:
        steps += [T.Pad(padding), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if erasing_p > 0:
        steps.append(RandomErasing(p=erasing_p))
    return T.Compose(steps)


def build_test_transform(
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """PIL image -> normalised tensor: bicubic resize, ToTensor, ImageNet normalisation."""
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )
