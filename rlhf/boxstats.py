"""Box statistics of a photo's maps: saliency, summed-area tables, box sums, framing cues, colour cues, IoU.

Coordinates are in cells of the map (a map of shape (h, w) spans x in [0, w], y in [0, h]); a box
is (left, top, right, bottom). Callers scale photo pixels to cells themselves, since each decides
how finely it samples the photo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

ArrayLike = np.ndarray | float | int

# Depth of the framing cues' edge strips, a fraction of the box's shorter side: deep enough to hold a
# limb the edge cuts through, shallow enough to be about the edge rather than the crop.
EDGE_STRIP = 0.06


def spectral_residual(rgb: np.ndarray, blur_sigma: float) -> np.ndarray | None:
    """OpenCV's spectral-residual saliency (Hou & Zhang 2007) of uint8 RGB pixels, blurred.

    Returns a float32 map at the pixels' size (None when OpenCV fails); callers resize the photo
    first, since the map's resolution sets the scale of what counts as salient.
    """
    ok, m = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(
        np.ascontiguousarray(rgb[..., 2::-1]))
    if not ok:
        return None
    return cv2.GaussianBlur(np.asarray(m, np.float32), (0, 0), float(blur_sigma))


def summed_area(m: np.ndarray) -> np.ndarray:
    """Summed-area table of (..., h, w) -> (..., h + 1, w + 1), float64, with a zero first row and column:
    the sum over any box is four look-ups."""
    h, w = m.shape[-2:]
    flat = m.reshape(-1, h, w)
    if len(flat) > 16:  # many small channels (a class-logit map): one vectorised pass beats a call each
        s = np.zeros((len(flat), h + 1, w + 1), dtype=np.float64)
        np.cumsum(flat, -2, dtype=np.float64, out=s[:, 1:, 1:])
        np.cumsum(s[:, 1:, 1:], -1, out=s[:, 1:, 1:])
    else:  # cv2.integral: one pass in C, several times faster than numpy's two strided cumsums
        s = np.stack([cv2.integral(np.asarray(c, dtype=np.float64), sdepth=cv2.CV_64F) for c in flat])
    return s.reshape(*m.shape[:-2], h + 1, w + 1)


def moment_sat(m: np.ndarray) -> np.ndarray:
    """Summed-area tables (3, h + 1, w + 1) of m, m * x and m * y (x, y: cell centres, in cells):
    any box's mass and mass centroid in O(1)."""
    h, w = m.shape
    xs = (np.arange(w, dtype=np.float64) + 0.5)[None, :]
    ys = (np.arange(h, dtype=np.float64) + 0.5)[:, None]
    m = m.astype(np.float64)
    return summed_area(np.stack([m, m * xs, m * ys]))


def box_sums(sat: np.ndarray, x0: ArrayLike, y0: ArrayLike, x1: ArrayLike, y1: ArrayLike) -> np.ndarray:
    """Sums of the map behind a table (..., h + 1, w + 1) over boxes; coordinates scalars or (n,) arrays.

    Integer coordinates are four look-ups. Fractional ones are exact for the piecewise-constant map:
    its integral is bilinear inside each cell, so the table is interpolated bilinearly (coordinates are
    clipped to the map). Returns (...) for scalar coordinates, (..., n) for arrays.
    """
    coords = [np.asarray(c) for c in (x0, y0, x1, y1)]
    if all(np.issubdtype(c.dtype, np.integer) for c in coords):
        a, b, c, d = coords
        return sat[..., d, c] - sat[..., b, c] - sat[..., d, a] + sat[..., b, a]
    h, w = sat.shape[-2] - 1, sat.shape[-1] - 1
    shape = np.broadcast_shapes(*(c.shape for c in coords))
    a, b, c, d = (np.broadcast_to(v, shape).astype(np.float64).ravel() for v in coords)
    n = a.size
    # All corners gathered at once: numpy call overhead, not arithmetic, is the cost at these sizes.
    x = np.clip(np.concatenate([c, a, c, a]), 0.0, float(w))
    y = np.clip(np.concatenate([d, d, b, b]), 0.0, float(h))
    xi = np.minimum(x.astype(np.int64), w - 1)
    yi = np.minimum(y.astype(np.int64), h - 1)
    fx, fy = x - xi, y - yi
    v = ((1 - fx) * (1 - fy) * sat[..., yi, xi] + fx * (1 - fy) * sat[..., yi, xi + 1]
         + (1 - fx) * fy * sat[..., yi + 1, xi] + fx * fy * sat[..., yi + 1, xi + 1])
    out = v[..., :n] - v[..., n:2 * n] - v[..., 2 * n:3 * n] + v[..., 3 * n:]
    return out.reshape(out.shape[:-1] + shape)


def box_means(sat: np.ndarray, x0: ArrayLike, y0: ArrayLike, x1: ArrayLike, y1: ArrayLike,
              min_area: float = 1e-9) -> np.ndarray:
    """Means of the map over boxes (see box_sums); areas below min_area count as min_area."""
    area = np.maximum((np.asarray(x1) - x0) * (np.asarray(y1) - y0), min_area)
    return box_sums(sat, x0, y0, x1, y1) / area


