"""Pictures of crops: a photo with its box drawn, and contact sheets of many rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rlhf.images import Box, resize

COLORS = [(255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0)]


def draw_box(pixels: np.ndarray, box: Sequence[int], color=(255, 64, 64), width: int | None = None) -> np.ndarray:
    img = Image.fromarray(pixels)
    d = ImageDraw.Draw(img)
    width = width or max(2, min(img.size) // 120)
    d.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=color, width=width)
    return np.asarray(img)


@dataclass
class SheetCell:
    """One picture in a row with a caption under it."""

    pixels: np.ndarray
    caption: str = ""


def _fit(pixels: np.ndarray, height: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    return resize(pixels, (max(1, round(w * height / h)), height))


def contact_sheet(rows: Sequence[Sequence[SheetCell]], path: str | Path, height: int = 200,
                  title: str | None = None) -> Path:
    """Save rows of captioned pictures, each scaled to the same height, as one PNG."""
    font = ImageFont.load_default()
    pad, cap = 8, 28
    rendered = [[_fit(c.pixels, height) for c in row] for row in rows]
    width = max(sum(p.shape[1] + pad for p in row) + pad for row in rendered)
    top = cap if title else 0
    sheet = Image.new("RGB", (width, top + len(rows) * (height + cap + pad) + pad), (250, 250, 250))
    d = ImageDraw.Draw(sheet)
    if title:
        d.text((pad, 6), title, fill=(0, 0, 0), font=font)
    y = top + pad
    for row, cells in zip(rendered, rows, strict=True):
        x = pad
        for pix, cell in zip(row, cells, strict=True):
            sheet.paste(Image.fromarray(pix), (x, y))
            for i, line in enumerate(cell.caption.split("\n")[:2]):
                d.text((x, y + height + 2 + 12 * i), line, fill=(0, 0, 0), font=font)
            x += pix.shape[1] + pad
        y += height + cap + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def crop_row(pixels: np.ndarray, boxes: Sequence[Box], captions: Sequence[str], name: str = "") -> list[SheetCell]:
    """The photo with every box drawn, then each crop with its caption."""
    drawn = pixels
    for i, b in enumerate(boxes):
        drawn = draw_box(drawn, b, COLORS[i % len(COLORS)])
    cells = [SheetCell(drawn, name)]
    for b, c in zip(boxes, captions, strict=True):
        cells.append(SheetCell(pixels[b[1]:b[3], b[0]:b[2]], c))
    return cells
