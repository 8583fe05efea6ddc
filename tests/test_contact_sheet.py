"""Contact sheets stay viewable: no page wider than 4000 px, long runs split into pages of bounded height."""

from __future__ import annotations

import numpy as np
from PIL import Image

from rlhf.contact_sheet import MAX_HEIGHT, MAX_WIDTH, SheetCell, contact_sheet, crop_row


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _sizes(paths) -> list[tuple[int, int]]:
    sizes = []
    for p in paths:
        with Image.open(p) as im:
            sizes.append(im.size)
    return sizes


def test_a_very_wide_photo_among_others_keeps_every_page_narrow(tmp_path):
    photos = [_photo(640, 480, 1), _photo(3000, 20, 2), _photo(300, 451, 3)]
    rows = [crop_row(p, [(0, 0, p.shape[1] // 2, p.shape[0])], ["half"], f"photo {i}")
            for i, p in enumerate(photos)]
    pages = contact_sheet(rows, tmp_path / "contact_sheet.png", title="wide")
    assert pages == [tmp_path / "contact_sheet.png"]
    for w, h in _sizes(pages):
        assert w <= MAX_WIDTH and h <= MAX_HEIGHT
    # The normal photos keep their size: a row of a 640x480 photo and its half is 200 px tall pictures.
    assert _sizes(pages)[0][0] >= 8 + 267 + 8 + 133 + 8


def test_a_row_of_many_pictures_wraps_within_the_width(tmp_path):
    row = [SheetCell(_photo(400, 200, i), f"cell {i}") for i in range(30)]  # 30 x 408 px in one row
    (page,) = contact_sheet([row], tmp_path / "sheet.png", max_width=2000)
    (w, h), = _sizes([page])
    assert w <= 2000 and h > 2 * 200


def test_many_photos_give_several_pages_of_bounded_height(tmp_path):
    rows = [crop_row(_photo(320, 240, i), [(10, 10, 200, 200)], [f"crop {i}"], f"photo {i}") for i in range(40)]
    pages = contact_sheet(rows, tmp_path / "contact_sheet.png", title="many")
    assert len(pages) > 1
    assert [p.name for p in pages] == [f"contact_sheet_{i:03d}.png" for i in range(1, len(pages) + 1)]
    assert not (tmp_path / "contact_sheet.png").exists()
    for w, h in _sizes(pages):
        assert w <= MAX_WIDTH and h <= MAX_HEIGHT
    lines = (sum(h for _, h in _sizes(pages)) - len(pages) * (28 + 8)) // (200 + 28 + 8)
    assert lines == 40  # every row is on some page, once


def test_no_rows_still_writes_one_page(tmp_path):
    (page,) = contact_sheet([], tmp_path / "empty.png", title="nothing")
    assert page.is_file()