class FramingCues(NamedTuple):
    """Framing cues of boxes read off a moment table (see framing_cues); each (n,) or scalar."""

    mass: np.ndarray      # the map's sum inside the box
    kept: np.ndarray      # mass / the map's total: share of the photo's saliency inside the box
    cx: np.ndarray        # mass centroid across the box (0 left edge, 1 right edge; 0.5 with no mass)
    cy: np.ndarray        # mass centroid down the box (0 top, 1 bottom)
    edges: np.ndarray     # (4, ...) density of strips just inside the left, top, right, bottom edges
                          # relative to the photo's mean density (1: as dense as the photo on average)


def edge_strips(x0: ArrayLike, y0: ArrayLike, x1: ArrayLike, y1: ArrayLike, strip: float,
                min_strip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Strips just inside each edge (left, top, right, bottom) of boxes, each as coordinate arrays
    (4, ...): depth strip * the box's shorter side, at least min_strip cells."""
    x0, y0, x1, y1 = (np.asarray(v, dtype=np.float64) for v in (x0, y0, x1, y1))
    k = np.maximum(strip * np.minimum(x1 - x0, y1 - y0), min_strip)
    return (np.stack([x0, x0, x1 - k, x0]), np.stack([y0, y0, y0, y1 - k]),
            np.stack([x0 + k, x1, x1, x1]), np.stack([y1, y0 + k, y1, y1]))


def framing_cues(msat: np.ndarray, x0: ArrayLike, y0: ArrayLike, x1: ArrayLike, y1: ArrayLike,
                 strip: float = EDGE_STRIP, min_strip: float = 1.0) -> FramingCues:
    """Where a saliency map's mass lies relative to boxes, from its moment table (moment_sat).

    Args:
        msat: moment_sat of the map, (3, h + 1, w + 1).
        x0, y0, x1, y1: the boxes in cells (scalars or (n,) arrays); integer boxes sum exactly by look-ups.
        strip: depth of each edge strip as a fraction of the box's shorter side (default EDGE_STRIP).
        min_strip: least strip depth in cells (default 1), so a small box's strips still cover something.
    """
    h, w = msat.shape[-2] - 1, msat.shape[-1] - 1
    total = max(float(msat[0, h, w]), 1e-12)
    mass, mx, my = box_sums(msat, x0, y0, x1, y1)
    fx0, fy0, fx1, fy1 = (np.asarray(v, dtype=np.float64) for v in (x0, y0, x1, y1))
    has = mass > 1e-12
    safe = np.where(has, mass, 1.0)
    cx = np.where(has, (mx / safe - fx0) / np.maximum(fx1 - fx0, 1e-12), 0.5)
    cy = np.where(has, (my / safe - fy0) / np.maximum(fy1 - fy0, 1e-12), 0.5)
    edges = box_means(msat[0], *edge_strips(x0, y0, x1, y1, strip, min_strip)) / (total / (h * w))
    return FramingCues(mass=mass, kept=mass / total, cx=cx, cy=cy, edges=edges)


def colour_sat(rgb: np.ndarray) -> np.ndarray:
    """Summed-area tables of brightness, warmth (R - B) and green-magenta (G - (R + B) / 2), in [-1, 1]."""
    x = rgb[..., :3].astype(np.float64) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return summed_area(np.stack([(r + g + b) / 3, r - b, g - (r + b) / 2]))


def colour_cues(sat: np.ndarray, box: Sequence[int], grid: int) -> np.ndarray:
    """The crop's colour, and how the strips one grid step outside and inside each edge differ from it.

    sat is colour_sat of the photo, box (left, top, right, bottom) in whole cells, grid the number of
    steps per side (a strip is a grid step deep). Why: saliency cues say what an edge cuts through,
    not what colour lies beyond it, and a taste in colour (warm tones, no bright edges) read from a
    small thumbnail did not carry to new photos. Order: crop (brightness, warmth, green-magenta),
    then outside left, top, right, bottom, then inside left, top, right, bottom, each as three
    differences mapped to [0, 1] by 0.5 + d / 2 (0.5: the same as the crop, or no strip at the photo's
    border).
    """
    l, t, r, b = box
    h, w = sat.shape[1] - 1, sat.shape[2] - 1
    kx, ky = max(1, round(w / grid)), max(1, round(h / grid))

    def mean(x0: int, y0: int, x1: int, y1: int) -> np.ndarray | None:
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            return None
        return box_sums(sat, x0, y0, x1, y1) / ((x1 - x0) * (y1 - y0))

    crop = mean(l, t, r, b)
    strips = [(l - kx, t, l, b), (l, t - ky, r, t), (r, t, r + kx, b), (l, b, r, b + ky),
              (l, t, l + kx, b), (l, t, r, t + ky), (r - kx, t, r, b), (l, b - ky, r, b)]
    diffs = []
    for s in strips:
        m = mean(*s)
        diffs.append(np.zeros(3) if m is None else m - crop)
    own = np.array([crop[0], 0.5 + crop[1] / 2, 0.5 + crop[2] / 2])
    return np.concatenate([own, 0.5 + np.concatenate(diffs) / 2])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes; 0 for disjoint boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def same_box(a: Sequence[float], b: Sequence[float]) -> bool:
    """np.allclose(a, b) with its default tolerances, in plain Python: boxes have four numbers, and the
    env asks this of every move at every step, where numpy's per-call overhead is the whole cost."""
    return all(abs(x - y) <= 1e-8 + 1e-5 * abs(y) for x, y in zip(a, b, strict=True))
