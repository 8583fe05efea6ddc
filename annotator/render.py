"""What the annotator shows for one pair: crop A, crop B and the whole photo with both boxes.

Everything is computed server-side from the pair's photo into fresh pixel arrays, so the browser
only ever receives re-encoded crops, never a path or a file from disk. A photo that cannot be used
becomes a message for that pair, not an exception.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rlhf.cache import LRUCache
from rlhf.images import ImageLoadError, load_image, resize

# Colours are chosen to stay distinct for the common colour-vision deficiencies (blue vs orange).
COLOR_A = (31, 119, 180)
COLOR_B = (255, 127, 14)
CROP_MAX_SIDE = 768
OVERVIEW_MAX_SIDE = 480


@dataclass
class PairView:
    """Pixels to show for one pair, or `error` saying why the pair cannot be shown."""

    crop_a: np.ndarray | None = None
    crop_b: np.ndarray | None = None
    overview: np.ndarray | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


class PhotoCache:
    """A few recently used photos, decoded once; thread-safe (Gradio runs handlers in threads).

    Keyed by path, size and modification time, so a photo replaced on disk is read again.
    """

    def __init__(self, capacity: int = 8, image_root: str | Path | None = None):
        self.capacity = capacity
        self.image_root = os.path.realpath(image_root) if image_root is not None else None
        self._items: LRUCache[tuple[str, int, int], np.ndarray] = LRUCache(capacity)

    def get(self, path: str | Path) -> np.ndarray:
        """The photo's RGB pixels; ImageLoadError (naming the file) when it cannot be used."""
        real = os.path.realpath(path)
        if self.image_root is not None and not (
                real == self.image_root or real.startswith(self.image_root.rstrip(os.sep) + os.sep)):
            raise ImageLoadError(path, f"outside the allowed image folder {self.image_root}; not shown")
        try:
            st = os.stat(real)
        except OSError as e:
            raise ImageLoadError(path, "no such file" if isinstance(e, FileNotFoundError) else str(e)) from e
        key = (real, st.st_size, st.st_mtime_ns)
        pixels = self._items.get(key)
        if pixels is None:
            pixels = load_image(real)
            pixels.setflags(write=False)  # shared between sessions: nobody may draw on it
            self._items.put(key, pixels)
        return pixels


def _fit(pixels: np.ndarray, max_side: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(pixels)  # enlarge in the browser, not by inventing pixels here
    return resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))))


def box_problem(box: Sequence[int], width: int, height: int) -> str | None:
    """Why a box does not lie inside a width x height photo, or None when it does."""
    l, t, r, b = box
    if not (0 <= l < r <= width and 0 <= t < b <= height):
        return f"box {list(box)} does not lie inside the {width}x{height} photo"
    return None


def draw_overview(pixels: np.ndarray, box_a: Sequence[int], box_b: Sequence[int],
                  max_side: int = OVERVIEW_MAX_SIDE) -> np.ndarray:
    """The whole photo, shrunk, with box A (blue) and box B (orange) drawn and labelled."""
    small = _fit(pixels, max_side).copy()
    sx = small.shape[1] / pixels.shape[1]
    sy = small.shape[0] / pixels.shape[0]
    thick = max(2, round(max(small.shape[:2]) / 160))
    for label, box, color in (("A", box_a, COLOR_A), ("B", box_b, COLOR_B)):
        l, t, r, b = box
        p1 = (int(round(l * sx)), int(round(t * sy)))
        p2 = (int(round(r * sx)) - 1, int(round(b * sy)) - 1)
        cv2.rectangle(small, p1, p2, color, thick)
        scale = max(0.5, max(small.shape[:2]) / 600)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        # Label tucked inside the box's corner so it stays visible when the box touches an edge.
        x0, y0 = p1[0] + thick, p1[1] + thick
        cv2.rectangle(small, (x0, y0), (x0 + tw + 6, y0 + th + base + 4), color, -1)
        cv2.putText(small, label, (x0 + 3, y0 + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 2, cv2.LINE_AA)
    return small


def render_pair(cache: PhotoCache, image: str, box_a: Sequence[int], box_b: Sequence[int],
                crop_max: int = CROP_MAX_SIDE, overview_max: int = OVERVIEW_MAX_SIDE) -> PairView:
    """Crops and overview for a pair; a missing, corrupt or refused photo gives `error` instead."""
    try:
        pixels = cache.get(image)
    except ImageLoadError as e:
        return PairView(error=f"This pair's photo cannot be shown: {e.reason} ({Path(image).name}). "
                              "Skip it with → ; nothing else is affected.")
    h, w = pixels.shape[:2]
    view = PairView()
    for name, box in (("A", box_a), ("B", box_b)):
        problem = box_problem(box, w, h)
        if problem is not None:
            view.error = f"Crop {name} cannot be shown: {problem}. Skip this pair with → ."
            return view
    view.crop_a = _fit(pixels[box_a[1]:box_a[3], box_a[0]:box_a[2]], crop_max)
    view.crop_b = _fit(pixels[box_b[1]:box_b[3], box_b[0]:box_b[2]], crop_max)
    view.overview = draw_overview(pixels, box_a, box_b, overview_max)
    return view
