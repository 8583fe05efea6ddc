"""BRISQUE no-reference quality (Mittal, Moorthy & Bovik 2012), as OpenCV's quality module computes it.

Two forms, both with the LIVE model vendored in rlhf/data/brisque (OpenCV's SVR and feature ranges):

* `brisque_score(rgb)`: OpenCV's `cv2.quality.QualityBRISQUE` on one image (0-100, lower is better).
* `BrisqueRegions(rgb)`: BRISQUE of many boxes of one photo at the cost of one. BRISQUE's 36 features
  are, per scale (the image and its half-size copy) and per map (the MSCN coefficients and their four
  neighbour products), an asymmetric generalised Gaussian fit from five region statistics: the sums of
  squares of the positive and of the negative values, the sum of absolute values and the counts of
  positive and negative values. Those are box sums, so summed-area tables of the whole photo give every
  box's features without touching its pixels; the fit (OpenCV's 0.001-step search for the shape) and the
  SVR then run per box. The result matches OpenCV run on the crop up to the crop's outermost three pixels
  (OpenCV pads a crop's border by replication; here the photo's real neighbours are used); the tests
  compare the two.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

BRISQUE_DIR = Path(__file__).resolve().parent / "data" / "brisque"
MODEL_FILE = BRISQUE_DIR / "brisque_model_live.yml"
RANGE_FILE = BRISQUE_DIR / "brisque_range_live.yml"
# Neighbour offsets (dy, dx) of the paired products: horizontal, vertical, two diagonals (OpenCV order).
SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))
N_FEATURES = 36


@lru_cache(maxsize=1)
def _model() -> tuple[cv2.ml.SVM, np.ndarray]:
    for f in (MODEL_FILE, RANGE_FILE):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: BRISQUE model file missing (it ships in rlhf/data/brisque)")
    svm = cv2.ml.SVM_load(str(MODEL_FILE))
    # OpenCV 5's FileStorage cannot read this old-style YAML matrix; the data list is plain numbers.
    text = RANGE_FILE.read_text()
    m = re.search(r"data:\s*\[(.*?)\]", text, re.S)
    if m is None:
        raise ValueError(f"{RANGE_FILE}: no 'data: [...]' matrix found")
    rng = np.array(m.group(1).replace(",", " ").split(), dtype=np.float32)
    if rng.size != 2 * N_FEATURES:
        raise ValueError(f"{RANGE_FILE}: expected {2 * N_FEATURES} numbers, found {rng.size}")
    return svm, rng.reshape(2, N_FEATURES)


@lru_cache(maxsize=1)
def _opencv() -> cv2.quality.QualityBRISQUE:
    return cv2.quality.QualityBRISQUE_create(str(MODEL_FILE), str(RANGE_FILE))


@lru_cache(maxsize=1)
def _shape_table() -> tuple[np.ndarray, ...]:
    """OpenCV's search grid for the AGGD shape (gamma from 0.2 in steps of 0.001, accumulated in
    double as its loop does), the moment ratio r(gamma) = G(2/g)^2 / (G(1/g) G(3/g)) on it, and
    G(1/g), G(2/g), G(3/g) (the fitted shape is always a grid point, so these are lookups)."""
    grid = []
    g = 0.2
    while g < 10:
        grid.append(g)
        g += 0.001
    gam = np.array(grid)
    g1, g2, g3 = (np.array([math.gamma(k / x) for x in gam]) for k in (1, 2, 3))
    return gam, g2 ** 2 / (g1 * g3), g1, g2, g3


def brisque_score(rgb: np.ndarray) -> float:
    """OpenCV's BRISQUE of an RGB uint8 image (0-100, lower is better)."""
    return float(_opencv().compute(np.ascontiguousarray(rgb[..., ::-1]))[0])


def _grey01(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY)
    return grey.astype(np.float32) / np.float32(255.0)


def _mscn(im: np.ndarray) -> np.ndarray:
    mu = cv2.GaussianBlur(im, (7, 7), 7.0 / 6.0, borderType=cv2.BORDER_REPLICATE)
    sq = cv2.GaussianBlur(im * im, (7, 7), 7.0 / 6.0, borderType=cv2.BORDER_REPLICATE)
    sigma = np.sqrt(np.maximum(sq - mu * mu, 0.0)) + np.float32(1.0 / 255.0)
    return (im - mu) / sigma


def _products(st: np.ndarray) -> list[np.ndarray]:
    """MSCN times its neighbour at each of SHIFTS, zero where the neighbour falls outside (as OpenCV)."""
    h, w = st.shape
    out = []
    for dy, dx in SHIFTS:
        nb = np.zeros_like(st)
        y0, y1 = max(0, -dy), h - max(0, dy)
        nb[y0:y1, 0:w - dx] = st[y0 + dy:y1 + dy, dx:w]
        out.append(st * nb)
    return out


def _stat_maps(x: np.ndarray) -> list[np.ndarray]:
    pos = np.maximum(x, 0)
    neg = np.minimum(x, 0)
    return [pos * pos, neg * neg, np.abs(x), (x > 0).astype(np.float32), (x < 0).astype(np.float32)]


