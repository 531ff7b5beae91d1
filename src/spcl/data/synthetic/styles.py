"""What differs between the two synthetic domains: attribute vocabularies and how often each value
is drawn, and the strength of the camera and scene effects.

The same colour name renders the same way in both domains; the domains differ in how often each
value is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

from spcl.data.synthetic.config import SynthConfig


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
class Style:
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


def lerp(a: float, b: float, t: float) -> float:
    """a at t = 0, b at t = 1: effects scale with the target's strength setting."""
    return a + (b - a) * t


def _weights(names: tuple[str, ...], high: set[str], w_high: float, w_low: float) -> dict[str, float]:
    return {n: (w_high if n in high else w_low) for n in names}


def domain_style(domain: str, config: SynthConfig) -> Style:
    if domain == "source":
        return Style(
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
    return Style(
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
        occlusion_rate=lerp(0.06, 0.2, min(s, 2.0)),
        brightness=(1 - lerp(0.12, 0.25, min(s, 2.0)), 1 + lerp(0.12, 0.15, min(s, 2.0))),
        light_gradient=lerp(0.08, 0.2, min(s, 2.0)),
        view_bias=lerp(0.0, 0.5, min(s, 1.6)),
        camera_popularity=lerp(0.2, 0.6, min(s, 1.5)),
    )
