"""Synthetic cameras: each has its own scene, colour cast, haze, blur, noise, resolution loss, JPEG
quality and preferred viewpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from spcl.data.synthetic.styles import VIEWS, Style, lerp

@dataclass
class Camera:
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
    img = img + lerp(0.0, 0.4, min(strength, 2.0)) * (coarse_img - 128)
    img = img + rng.normal(0, lerp(1.5, 5.0, min(strength, 2.0)), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def make_camera(rng: np.random.Generator, index: int, style: Style, rh: int, rw: int) -> Camera:
    """Camera ``index`` of a domain. Source cameras (strength 0) already differ a little (light,
    tint, slight blur) so that a source model learns some invariance; the target's differ a lot."""
    s = min(style.strength, 2.0)
    tint = rng.normal(0, 1, 3)
    tint = tint / np.linalg.norm(tint)
    gains = np.eye(3) * (1 + lerp(0.05, 0.14, s) * tint)[None, :]
    mix = rng.uniform(0, lerp(0.0, 0.1, s))  # desaturation / channel cross-talk
    gains = (1 - mix) * gains + mix * np.full((3, 3), 1 / 3) @ gains
    haze_rgb = np.clip(np.array([150.0, 150.0, 150.0]) + 60 * rng.normal(0, 1, 3), 60, 230)
    view_probs = np.ones(len(VIEWS))
    if style.view_bias > 0:
        favourite = rng.choice(len(VIEWS), size=2, replace=False)
        view_probs[favourite] += 4 * style.view_bias / (1 - style.view_bias + 1e-6)
    view_probs = view_probs / view_probs.sum()
    return Camera(
        index=index,
        background=_background(rng, rh, rw, s, style.background_chroma),
        gains=gains.astype(np.float32),
        offset=rng.normal(0, lerp(1.0, 5.0, s), 3).astype(np.float32),
        haze=float(rng.uniform(0.0, lerp(0.0, 0.15, s))),
        haze_rgb=haze_rgb.astype(np.float32),
        gamma=float(np.exp(rng.uniform(-1, 1) * lerp(0.04, 0.12, s))),
        exposure=float(np.exp(rng.uniform(-1, 1) * lerp(0.06, 0.12, s))),
        blur=float(rng.uniform(lerp(0.0, 0.2, s), lerp(0.25, 0.7, s))),
        noise=float(rng.uniform(lerp(0.5, 1.5, s), lerp(1.5, 5.0, s))),
        downscale=float(rng.uniform(1.0, lerp(1.0, 1.8, s))),
        jpeg_quality=int(round(rng.uniform(lerp(90, 65, min(s, 1.2)), lerp(95, 85, min(s, 1.2))))),
        view_probs=view_probs,
        occluder_rgbs=[rng.uniform(30, 220, 3).astype(np.float32) for _ in range(3)],
    )
