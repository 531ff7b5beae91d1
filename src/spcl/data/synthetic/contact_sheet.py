"""The contact sheet of a synthetic domain: one row per identity, one column per camera."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from spcl.data.synthetic.config import SynthConfig

__all__ = ["write_contact_sheet"]


def write_contact_sheet(path: Path, cells: dict[tuple[int, int], Image.Image], ids: list[int],
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
