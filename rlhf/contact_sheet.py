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


MAX_WIDTH = 4000  # px: no page is wider
MAX_HEIGHT = 4000  # px: a page taller than this is split (unless one line alone is taller)
PAD, CAPTION = 8, 28  # px: gap between pictures; room for two caption lines under each


def _fit(pixels: np.ndarray, height: int, max_width: int) -> np.ndarray:
    """`pixels` scaled to `height` px tall, or smaller (same aspect) when that would be wider than max_width."""
    h, w = pixels.shape[:2]
    scale = min(height / h, max_width / w)
    return resize(pixels, (max(1, min(max_width, round(w * scale))), max(1, min(height, round(h * scale)))))


def _lines(cells: list[tuple[np.ndarray, str]], max_width: int) -> list[list[tuple[np.ndarray, str]]]:
    """One row's cells wrapped onto lines no wider than max_width (a line holds at least one cell)."""
    lines: list[list[tuple[np.ndarray, str]]] = [[]]
    x = PAD
    for pix, caption in cells:
        w = pix.shape[1] + PAD
        if lines[-1] and x + w > max_width:
            lines.append([])
            x = PAD
        lines[-1].append((pix, caption))
        x += w
    return lines


def _page_paths(path: Path, n: int) -> list[Path]:
    """`path` itself for one page; <stem>_001<suffix>, <stem>_002<suffix>, ... for several."""
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:03d}{path.suffix}") for i in range(1, n + 1)]


def contact_sheet(rows: Sequence[Sequence[SheetCell]], path: str | Path, height: int = 200,
                  title: str | None = None, max_width: int = MAX_WIDTH, max_height: int = MAX_HEIGHT
                  ) -> list[Path]:
    """Save rows of captioned pictures as PNG pages; returns the pages written, in order.

    Each picture is scaled to `height` px tall (default 200), or smaller when that would make it wider
    than a page; a row wider than `max_width` px (default 4000) wraps onto further lines. Rows fill a
    page until the next would make it taller than `max_height` px (default 4000). One page is saved
    at `path`; several as <stem>_001.png, <stem>_002.png, ... beside it."""
    font = ImageFont.load_default()
    room = max(1, max_width - 2 * PAD)
    line_h = height + CAPTION + PAD
    top = CAPTION if title else 0
    per_page = max(1, (max_height - top - PAD) // line_h)
    pages: list[list[list[tuple[np.ndarray, str]]]] = [[]]
    for row in rows:
        lines = _lines([(_fit(c.pixels, height, room), c.caption) for c in row], max_width)
        if pages[-1] and len(pages[-1]) + len(lines) > per_page and len(lines) <= per_page:
            pages.append([])  # keep a row's lines together when it fits on one page
        for line in lines:
            if len(pages[-1]) >= per_page:
                pages.append([])
            pages[-1].append(line)
    paths = _page_paths(Path(path), len(pages))
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for k, (lines, out) in enumerate(zip(pages, paths, strict=True)):
        width = max([PAD + sum(p.shape[1] + PAD for p, _ in line) for line in lines] or [2 * PAD])
        sheet = Image.new("RGB", (width, top + len(lines) * line_h + PAD), (250, 250, 250))
        d = ImageDraw.Draw(sheet)
        if title:
            d.text((PAD, 6), title if len(pages) == 1 else f"{title}  (page {k + 1} of {len(pages)})",
                   fill=(0, 0, 0), font=font)
        y = top + PAD
        for line in lines:
            x = PAD
            for pix, caption in line:
                sheet.paste(Image.fromarray(pix), (x, y))
                for i, text in enumerate(caption.split("\n")[:2]):
                    d.text((x, y + pix.shape[0] + 2 + 12 * i), text, fill=(0, 0, 0), font=font)
                x += pix.shape[1] + PAD
            y += line_h
        sheet.save(out)
    return paths


def crop_row(pixels: np.ndarray, boxes: Sequence[Box], captions: Sequence[str], name: str = "") -> list[SheetCell]:
    """The photo with every box drawn, then each crop with its caption."""
    drawn = pixels
    for i, b in enumerate(boxes):
        drawn = draw_box(drawn, b, COLORS[i % len(COLORS)])
    cells = [SheetCell(drawn, name)]
    for b, c in zip(boxes, captions, strict=True):
        cells.append(SheetCell(pixels[b[1]:b[3], b[0]:b[2]], c))
    return cells
