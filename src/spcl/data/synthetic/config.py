"""Size and difficulty of the built-in synthetic dataset, and the names of its two domains."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_TRAIN_IMAGES_PER_CAMERA",
    "DOMAINS",
    "GENERATOR_VERSION",
    "SPLIT_DIRS",
    "SynthConfig",
    "domain_dir_name",
]

GENERATOR_VERSION = 1
DOMAINS = ("source", "target")
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
DEFAULT_TRAIN_IMAGES_PER_CAMERA = {"source": (1, 4), "target": (2, 5)}


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the synthetic dataset; the defaults fit a CPU demo (about 8,300
    images at 64x32, generated in about 15 s on one core).

    Identity counts are per domain and split; train and test identities are disjoint. Each
    identity is seen by ``cameras_per_id`` cameras (inclusive range) with a random number of
    images in each (ranges inclusive). ``train_images_per_camera`` applies to both domains when
    set; by default (None) target training identities get more images than source ones (2-5 vs
    1-4 a camera, about 12 vs 9 in all), as in real footage: clustering works on them. Test identities
    get at least two images per camera so that every query (one image per identity and camera)
    has true matches in the gallery. ``sibling_rate`` is the share of identities copied from an
    earlier one with one or two attribute groups re-drawn (hard negatives). ``target_strength``
    scales the target's camera and scene effects (0 = as clean as the source cameras, 1 = the
    calibrated default). ``contact_sheet_ids`` rows go into each domain's contact sheet.
    """

    height: int = 64
    width: int = 32
    num_cameras: int = 6
    source_train_ids: int = 300
    source_test_ids: int = 100
    target_train_ids: int = 200
    target_test_ids: int = 200
    cameras_per_id: tuple[int, int] = (2, 5)
    train_images_per_camera: tuple[int, int] | None = None
    test_images_per_camera: tuple[int, int] = (2, 4)
    sibling_rate: float = 0.3
    target_strength: float = 1.0
    contact_sheet_ids: int = 16

    def __post_init__(self) -> None:
        if self.height < 32 or self.width < 16:
            raise ValueError(f"images must be at least 32x16 (height x width), got {self.height}x{self.width}")
        if not 2 <= self.num_cameras <= 9:
            raise ValueError(
                f"num_cameras must be in 2..9 (Market names hold one camera digit), got {self.num_cameras}"
            )
        lo, hi = self.cameras_per_id
        if not 1 <= lo <= hi <= self.num_cameras:
            raise ValueError(f"cameras_per_id must satisfy 1 <= low <= high <= num_cameras, got {self.cameras_per_id}")
        for name in ("train_images_per_camera", "test_images_per_camera"):
            value = getattr(self, name)
            if value is not None and not 1 <= value[0] <= value[1]:
                raise ValueError(f"{name} must satisfy 1 <= low <= high, got {tuple(value)}")
        if self.test_images_per_camera[0] < 2 or lo < 2:
            if self.source_test_ids or self.target_test_ids:
                raise ValueError(
                    "test identities need cameras_per_id >= 2 and test_images_per_camera >= 2 "
                    "so that every query has a match in the gallery"
                )
        counts = (self.source_train_ids, self.source_test_ids, self.target_train_ids, self.target_test_ids)
        if min(counts) < 0 or self.source_train_ids + self.source_test_ids > 9999:
            raise ValueError(f"identity counts must be >= 0 and fit 4 digits per domain, got {counts}")
        if self.target_train_ids + self.target_test_ids > 9999:
            raise ValueError(f"identity counts must fit 4 digits per domain, got {counts}")
        if not 0.0 <= self.sibling_rate <= 1.0:
            raise ValueError(f"sibling_rate must be in [0, 1], got {self.sibling_rate}")
        if self.target_strength < 0:
            raise ValueError(f"target_strength must be >= 0, got {self.target_strength}")

    def train_images(self, domain: str) -> tuple[int, int]:
        """Range of images per camera of a training identity of ``domain``."""
        if self.train_images_per_camera is not None:
            return (int(self.train_images_per_camera[0]), int(self.train_images_per_camera[1]))
        return DEFAULT_TRAIN_IMAGES_PER_CAMERA[domain]

    def ids(self, domain: str) -> tuple[int, int]:
        """(train, test) identity counts of a domain."""
        if domain == "source":
            return self.source_train_ids, self.source_test_ids
        if domain == "target":
            return self.target_train_ids, self.target_test_ids
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {DOMAINS}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (tuples become lists), the form stored in meta.json."""
        return json.loads(json.dumps(asdict(self)))


def domain_dir_name(domain: str) -> str:
    """Folder / dataset name of a domain: ``synth-source`` or ``synth-target``."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {DOMAINS}")
    return f"synth-{domain}"
