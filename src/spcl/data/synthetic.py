"""Built-in synthetic two-domain re-ID dataset (issue 2; layouts of SPEC section 9; the UDA
setting of SPEC section 1).

Procedurally drawn pedestrians, written in the Market-1501 layout so that the ordinary Market
reader loads them. Every identity has fixed attributes (clothing colours and patterns, hair, skin,
bag and its side, build, shoes); every image varies viewpoint (which changes what is visible),
pose, crop, occlusion and illumination; every camera has its own background, colour cast, blur,
noise, resolution loss and JPEG quality.

Two domains with disjoint identities:

- ``source``: a clean rendered look (like the synthetic PersonX), vivid clothing, mild cameras;
- ``target``: another attribute distribution (muted, dark, mostly plain clothing, more bags) and
  much stronger camera effects (colour casts, haze, blur, noise, low resolution, heavy JPEG,
  cluttered backgrounds, more occlusion), like real surveillance footage.

The same attribute renders the same way in both domains, so what is learned on the source
transfers in part; the rest is the domain gap that adaptation has to close.

Output is a pure function of ``(seed, config, GENERATOR_VERSION)``: identical bytes on every run
with the same numpy / Pillow (libjpeg) versions. Each domain depends only on its own seed stream,
so generating one domain alone gives the same files as generating both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "SynthConfig",
    "domain_dir_name",
    "ensure_synthetic",
    "generate",
    "generate_domain",
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


# ----------------------------------------------------------------------------------------------
# Attribute vocabularies. The same colour name renders the same way in both domains; the domains
# differ in how often each value is drawn.

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 40),
    "darkred": (120, 25, 35),
    "orange": (230, 125, 35),
    "yellow": (230, 200, 50),
    "green": (45, 150, 65),
    "olive": (105, 110, 55),
    "teal": (35, 140, 140),
    "skyblue": (115, 170, 230),
    "blue": (45, 75, 190),
    "navy": (30, 40, 85),
    "purple": (115, 55, 150),
    "pink": (230, 135, 175),
    "white": (232, 232, 228),
    "lightgrey": (165, 165, 165),
    "darkgrey": (75, 75, 78),
    "black": (28, 28, 32),
    "beige": (210, 190, 150),
    "brown": (110, 72, 42),
    "denim": (70, 95, 140),
    "khaki": (165, 148, 100),
}
COLOURS = tuple(PALETTE)
VIVID = {"red", "orange", "yellow", "green", "teal", "skyblue", "blue", "purple", "pink"}
NEUTRAL = {"black", "darkgrey", "navy", "white", "lightgrey", "beige", "brown", "denim", "khaki", "olive", "darkred"}

HAIR = {
    "black": (22, 20, 20),
    "darkbrown": (60, 40, 28),
    "brown": (105, 70, 40),
    "blond": (205, 170, 95),
    "grey": (150, 150, 150),
    "auburn": (140, 60, 30),
}
SKIN = {
    "light": (238, 200, 175),
    "fair": (225, 180, 145),
    "medium": (198, 145, 105),
    "tan": (165, 115, 80),
    "dark": (110, 75, 55),
}
SHOES = {
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "brown": (95, 60, 35),
    "grey": (130, 130, 135),
    "red": (190, 40, 40),
    "blue": (50, 80, 170),
}
UPPER_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "jacket", "logo", "yoke")
LOWER_TYPES = ("trousers", "shorts", "skirt")
LOWER_PATTERNS = ("solid", "side_stripe", "checks")
HAIR_LENGTHS = ("short", "medium", "long")
BAGS = ("none", "backpack", "shoulder", "handbag")
VIEWS = ("front", "back", "left", "right")


@dataclass(frozen=True)
class _Style:
    """Everything that differs between the two domains."""

    colour_weights: dict[str, float]
    upper_pattern_weights: dict[str, float]
    lower_type_weights: dict[str, float]
    lower_pattern_weights: dict[str, float]
    hair_weights: dict[str, float]
    hair_length_weights: dict[str, float]
    skin_weights: dict[str, float]
    shoe_weights: dict[str, float]
    bag_weights: dict[str, float]
    hat_rate: float
    short_sleeve_rate: float
    build_width: tuple[float, float]
    # camera and image effects
    strength: float  # camera effects: 0 = clean render (source), 1 = surveillance (target default)
    background_chroma: float  # how colourful the scenes are
    occlusion_rate: float
    brightness: tuple[float, float]
    light_gradient: float
    view_bias: float  # 0 = uniform viewpoints, 1 = each camera strongly prefers two views
    camera_popularity: float  # spread of how often each camera sees an identity


def _weights(names: tuple[str, ...], high: set[str], w_high: float, w_low: float) -> dict[str, float]:
    return {n: (w_high if n in high else w_low) for n in names}


def _style(domain: str, config: SynthConfig) -> _Style:
    if domain == "source":
        return _Style(
            colour_weights=_weights(COLOURS, VIVID, 2.0, 1.0),
            upper_pattern_weights=dict(zip(UPPER_PATTERNS, (3, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2))),
            lower_type_weights=dict(zip(LOWER_TYPES, (6, 2, 2))),
            lower_pattern_weights=dict(zip(LOWER_PATTERNS, (6, 1.5, 1))),
            hair_weights={"black": 2, "darkbrown": 2, "brown": 2, "blond": 2, "grey": 1, "auburn": 1},
            hair_length_weights=dict(zip(HAIR_LENGTHS, (4, 3, 3))),
            skin_weights={"light": 2, "fair": 2, "medium": 2, "tan": 1, "dark": 1},
            shoe_weights={"black": 2, "white": 2, "brown": 1, "grey": 1, "red": 1, "blue": 1},
            bag_weights=dict(zip(BAGS, (5, 2, 2, 1))),
            hat_rate=0.08,
            short_sleeve_rate=0.35,
            build_width=(0.85, 1.15),
            strength=0.0,
            background_chroma=30.0,
            occlusion_rate=0.06,
            brightness=(0.88, 1.12),
            light_gradient=0.08,
            view_bias=0.0,
            camera_popularity=0.2,
        )
    s = config.target_strength
    return _Style(
        colour_weights=_weights(COLOURS, NEUTRAL, 2.0, 1.0),
        upper_pattern_weights=dict(zip(UPPER_PATTERNS, (5, 1, 0.7, 0.8, 1.5, 1, 0.7))),
        lower_type_weights=dict(zip(LOWER_TYPES, (8, 1.2, 1.5))),
        lower_pattern_weights=dict(zip(LOWER_PATTERNS, (9, 1, 0.5))),
        hair_weights={"black": 6, "darkbrown": 3, "brown": 1.5, "blond": 0.5, "grey": 0.7, "auburn": 0.3},
        hair_length_weights=dict(zip(HAIR_LENGTHS, (5, 2, 3))),
        skin_weights={"light": 1, "fair": 1.5, "medium": 2, "tan": 2, "dark": 1.5},
        shoe_weights={"black": 4, "white": 3, "brown": 1.5, "grey": 1.5, "red": 0.3, "blue": 0.3},
        bag_weights=dict(zip(BAGS, (3, 3, 2, 1.5))),
        hat_rate=0.12,
        short_sleeve_rate=0.25,
        build_width=(0.8, 1.25),
        strength=s,
        background_chroma=15.0,
        occlusion_rate=_lerp(0.06, 0.2, min(s, 2.0)),
        brightness=(1 - _lerp(0.12, 0.25, min(s, 2.0)), 1 + _lerp(0.12, 0.15, min(s, 2.0))),
        light_gradient=_lerp(0.08, 0.2, min(s, 2.0)),
        view_bias=_lerp(0.0, 0.5, min(s, 1.6)),
        camera_popularity=_lerp(0.2, 0.6, min(s, 1.5)),
    )


# ----------------------------------------------------------------------------------------------
# Identities


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One key of ``weights``, drawn with probability proportional to its weight."""
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> list[int]:
    """A per-identity shade of a palette colour: same family, slightly different tint."""
    out = np.asarray(rgb, dtype=float) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 8 * amount / 0.1, 3)
    return [int(v) for v in np.clip(np.round(out), 0, 255)]


