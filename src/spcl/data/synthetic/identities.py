"""Synthetic identities: fixed attributes per person, with siblings (hard negatives) that share most
of an earlier identity's attributes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from spcl.data.synthetic.styles import PALETTE, Style

def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One key of ``weights``, drawn with probability proportional to its weight."""
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> list[int]:
    """A per-identity shade of a palette colour: same family, slightly different tint."""
    out = np.asarray(rgb, dtype=float) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 8 * amount / 0.1, 3)
    return [int(v) for v in np.clip(np.round(out), 0, 255)]


def _attribute_groups(rng: np.random.Generator, style: Style) -> dict[str, dict[str, Any]]:
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


def draw_identities(rng: np.random.Generator, style: Style, count: int, sibling_rate: float) -> list[dict[str, Any]]:
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


def identity_hash(domain: str, index: int, attrs: dict[str, Any]) -> str:
    """A stable fingerprint of one person (domain, slot and attributes)."""
    blob = json.dumps({"domain": domain, "index": index, "attrs": attrs}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]