def _features_from_stats(stats: np.ndarray, area: np.ndarray) -> np.ndarray:
    """stats (n, 2 scales, 5 maps, 5 sums), area (n, 2) → BRISQUE features (n, 36); NaN when undefined."""
    gam_grid, r_grid, g1_grid, g2_grid, g3_grid = _shape_table()
    possq, negsq, abssum, npos, nneg = (stats[..., i] for i in range(5))
    with np.errstate(divide="ignore", invalid="ignore"):
        lsig = np.sqrt(negsq / nneg)
        rsig = np.sqrt(possq / npos)
        ghat = lsig / rsig
        n = area[..., None]
        rhat = (abssum / n) ** 2 / ((negsq + possq) / n)
        rnorm = rhat * (ghat ** 3 + 1) * (ghat + 1) / (ghat ** 2 + 1) ** 2
    # r(gamma) increases with gamma, so OpenCV's scan stops at the grid point nearest to rnorm.
    flat = np.nan_to_num(rnorm.ravel(), nan=0.0)
    idx = np.clip(np.searchsorted(r_grid, flat), 1, len(r_grid) - 1)
    take_left = np.abs(r_grid[idx - 1] - flat) <= np.abs(r_grid[idx] - flat)
    k = np.where(take_left, idx - 1, idx).reshape(rnorm.shape)
    gamma = np.where(np.isfinite(rnorm), gam_grid[k], np.nan)
    g1, g2, g3 = g1_grid[k], g2_grid[k], g3_grid[k]
    mean = (rsig - lsig) * (g2 / g1) * np.sqrt(g1) / np.sqrt(g3)
    feats = []
    for s in range(2):
        feats += [gamma[:, s, 0], (lsig[:, s, 0] ** 2 + rsig[:, s, 0] ** 2) / 2]
        for k in range(1, 5):
            feats += [gamma[:, s, k], mean[:, s, k], lsig[:, s, k] ** 2, rsig[:, s, k] ** 2]
    return np.stack(feats, axis=1)


def score_features(feats: np.ndarray) -> np.ndarray:
    """The LIVE SVR on BRISQUE features (n, 36) → scores (n,) clamped to [0, 100]; NaN rows stay NaN."""
    svm, rng = _model()
    feats = np.atleast_2d(np.asarray(feats, dtype=np.float64))
    bad = ~np.isfinite(feats).all(axis=1)
    x = (-1.0 + 2.0 * (feats - rng[0]) / (rng[1] - rng[0])).astype(np.float32)
    x[bad] = 0.0
    out = np.clip(svm.predict(np.ascontiguousarray(x))[1][:, 0].astype(np.float64), 0.0, 100.0)
    out[bad] = np.nan
    return out


def brisque_features(rgb: np.ndarray) -> np.ndarray:
    """BRISQUE's 36 features of a whole RGB image, computed here (equal to OpenCV's computeFeatures)."""
    return BrisqueRegions(rgb).features(np.array([[0, 0, rgb.shape[1], rgb.shape[0]]], dtype=float))[0]


class BrisqueRegions:
    """Summed-area tables of BRISQUE's region statistics for one image; `scores(boxes)` per box.

    Memory: 25 float32 tables the size of the image and 25 of its half-size copy (12 MB for 384×256).
    """

    def __init__(self, rgb: np.ndarray):
        grey = _grey01(rgb)
        self.height, self.width = grey.shape
        self.tables: list[np.ndarray] = []
        for s in range(2):
            im = grey if s == 0 else cv2.resize(grey, (grey.shape[1] // 2, grey.shape[0] // 2),
                                                interpolation=cv2.INTER_CUBIC)
            st = _mscn(im)
            maps = [m for x in [st, *_products(st)] for m in _stat_maps(x)]
            # Summed in float32, straight into one array: counts stay exact (below 2^24 pixels) and a
            # box's sums of squares and magnitudes lose ~1e-6 of the photo's total, far below what the
            # AGGD fit resolves; float64 sums copied down to float32 took five times as long.
            tables = np.empty((len(maps), im.shape[0] + 1, im.shape[1] + 1), dtype=np.float32)
            for m, out in zip(maps, tables, strict=True):
                cv2.integral(m, sum=out, sdepth=cv2.CV_32F)
            self.tables.append(tables)

    def _stats(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(boxes)
        stats = np.zeros((n, 2, 5, 5))
        area = np.zeros((n, 2))
        for s, sat in enumerate(self.tables):
            h, w = sat.shape[1] - 1, sat.shape[2] - 1
            fx, fy = w / self.width, h / self.height
            x0 = np.clip(np.round(boxes[:, 0] * fx).astype(int), 0, w)
            y0 = np.clip(np.round(boxes[:, 1] * fy).astype(int), 0, h)
            x1 = np.clip(np.round(boxes[:, 2] * fx).astype(int), 0, w)
            y1 = np.clip(np.round(boxes[:, 3] * fy).astype(int), 0, h)
            sums = (sat[:, y1, x1].astype(np.float64) - sat[:, y0, x1] - sat[:, y1, x0] + sat[:, y0, x0])
            stats[:, s] = sums.T.reshape(n, 5, 5)
            area[:, s] = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
        # Float tables can leave tiny negative residues on empty regions.
        stats = np.maximum(stats, 0.0)
        stats[..., 3:] = np.round(stats[..., 3:])
        return stats, area

    def features(self, boxes: np.ndarray) -> np.ndarray:
        """BRISQUE features (n, 36) of boxes (n, 4) given as (l, t, r, b) in this image's pixels."""
        stats, area = self._stats(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        return _features_from_stats(stats, area)

    def scores(self, boxes: np.ndarray) -> np.ndarray:
        """BRISQUE (n,) of boxes in this image's pixels; NaN where undefined (no texture, < 8 px)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = score_features(self.features(boxes))
        small = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < 8
        out[small] = np.nan
        return out