def _attribute_groups(rng: np.random.Generator, style: _Style) -> dict[str, dict[str, Any]]:
    """All attributes of a new identity, grouped so that a sibling can re-draw whole groups."""
    cw = style.colour_weights
    upper = _pick(rng, cw)
    upper2 = _pick(rng, {c: w for c, w in cw.items() if c != upper})
    lower = _pick(rng, cw)
    lower2 = _pick(rng, {c: w for c, w in cw.items() if c != lower})
    return {
        "upper": {
            "upper_colour": upper,
            "upper_rgb": _jitter(rng, PALETTE[upper], 0.08),
            "upper_colour2": upper2,
            "upper_rgb2": _jitter(rng, PALETTE[upper2], 0.08),
            "upper_pattern": _pick(rng, style.upper_pattern_weights),
            "stripe_period": float(round(rng.uniform(0.035, 0.07), 4)),
            "short_sleeves": bool(rng.random() < style.short_sleeve_rate),
        },
        "lower": {
            "lower_colour": lower,
            "lower_rgb": _jitter(rng, PALETTE[lower], 0.08),
            "lower_colour2": lower2,
            "lower_rgb2": _jitter(rng, PALETTE[lower2], 0.08),
            "lower_type": _pick(rng, style.lower_type_weights),
            "lower_pattern": _pick(rng, style.lower_pattern_weights),
        },
        "head": {
            "hair": _pick(rng, style.hair_weights),
            "hair_length": _pick(rng, style.hair_length_weights),
            "hat": _pick(rng, cw) if rng.random() < style.hat_rate else None,
            "skin": _pick(rng, style.skin_weights),
        },
        "bag": {
            "bag": _pick(rng, style.bag_weights),
            "bag_side": _pick(rng, {"left": 1.0, "right": 1.0}),
            "bag_colour": _pick(rng, cw),
        },
        "body": {
            "build_width": float(round(rng.uniform(*style.build_width), 4)),
            "build_height": float(round(rng.uniform(0.9, 1.0), 4)),
            "shoes": _pick(rng, style.shoe_weights),
        },
    }


def _draw_identities(rng: np.random.Generator, style: _Style, count: int, sibling_rate: float) -> list[dict[str, Any]]:
    """Identities of one domain; a share of them are siblings of an earlier one (hard negatives):
    a copy with one or two attribute groups re-drawn."""
    groups: list[dict[str, dict[str, Any]]] = []
    for i in range(count):
        fresh = _attribute_groups(rng, style)
        if i > 0 and rng.random() < sibling_rate:
            parent = groups[int(rng.integers(i))]
            names = list(parent)
            changed = set(rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False).tolist())
            fresh = {n: (fresh[n] if k in changed else dict(parent[n])) for k, n in enumerate(names)}
        groups.append(fresh)
    return [{k: v for g in ident.values() for k, v in g.items()} for ident in groups]


