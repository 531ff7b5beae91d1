"""Ranked-list pictures: one row per query, the query on the left and its top-k gallery entries on
the right, each framed green (same identity), red (another identity) or grey (identity unknown);
entries the evaluation protocol ignores (the query's identity seen by its own camera, or the query's
own file) are washed out and marked. Drawn with Pillow in a font that ships with matplotlib, so a
picture looks the same on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from spcl.data.image_dataset import read_image
from spcl.utils.files import atomic_output
from spcl.data.base import DatasetError

__all__ = ["Entry", "Row", "draw_ranked_lists", "thumb_size"]

GREEN, RED, GREY, BLUE = (34, 139, 34), (214, 39, 40), (150, 150, 150), (31, 119, 180)
_STATUS = {True: GREEN, False: RED, None: GREY}
ROWS_PER_PAGE = 20


@dataclass
class Entry:
    """One gallery image of a row: its path, two caption lines, whether it matches the query."""

    path: str
    caption: str
    detail: str = ""
    match: bool | None = None
    ignored: bool = False


@dataclass
class Row:
    """A query and its ranked entries; ``note`` is printed under the query (e.g. its AP)."""

    path: str
    caption: str
    entries: list[Entry]
    note: str = ""
    detail: str = field(default="")


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        from matplotlib import font_manager

        name = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
        return ImageFont.truetype(name, size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size)


def _thumbnail(path: str, size: tuple[int, int]) -> Image.Image:
    """The image resized to fit ``size`` (height, width), centred on white; a missing file is a grey box."""
    height, width = size
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    try:
        image = read_image(path)
    except DatasetError:
        ImageDraw.Draw(canvas).rectangle([0, 0, width - 1, height - 1], fill=(220, 220, 220))
        ImageDraw.Draw(canvas).text((4, height // 2 - 7), "missing", fill=(90, 90, 90), font=_font(12))
        return canvas
    scale = min(width / image.width, height / image.height)  # small crops are enlarged too
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    canvas.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    return canvas


def thumb_size(path: str, height: int = 128) -> tuple[int, int]:
    """(height, width) of thumbnails for images shaped like ``path`` (persons tall, vehicles wide)."""
    try:
        with Image.open(path) as image:
            w, h = image.size
    except OSError:
        return height, height // 2
    return height, int(min(max(round(height * w / max(h, 1)), height // 3), 2 * height))


def _wash_out(image: Image.Image) -> Image.Image:
    grey = image.convert("L").convert("RGB")
    return Image.blend(grey, Image.new("RGB", image.size, (255, 255, 255)), 0.55)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` shortened with an ellipsis (from the left: file names end in what tells them apart)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def draw_ranked_lists(
    rows: Sequence[Row],
    out: str | Path,
    *,
    title: str = "",
    thumb: tuple[int, int] = (128, 64),
    rows_per_page: int = ROWS_PER_PAGE,
) -> list[Path]:
    """Draw ``rows`` into ``out`` (PNG); more rows than ``rows_per_page`` continue in ``out-2.png``,
    ``out-3.png``... Returns the files written. ``thumb``: (height, width) of each image."""
    if not rows:
        raise ValueError("no ranked lists to draw")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pages = [rows[i : i + rows_per_page] for i in range(0, len(rows), rows_per_page)]
    written = []
    for number, page in enumerate(pages, start=1):
        path = out if number == 1 else out.with_name(f"{out.stem}-{number}{out.suffix}")
        heading = title + (f" (page {number} of {len(pages)})" if len(pages) > 1 else "")
        with atomic_output(path, what="the ranked lists' picture") as tmp:
            _draw_page(page, heading, thumb).save(tmp, format="PNG", optimize=True)
        written.append(path)
    return written


def _draw_page(rows: Sequence[Row], title: str, thumb: tuple[int, int]) -> Image.Image:
    th, tw = thumb
    frame, pad, gap = 4, 8, 28  # frame width, space between cells, space after the query column
    cell_w = max(tw + 2 * frame, 96)
    query_w = max(cell_w, 180)  # the query's column also says how it fared
    caption_h = 36
    row_h = th + 2 * frame + caption_h + pad
    k = max(len(r.entries) for r in rows)
    small, bold = _font(12), _font(12, bold=True)
    header_h = 58 if title else 30
    width = 2 * pad + query_w + gap + k * (cell_w + pad)
    width = max(width, 560)
    height = header_h + len(rows) * row_h + pad
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    y = pad
    if title:
        draw.text((pad, y), _fit(draw, title, _font(17, bold=True), width - 2 * pad), fill=(20, 20, 20), font=_font(17, bold=True))
        y += 28
    x = pad
    entries = [e for r in rows for e in r.entries]
    keys = [(BLUE, "query"), (GREEN, "same identity"), (RED, "other identity")]
    if any(e.match is None for e in entries):
        keys.append((GREY, "identity unknown"))
    for colour, label in keys:
        draw.rectangle([x, y + 2, x + 12, y + 14], outline=colour, width=3)
        draw.text((x + 18, y), label, fill=(40, 40, 40), font=small)
        x += 30 + int(draw.textlength(label, font=small))
    if any(e.ignored for e in entries):
        draw.text((x, y), "washed out: ignored by the protocol (same identity and camera, or the query itself)",
                  fill=(90, 90, 90), font=small)
    y = header_h
    for row in rows:
        cx = pad + (query_w - tw - 2 * frame) // 2
        _cell(page, draw, row.path, cx, y, thumb, frame, BLUE, False)
        lines = [row.caption, row.note or row.detail]
        _captions(draw, lines, pad, y + th + 2 * frame + 2, query_w, (small, bold))
        for j, entry in enumerate(row.entries):
            left = pad + query_w + gap + j * (cell_w + pad)
            ex = left + (cell_w - tw - 2 * frame) // 2
            _cell(page, draw, entry.path, ex, y, thumb, frame, _STATUS[entry.match], entry.ignored)
            _captions(draw, [entry.caption, entry.detail], left, y + th + 2 * frame + 2, cell_w, (bold, small))
        y += row_h
    sep_x = pad + query_w + gap // 2
    draw.line([sep_x, header_h - 4, sep_x, height - pad], fill=(200, 200, 200), width=1)
    return page


def _cell(page: Image.Image, draw: ImageDraw.ImageDraw, path: str, x: int, y: int, thumb: tuple[int, int],
          frame: int, colour: tuple[int, int, int], ignored: bool) -> None:
    image = _thumbnail(path, thumb)
    if ignored:
        image = _wash_out(image)
    draw.rectangle([x, y, x + thumb[1] + 2 * frame - 1, y + thumb[0] + 2 * frame - 1], fill=colour)
    page.paste(image, (x + frame, y + frame))
    if ignored:
        label = "ignored"
        font = _font(11, bold=True)
        w = draw.textlength(label, font=font)
        tx, ty = x + frame + (thumb[1] - w) / 2, y + frame + thumb[0] - 16
        draw.rectangle([tx - 3, ty - 1, tx + w + 3, ty + 13], fill=(255, 255, 255))
        draw.text((tx, ty - 1), label, fill=(70, 70, 70), font=font)


def _captions(draw: ImageDraw.ImageDraw, lines: list[str], left: int, top: int, width: int,
              fonts: tuple[ImageFont.ImageFont, ImageFont.ImageFont]) -> None:
    for i, line in enumerate(lines[:2]):
        if not line:
            continue
        font = fonts[i]
        text = _fit(draw, line, font, width)
        w = draw.textlength(text, font=font)
        draw.text((left + (width - w) / 2, top + 16 * i), text, fill=(30, 30, 30), font=font)
