"""Drawing one image: a pedestrian from its attributes, seen by one camera at one moment."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from spcl.data.synthetic.cameras import Camera
from spcl.data.synthetic.config import SynthConfig
from spcl.data.synthetic.styles import COLOURS, HAIR, PALETTE, SHOES, SKIN, VIEWS, Style

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
    """Draw one pedestrian; what is visible depends on the viewpoint (front / back / side)."""
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


def render_image(
    rng: np.random.Generator, attrs: dict[str, Any], cam: Camera, style: Style, config: SynthConfig
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