def _identity_hash(domain: str, index: int, attrs: dict[str, Any]) -> str:
    """A stable fingerprint of one person (domain, slot and attributes)."""
    blob = json.dumps({"domain": domain, "index": index, "attrs": attrs}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Cameras


@dataclass
class _Camera:
    index: int
    background: np.ndarray  # H' x W' x 3 float32, larger than the render canvas (crop per image)
    gains: np.ndarray  # 3 x 3 colour matrix
    offset: np.ndarray  # 3
    haze: float
    haze_rgb: np.ndarray
    gamma: float
    exposure: float
    blur: float  # Gaussian radius in pixels of a 64-pixel-high image (scaled with the size)
    noise: float  # std in 0..255 units
    downscale: float  # resolution loss factor (1 = none)
    jpeg_quality: int
    view_probs: np.ndarray  # over VIEWS
    occluder_rgbs: list[np.ndarray] = field(default_factory=list)


def _background(rng: np.random.Generator, rh: int, rw: int, strength: float, chroma: float) -> np.ndarray:
    """A static scene for one camera: wall / floor split, texture, objects; ``strength`` adds
    clutter, blotches (dirt, shadows, reflections) and fine texture."""
    bh, bw = int(rh * 1.25), int(rw * 2.5)
    y = np.arange(bh, dtype=np.float32)[:, None, None] / bh
    x = np.arange(bw, dtype=np.float32)[None, :, None] / bw
    horizon = rng.uniform(0.35, 0.65)
    base = rng.uniform(60, 210)
    wall = np.clip(base + rng.normal(0, chroma, 3), 25, 240).astype(np.float32)
    floor = np.clip(wall * rng.uniform(0.6, 1.1) + rng.normal(0, chroma * 0.7, 3), 20, 235).astype(np.float32)
    img = np.where(y < horizon, wall, floor) * (1 + (rng.uniform(-0.15, 0.15)) * (x - 0.5))
    img = img * (1 + rng.uniform(-0.1, 0.1) * (y - 0.5))
    kind = int(rng.integers(4))
    if kind == 0:  # floor tiles
        period = rng.uniform(0.06, 0.14)
        lines = ((np.floor(x / period) + np.floor(y / period)) % 2 == 0) & (y >= horizon)
        img = img * np.where(lines, 1.0 - rng.uniform(0.04, 0.12), 1.0)
    elif kind == 1:  # vertical panels / shop windows on the wall
        period = rng.uniform(0.1, 0.25)
        panel = (np.mod(x, period) < period * rng.uniform(0.1, 0.3)) & (y < horizon)
        img = np.where(panel, img * rng.uniform(0.6, 0.85), img)
    elif kind == 2:  # horizontal bands (steps, kerbs)
        period = rng.uniform(0.05, 0.12)
        band = (np.mod(y, period) < period * 0.2) & (y >= horizon)
        img = np.where(band, img * rng.uniform(1.05, 1.25), img)
    # kind 3: plain
    img = np.broadcast_to(img, (bh, bw, 3)).copy()
    n_objects = int(rng.integers(1, 4)) + int(round(rng.uniform(0, 5) * min(strength, 2.0)))
    for _ in range(n_objects):
        oh, ow = rng.uniform(0.05, 0.35) * bh, rng.uniform(0.02, 0.15) * bw
        oy, ox = rng.uniform(0, bh - oh), rng.uniform(0, bw - ow)
        grey = rng.uniform(30, 220)
        col = (0.5 * grey + 0.5 * rng.uniform(20, 235, 3)).astype(np.float32)
        img[int(oy) : int(oy + oh), int(ox) : int(ox + ow)] = col
    coarse = (rng.normal(0, 1, (8, 8, 1)) + 0.3 * rng.normal(0, 1, (8, 8, 3))).astype(np.float32)
    coarse_img = np.asarray(
        Image.fromarray(np.clip(128 + 40 * coarse, 0, 255).astype(np.uint8)).resize((bw, bh), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    img = img + _lerp(0.0, 0.4, min(strength, 2.0)) * (coarse_img - 128)
    img = img + rng.normal(0, _lerp(1.5, 5.0, min(strength, 2.0)), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _make_camera(rng: np.random.Generator, index: int, style: _Style, rh: int, rw: int) -> _Camera:
    """Camera ``index`` of a domain. Source cameras (strength 0) already differ a little (light,
    tint, slight blur) so that a source model learns some invariance; the target's differ a lot."""
    s = min(style.strength, 2.0)
    tint = rng.normal(0, 1, 3)
    tint = tint / np.linalg.norm(tint)
    gains = np.eye(3) * (1 + _lerp(0.05, 0.14, s) * tint)[None, :]
    mix = rng.uniform(0, _lerp(0.0, 0.1, s))  # desaturation / channel cross-talk
    gains = (1 - mix) * gains + mix * np.full((3, 3), 1 / 3) @ gains
    haze_rgb = np.clip(np.array([150.0, 150.0, 150.0]) + 60 * rng.normal(0, 1, 3), 60, 230)
    view_probs = np.ones(len(VIEWS))
    if style.view_bias > 0:
        favourite = rng.choice(len(VIEWS), size=2, replace=False)
        view_probs[favourite] += 4 * style.view_bias / (1 - style.view_bias + 1e-6)
    view_probs = view_probs / view_probs.sum()
    return _Camera(
        index=index,
        background=_background(rng, rh, rw, s, style.background_chroma),
        gains=gains.astype(np.float32),
        offset=rng.normal(0, _lerp(1.0, 5.0, s), 3).astype(np.float32),
        haze=float(rng.uniform(0.0, _lerp(0.0, 0.15, s))),
        haze_rgb=haze_rgb.astype(np.float32),
        gamma=float(np.exp(rng.uniform(-1, 1) * _lerp(0.04, 0.12, s))),
        exposure=float(np.exp(rng.uniform(-1, 1) * _lerp(0.06, 0.12, s))),
        blur=float(rng.uniform(_lerp(0.0, 0.2, s), _lerp(0.25, 0.7, s))),
        noise=float(rng.uniform(_lerp(0.5, 1.5, s), _lerp(1.5, 5.0, s))),
        downscale=float(rng.uniform(1.0, _lerp(1.0, 1.8, s))),
        jpeg_quality=int(round(rng.uniform(_lerp(90, 65, min(s, 1.2)), _lerp(95, 85, min(s, 1.2))))),
        view_probs=view_probs,
        occluder_rgbs=[rng.uniform(30, 220, 3).astype(np.float32) for _ in range(3)],
    )


# ----------------------------------------------------------------------------------------------
# Rendering


def _rgb(c: Any, shade: float = 1.0) -> tuple[int, int, int]:
    r, g, b = (int(max(0, min(255, round(float(v) * shade)))) for v in c)
    return (r, g, b)


class _Painter:
    """Draws a pedestrian in figure coordinates (x, y in units of the figure height; x = 0 is the
    body axis, y = 0 the top of the head) on an RGB canvas."""

    def __init__(self, canvas: Image.Image, cx: float, top: float, fh: float) -> None:
        self.canvas = canvas
        self.draw = ImageDraw.Draw(canvas)
        self.cx, self.top, self.fh = cx, top, fh
        self.size = canvas.size
        w, h = canvas.size
        self.gx = ((np.arange(w, dtype=np.float32) + 0.5 - cx) / fh)[None, :]
        self.gy = ((np.arange(h, dtype=np.float32) + 0.5 - top) / fh)[:, None]

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.fh, self.top + y * self.fh)

    def poly(self, pts: list[tuple[float, float]], fill: tuple[int, int, int]) -> None:
        self.draw.polygon([self.p(x, y) for x, y in pts], fill=fill)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: tuple[int, int, int]) -> None:
        (x0, y0), (x1, y1) = self.p(x - rx, y - ry), self.p(x + rx, y + ry)
        self.draw.ellipse([x0, y0, x1, y1], fill=fill)

    def line(self, pts: list[tuple[float, float]], width: float, fill: tuple[int, int, int]) -> None:
        self.draw.line([self.p(x, y) for x, y in pts], fill=fill, width=max(1, int(round(width * self.fh))))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: tuple[int, int, int]) -> None:
        (a, b), (c, d) = self.p(min(x0, x1), min(y0, y1)), self.p(max(x0, x1), max(y0, y1))
        self.draw.rectangle([a, b, c, d], fill=fill)

    def patterned_poly(self, pts: list[tuple[float, float]], pattern: np.ndarray) -> None:
        """Fill a polygon with a full-canvas H x W x 3 uint8 pattern."""
        mask = Image.new("L", self.size, 0)
        ImageDraw.Draw(mask).polygon([self.p(x, y) for x, y in pts], fill=255)
        self.canvas.paste(Image.fromarray(pattern), (0, 0), mask)

    def two_colour(self, sel: np.ndarray, c1: Any, c2: Any) -> np.ndarray:
        sel = np.broadcast_to(sel, (self.size[1], self.size[0]))
        return np.where(sel[..., None], np.asarray(c2, np.uint8), np.asarray(c1, np.uint8)).astype(np.uint8)


def _upper_pattern(pt: _Painter, a: dict[str, Any], view: str, half_w: float) -> np.ndarray:
    c1, c2 = a["upper_rgb"], a["upper_rgb2"]
    period = a["stripe_period"]
    kind = a["upper_pattern"]
    x, y = pt.gx, pt.gy
    side = view in ("left", "right")
    face = {"left": -1.0, "right": 1.0}.get(view, 0.0)
    if kind == "hstripes":
        sel = np.mod(y / period, 1.0) < 0.5
    elif kind == "vstripes":
        sel = np.mod(x / (period * (0.6 if side else 1.0)), 1.0) < 0.5
    elif kind == "checks":
        sel = (np.mod(y / period, 1.0) < 0.5) ^ (np.mod(x / period, 1.0) < 0.5)
    elif kind == "jacket":  # open jacket: the inner shirt shows in front only
        if view == "front":
            sel = np.abs(x) < 0.035 + 0 * y
        elif side:
            sel = (x * face > half_w * 0.55) & (y < 0.45)
        else:
            sel = np.zeros((1, 1), bool)
    elif kind == "logo":  # a print on the chest, visible only from the front
        sel = (np.abs(x) < 0.04) & (np.abs(y - 0.25) < 0.04) if view == "front" else np.zeros((1, 1), bool)
    elif kind == "yoke":  # colour block across the shoulders, all views
        sel = y < 0.24 + 0 * x
    else:
        sel = np.zeros((1, 1), bool)
    return pt.two_colour(sel, c1, c2)


def _lower_pattern(pt: _Painter, a: dict[str, Any], view: str, leg_x: float) -> np.ndarray:
    c1, c2 = a["lower_rgb"], a["lower_rgb2"]
    x, y = pt.gx, pt.gy
    kind = a["lower_pattern"]
    if kind == "side_stripe":
        if view in ("left", "right"):
            sel = np.abs(x) < 0.008 + 0 * y
        else:
            sel = (np.abs(np.abs(x) - leg_x) < 0.009) & (y > 0.5)
    elif kind == "checks":
        sel = (np.mod(y / 0.05, 1.0) < 0.5) ^ (np.mod(x / 0.05, 1.0) < 0.5)
    else:
        sel = np.zeros((1, 1), bool)
    return pt.two_colour(sel, c1, c2)


def _render_person(pt: _Painter, a: dict[str, Any], view: str, stride: float, swing: float) -> None:
    """Draw one pedestrian; what is visible depends on the viewpoint (SPEC: front / back / side)."""
    bw = a["build_width"]
    skin = _rgb(SKIN[a["skin"]])
    hair = _rgb(HAIR[a["hair"]])
    upper = _rgb(a["upper_rgb"])
    shoes = _rgb(SHOES[a["shoes"]])
    bag_rgb = _rgb(PALETTE[a["bag_colour"]])
    side = view in ("left", "right")
    face = {"left": -1.0, "right": 1.0}.get(view, 0.0)  # direction the person faces on the image
    # Which image side the person's own right side is on, for bags.
    right_on = {"front": -1.0, "back": 1.0}.get(view, 0.0)
    bag_sign = right_on * (1.0 if a["bag_side"] == "right" else -1.0)
    bag_near = side and ((view == "right") == (a["bag_side"] == "right"))
    sleeve_end = 0.30 if a["short_sleeves"] else 0.47
    waist, crotch, ankle = 0.49, 0.60, 0.925
    lt = a["lower_type"]
    hem = {"trousers": ankle, "shorts": 0.70, "skirt": 0.72}[lt]
    hl = a["hair_length"]
    hair_end = {"short": 0.10, "medium": 0.16, "long": 0.25}[hl]

    if not side:
        sw, ww, hw = 0.118 * bw, 0.098 * bw, 0.102 * bw
        # long hair behind the shoulders (front view)
        if view == "front" and hl != "short":
            pt.rect(-0.058, 0.05, 0.058, hair_end, hair)
        if view == "front" and a["bag"] == "backpack":  # the pack shows at the sides behind
            pt.rect(-sw - 0.012, 0.17, sw + 0.012, 0.44, _rgb(bag_rgb, 0.75))
        # legs
        spread = 0.012 + 0.02 * abs(stride)
        lift = 0.02 * abs(stride)
        for sgn in (-1.0, 1.0):
            xa = sgn * (0.045 * bw + spread)
            ya = ankle - (lift if sgn * stride > 0 else 0.0)
            leg = [(sgn * hw, waist), (sgn * 0.004, crotch - 0.06), (xa - sgn * 0.024, ya), (xa + sgn * 0.026, ya)]
            pt.poly(leg, skin)
            pt.ellipse(xa, ya + 0.02, 0.033, 0.019, shoes)
            if lt != "skirt":
                t = (hem - waist) / (ya - waist)
                top_in, top_out = leg[1], leg[0]
                bot_in = (top_in[0] + (leg[2][0] - top_in[0]) * t, top_in[1] + (leg[2][1] - top_in[1]) * t)
                bot_out = (top_out[0] + (leg[3][0] - top_out[0]) * t, waist + (ya - waist) * t)
                pt.patterned_poly([top_out, top_in, bot_in, bot_out], _lower_pattern(pt, a, view, 0.045 * bw + 0.03))
        if lt == "skirt":
            pt.patterned_poly(
                [(-ww, waist - 0.02), (ww, waist - 0.02), (hw + 0.045, hem), (-hw - 0.045, hem)],
                _lower_pattern(pt, a, view, hw),
            )
        else:
            pt.patterned_poly([(-hw, waist - 0.02), (hw, waist - 0.02), (hw, crotch - 0.06), (-hw, crotch - 0.06)],
                              _lower_pattern(pt, a, view, 0.045 * bw + 0.03))
        # torso
        torso = [(-sw, 0.15), (sw, 0.15), (ww, waist), (-ww, waist)]
        pt.patterned_poly(torso, _upper_pattern(pt, a, view, sw))
        pt.ellipse(-sw + 0.012, 0.165, 0.028, 0.022, upper)
        pt.ellipse(sw - 0.012, 0.165, 0.028, 0.022, upper)
        # neck
        pt.rect(-0.02, 0.11, 0.02, 0.152, _rgb(SKIN[a["skin"]], 0.9))
        # arms
        for sgn in (-1.0, 1.0):
            hx = sgn * (sw + 0.022 + 0.01 * swing * sgn)
            hy = 0.5 - 0.03 * abs(swing)
            sx, sy = sgn * (sw + 0.004), 0.17
            ex = sx + (hx - sx) * (sleeve_end - sy) / (hy - sy)
            pt.line([(sx, sy), (hx, hy)], 0.046, skin)
            pt.line([(sx, sy), (ex, sleeve_end)], 0.05, upper)
            pt.ellipse(hx, hy + 0.012, 0.02, 0.022, skin)
        # bags
        if a["bag"] == "backpack":
            if view == "back":
                pt.rect(-sw * 0.8, 0.17, sw * 0.8, 0.43, bag_rgb)
                pt.rect(-sw * 0.6, 0.33, sw * 0.6, 0.41, _rgb(bag_rgb, 0.8))
            else:  # straps
                for sgn in (-1.0, 1.0):
                    pt.line([(sgn * sw * 0.55, 0.15), (sgn * sw * 0.62, 0.34)], 0.018, bag_rgb)
        elif a["bag"] == "shoulder":
            bx = bag_sign * (sw + 0.035)
            pt.line([(-bag_sign * sw * 0.6, 0.16), (bx, 0.42)], 0.014, _rgb(bag_rgb, 0.85))
            pt.rect(bx - 0.04, 0.40, bx + 0.04, 0.50, bag_rgb)
        elif a["bag"] == "handbag":
            bx = bag_sign * (sw + 0.03)
            pt.rect(bx - 0.035, 0.50, bx + 0.035, 0.60, bag_rgb)
        # head
        if view == "front":
            pt.ellipse(0, 0.066, 0.054, 0.064, hair)
            pt.ellipse(0, 0.078, 0.045, 0.053, skin)
        else:
            pt.ellipse(0, 0.068, 0.053, 0.064, hair)
            if hl != "short":
                pt.rect(-0.056, 0.07, 0.056, hair_end, hair)
    else:
        d = face
        tw = 0.072 * bw
        far = 0.8
        # backpack sticks out behind
        if a["bag"] == "backpack":
            pt.rect(-d * (tw + 0.06), 0.17, -d * (tw - 0.01), 0.43, bag_rgb)
        if a["bag"] in ("shoulder", "handbag") and not bag_near:
            y0 = 0.40 if a["bag"] == "shoulder" else 0.5
            pt.rect(-d * 0.02 - 0.04, y0, -d * 0.02 + 0.04, y0 + 0.1, _rgb(bag_rgb, far))
        # far arm, far leg, near leg
        hx = -swing * 0.09 * d
        pt.line([(0, 0.17), (hx, 0.48)], 0.044, _rgb(skin, far))
        pt.line([(0, 0.17), (hx * (sleeve_end - 0.17) / 0.31, sleeve_end)], 0.048, _rgb(upper, far))
        for k, sgn in enumerate((-1.0, 1.0)):
            shade = far if k == 0 else 1.0
            xa = sgn * stride * 0.11 * d
            leg = [(-0.04, waist), (0.04, waist), (xa + 0.024, ankle), (xa - 0.024, ankle)]
            pt.poly(leg, _rgb(skin, shade))
            pt.ellipse(xa + d * 0.018, ankle + 0.02, 0.045, 0.018, _rgb(shoes, shade))
            if lt != "skirt":
                t = (hem - waist) / (ankle - waist)
                bl = (-0.04 + (xa - 0.024 + 0.04) * t, hem)
                br = (0.04 + (xa + 0.024 - 0.04) * t, hem)
                pat = _lower_pattern(pt, a, view, 0.0)
                if shade != 1.0:
                    pat = (pat.astype(np.float32) * shade).astype(np.uint8)
                pt.patterned_poly([leg[0], leg[1], br, bl], pat)
        if lt == "skirt":
            pt.patterned_poly([(-tw, waist - 0.02), (tw, waist - 0.02), (tw + 0.04, hem), (-tw - 0.04, hem)],
                              _lower_pattern(pt, a, view, 0.0))
        else:
            pt.patterned_poly([(-tw, waist - 0.02), (tw, waist - 0.02), (tw, waist + 0.05), (-tw, waist + 0.05)],
                              _lower_pattern(pt, a, view, 0.0))
        torso = [(-tw, 0.15), (tw, 0.15), (tw * 0.92, waist), (-tw * 0.92, waist)]
        pt.patterned_poly(torso, _upper_pattern(pt, a, view, tw))
        pt.rect(-0.018, 0.11, 0.018, 0.152, _rgb(SKIN[a["skin"]], 0.9))
        if a["bag"] == "backpack":  # straps over the shoulder
            pt.line([(d * 0.01, 0.15), (d * 0.02, 0.3)], 0.014, bag_rgb)
        # near arm
        hx = swing * 0.09 * d
        pt.line([(0, 0.17), (hx, 0.48)], 0.046, skin)
        pt.line([(0, 0.17), (hx * (sleeve_end - 0.17) / 0.31, sleeve_end)], 0.05, upper)
        pt.ellipse(hx, 0.49, 0.02, 0.022, skin)
        if a["bag"] in ("shoulder", "handbag") and bag_near:
            y0 = 0.40 if a["bag"] == "shoulder" else 0.5
            if a["bag"] == "shoulder":
                pt.line([(0, 0.16), (-d * 0.01, 0.41)], 0.014, _rgb(bag_rgb, 0.85))
            pt.rect(-0.045, y0, 0.045, y0 + 0.1, bag_rgb)
        # head
        pt.ellipse(0, 0.068, 0.05, 0.064, skin)
        pt.ellipse(-d * 0.012, 0.062, 0.046, 0.06, hair)
        pt.ellipse(d * 0.012, 0.078, 0.04, 0.05, skin)
        if hl != "short":
            pt.rect(-d * 0.05, 0.06, -d * 0.005, hair_end, hair)
    if a["hat"] is not None:
        hat = _rgb(PALETTE[a["hat"]])
        pt.rect(-0.056, 0.0, 0.056, 0.03, hat)
        pt.ellipse(0, 0.02, 0.056, 0.03, hat)
        if view != "back":
            brim = 0.03 if not side else 0.05
            pt.rect(-0.05 + min(face, 0) * brim, 0.033, 0.05 + max(face, 0) * brim, 0.045, hat)


def _render_image(
    rng: np.random.Generator, attrs: dict[str, Any], cam: _Camera, style: _Style, config: SynthConfig
) -> Image.Image:
    """One image of one identity seen by one camera, at the configured output size."""
    oh, ow = config.height, config.width
    rh, rw = 2 * oh, 2 * ow  # supersampled canvas, downscaled at the end (anti-aliasing)
    bg = cam.background
    y0 = int(rng.integers(0, bg.shape[0] - rh + 1))
    x0 = int(rng.integers(0, bg.shape[1] - rw + 1))
    canvas = Image.fromarray(bg[y0 : y0 + rh, x0 : x0 + rw].astype(np.uint8))

    view = VIEWS[int(rng.choice(len(VIEWS), p=cam.view_probs))]
    scale = rng.uniform(0.84, 0.97) * attrs["build_height"] / 0.95
    fh = rh * scale
    top = rng.uniform(0.01, max(0.012, rh - fh * 1.0 - 0.01 * rh))
    cx = rw / 2 + rng.uniform(-0.07, 0.07) * rw
    pt = _Painter(canvas, cx, top, fh)
    # A soft ground shadow grounds the figure.
    ground = canvas.getpixel((int(cx), min(rh - 1, int(top + 0.95 * fh))))
    pt.ellipse(0, 0.955, 0.12, 0.02, _rgb(np.asarray(ground, dtype=float) * 0.7))
    stride = float(rng.uniform(-1, 1))
    swing = float(-stride * rng.uniform(0.5, 1.0))
    _render_person(pt, attrs, view, stride, swing)

    if rng.random() < style.occlusion_rate:
        col = _rgb(cam.occluder_rgbs[int(rng.integers(len(cam.occluder_rgbs)))] * rng.uniform(0.8, 1.2))
        kind = int(rng.integers(3))
        d = ImageDraw.Draw(canvas)
        if kind == 0:  # pole
            w = rng.uniform(0.08, 0.2) * rw
            x = rng.uniform(0, rw - w)
            d.rectangle([x, 0, x + w, rh], fill=col)
        elif kind == 1:  # box, bin, railing, car bonnet from below
            h = rng.uniform(0.15, 0.35) * rh
            d.rectangle([0, rh - h, rw, rh], fill=col)
        else:  # another passer-by at the edge
            w = rng.uniform(0.2, 0.35) * rw
            x = 0 if rng.random() < 0.5 else rw - w
            d.rectangle([x, rng.uniform(0.15, 0.3) * rh, x + w, rh * 0.6], fill=col)
            d.rectangle([x, rh * 0.6, x + w, rh], fill=_rgb(PALETTE[COLOURS[int(rng.integers(len(COLOURS)))]]))

    img = np.asarray(canvas, dtype=np.float32)
    # Illumination of this moment: overall brightness and light from one side.
    gain = rng.uniform(*style.brightness) * cam.exposure
    grad = rng.uniform(-1, 1) * style.light_gradient
    xs = np.linspace(-1, 1, rw, dtype=np.float32)[None, :, None]
    img = img * (gain * (1 + grad * xs))
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((ow, oh), Image.Resampling.BOX)

    # Camera: resolution loss, blur, colour cast, haze, gamma, noise.
    if cam.downscale > 1.01:
        lw, lh = max(4, round(ow / cam.downscale)), max(8, round(oh / cam.downscale))
        small = small.resize((lw, lh), Image.Resampling.BILINEAR).resize((ow, oh), Image.Resampling.BICUBIC)
    if cam.blur > 0.05:
        small = small.filter(ImageFilter.GaussianBlur(cam.blur * oh / 64))
    out = np.asarray(small, dtype=np.float32)
    out = out @ cam.gains.T + cam.offset
    out = (1 - cam.haze) * out + cam.haze * cam.haze_rgb
    out = 255.0 * np.power(np.clip(out, 0, 255) / 255.0, cam.gamma)
    out = out + rng.normal(0, cam.noise, out.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# Dataset layout


def _draw_counts(
    rng: np.random.Generator, config: SynthConfig, domain: str, cam_p: np.ndarray, test: bool
) -> list[tuple[int, int]]:
    """(camera, image count) pairs of one identity, cameras ascending."""
    lo, hi = config.cameras_per_id
    k = int(rng.integers(lo, hi + 1))
    cams = np.sort(rng.choice(config.num_cameras, size=k, replace=False, p=cam_p))
    if test:
        a, b = config.test_images_per_camera
    else:
        a, b = config.train_images(domain)
    return [(int(c), int(rng.integers(a, b + 1))) for c in cams]


def generate_domain(out_dir: str | os.PathLike[str], domain: str, seed: int = 0,
                    config: SynthConfig | None = None) -> dict[str, Any]:
    """Write one domain in the Market-1501 layout into ``out_dir`` (created) and return its meta.

    Train pids are 1..n_train, test pids n_train+1..n_train+n_test (4 digits); cameras c1..cN;
    file names ``PPPP_cCs1_FFFFFF_00.jpg`` with a running frame number per camera. Query: one
    random image per test identity and camera; gallery (``bounding_box_test``): the rest.
    """
    config = config or SynthConfig()
    dom = DOMAINS.index(domain) if domain in DOMAINS else -1
    if dom < 0:
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {DOMAINS}")
    out = Path(out_dir)
    for sub in SPLIT_DIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    style = _style(domain, config)
    n_train, n_test = config.ids(domain)
    rh, rw = 2 * config.height, 2 * config.width

    cam_rng = np.random.default_rng([seed, dom, 1])
    cameras = [_make_camera(cam_rng, c, style, rh, rw) for c in range(config.num_cameras)]
    cam_p = np.exp(cam_rng.normal(0, style.camera_popularity, config.num_cameras))
    cam_p = cam_p / cam_p.sum()
    identities = _draw_identities(np.random.default_rng([seed, dom, 2]), style, n_train + n_test, config.sibling_rate)
    layout_rng = np.random.default_rng([seed, dom, 3])
    frames = layout_rng.integers(0, 2000, config.num_cameras)

    sheet_ids = set(range(min(config.contact_sheet_ids // 2, n_train))) | set(
        range(n_train, n_train + min(config.contact_sheet_ids - config.contact_sheet_ids // 2, n_test))
    )
    sheet: dict[tuple[int, int], Image.Image] = {}
    records = []
    counts = {sub: 0 for sub in SPLIT_DIRS}
    split_cams: dict[str, set[int]] = {sub: set() for sub in SPLIT_DIRS}
    split_pids: dict[str, set[int]] = {sub: set() for sub in SPLIT_DIRS}
    for i, attrs in enumerate(identities):
        pid = i + 1
        test = i >= n_train
        plan = _draw_counts(layout_rng, config, domain, cam_p, test)
        records.append({"pid": pid, "split": "test" if test else "train", "hash": _identity_hash(domain, i, attrs),
                        "cameras": [c + 1 for c, _ in plan], "attributes": attrs})
        for cam, n in plan:
            query_pick = int(layout_rng.integers(n)) if test else -1
            for j in range(n):
                frames[cam] += layout_rng.integers(1, 10)
                img_rng = np.random.default_rng([seed, dom, 4, pid, cam, j])
                img = _render_image(img_rng, attrs, cameras[cam], style, config)
                sub = "bounding_box_train" if not test else ("query" if j == query_pick else "bounding_box_test")
                name = f"{pid:04d}_c{cam + 1}s1_{int(frames[cam]):06d}_00.jpg"
                img.save(out / sub / name, "JPEG", quality=cameras[cam].jpeg_quality)
                counts[sub] += 1
                split_cams[sub].add(cam + 1)
                split_pids[sub].add(pid)
                if i in sheet_ids and (i, cam) not in sheet:
                    sheet[(i, cam)] = img
    _write_contact_sheet(out / "contact_sheet.png", sheet, sorted(sheet_ids), config, domain)
    (out / "identities.json").write_text(json.dumps(records, indent=0, sort_keys=True))
    meta = {
        "name": domain_dir_name(domain),
        "domain": domain,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "config": config.to_json(),
        "splits": {
            sub: {"images": counts[sub], "identities": len(split_pids[sub]), "cameras": sorted(split_cams[sub])}
            for sub in SPLIT_DIRS
        },
        "cameras": [
            {"camera": c.index + 1, "jpeg_quality": c.jpeg_quality, "blur": round(c.blur, 3),
             "noise": round(c.noise, 3), "downscale": round(c.downscale, 3), "haze": round(c.haze, 3)}
            for c in cameras
        ],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _write_contact_sheet(path: Path, cells: dict[tuple[int, int], Image.Image], ids: list[int],
                         config: SynthConfig, domain: str) -> None:
    """A grid for people: one row per identity, one column per camera (blank: not seen)."""
    zoom = max(1, 128 // config.height)
    cw, ch = config.width * zoom, config.height * zoom
    pad, label_w, label_h = 2, 44, 14
    cols = config.num_cameras
    sheet = Image.new("RGB", (label_w + cols * (cw + pad), label_h + max(1, len(ids)) * (ch + pad)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    d.text((2, 1), domain, fill=(0, 0, 0))
    for c in range(cols):
        d.text((label_w + c * (cw + pad) + cw // 2 - 6, 1), f"c{c + 1}", fill=(0, 0, 0))
    for r, i in enumerate(ids):
        y = label_h + r * (ch + pad)
        d.text((2, y + ch // 2 - 5), f"{i + 1:04d}", fill=(0, 0, 0))
        for c in range(cols):
            x = label_w + c * (cw + pad)
            if (i, c) in cells:
                sheet.paste(cells[(i, c)].resize((cw, ch), Image.Resampling.NEAREST), (x, y))
            else:
                d.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(225, 225, 225))
    sheet.save(path)


def _meta_matches(folder: Path, domain: str, seed: int, config: SynthConfig) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("version") == GENERATOR_VERSION
        and meta.get("seed") == seed
        and meta.get("domain") == domain
        and meta.get("config") == config.to_json()
    )


def _atomic_domain(root: Path, domain: str, seed: int, config: SynthConfig) -> Path:
    """Generate into a temporary sibling folder, then swap it in with renames."""
    final = root / domain_dir_name(domain)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        generate_domain(tmp, domain, seed, config)
        if final.exists():
            if _meta_matches(final, domain, seed, config):  # another process finished first
                shutil.rmtree(tmp)
                return final
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=root))
            os.replace(final, old / "data")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def ensure_synthetic(root: str | os.PathLike[str], name: str, seed: int = 0,
                     config: SynthConfig | None = None) -> Path:
    """Path of the synthetic domain ``name`` (``synth-source`` / ``synth-target``, or just
    ``source`` / ``target``) under ``root``, generated on first use and reused afterwards.

    A folder whose meta.json records another seed, config or generator version is regenerated.
    Generation writes into a temporary folder renamed into place, so an interrupted run never
    leaves a half-written dataset behind.
    """
    config = config or SynthConfig()
    domain = name.removeprefix("synth-")
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic dataset {name!r}; expected one of "
                         f"{[domain_dir_name(d) for d in DOMAINS]}")
    folder = Path(root) / domain_dir_name(domain)
    if _meta_matches(folder, domain, seed, config):
        return folder
    return _atomic_domain(Path(root), domain, seed, config)


def generate(out: str | os.PathLike[str], seed: int = 0, config: SynthConfig | None = None) -> dict[str, Path]:
    """Write both domains under ``out`` (``synth-source``, ``synth-target``), each with its
    meta.json, identities.json and contact_sheet.png; returns domain -> folder.

    Folders already holding this exact seed / config / version are kept as they are.
    """
    return {d: ensure_synthetic(out, d, seed, config) for d in DOMAINS}
