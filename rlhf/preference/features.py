"""Features of a crop for the human reward model: frozen-backbone embedding, geometry, colour and
framing cues from two saliency maps of the whole photo (see docs/design.md, "The reward model")."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf.boxstats import box_sums, framing_cues, moment_sat, spectral_residual
from rlhf.cache import LRUCache
from rlhf.images import Box, Photo, clip_box, resize

GEOMETRY_FEATURES = ("cx", "cy", "w", "h", "area", "log_aspect")
COLOUR_FEATURES = ("mean_r", "mean_g", "mean_b", "warmth", "luminance", "contrast", "saturation")
# Shares of the subject below which the "..._below_NN" hinge cues start (see SALIENCY_CUES).
SHARE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Framing cues, computed from each of two saliency maps of the whole photo (prefix "net_": the
# backbone's activation energy, a semantic subject; "sr_": OpenCV spectral residual, low-level
# salience, the same cue the crop policy sees in rlhf.env):
SALIENCY_CUES = (
    "kept",           # share of the photo's salient mass inside the crop
    "density",        # salient mass per area of the crop, relative to the photo's
    "cx", "cy",       # salient centroid inside the crop (0 = left/top edge, 1 = right/bottom)
    "dx_left_third", "dx_right_third", "dy_top_third", "dy_bottom_third",  # |centroid - thirds line|
    "edge_cut",       # highest salient density along the crop's four edges: the edge cuts the subject
    "subj_inside",    # share of the main salient region's bounding box inside the crop
    "subj_x", "subj_y",  # that region's centroid relative to the crop (may lie outside 0..1)
    "subj_dx_left_third", "subj_dx_right_third",
) + tuple(f"{c}_below_{round(100 * q)}" for c in ("kept", "subj_inside") for q in SHARE_LEVELS)
# The last ten cues are hinges, max(0, level - share), of "kept" and "subj_inside": how far the
# crop falls short of holding that share of the subject. Framing tastes have tolerances ("cutting
# a sliver of the subject is fine, cutting a limb is not"), which are bends in the utility that a
# linear head cannot draw from the share itself; the L1 penalty picks the bends a taste has.
SALIENCY_MAPS = ("net", "sr")
SALIENCY_FEATURES = tuple(f"{m}_{c}" for m in SALIENCY_MAPS for c in SALIENCY_CUES)
HAND_FEATURES = GEOMETRY_FEATURES + COLOUR_FEATURES + SALIENCY_FEATURES
# Long side of the grid the photo's saliency map is resampled to; 1/128 of the photo is finer
# than any box a policy or a person distinguishes.
SALIENCY_GRID = 128
# The subject: the connected region above this fraction of the map's peak holding the most mass.
# On hand-marked subjects of the bundled training photos (backbone map) 0.5 places them best;
# 0.3 spills into the background, 0.7 shrinks to one part of the subject.
SUBJECT_THRESHOLD = 0.5


def _backbone(name: str, weights: str | None) -> nn.Module:
    from rlhf.backbone import load_backbone

    return load_backbone(name, weights=weights)


def _embed(model: nn.Module, crops: np.ndarray, size: int) -> np.ndarray:
    from rlhf.backbone import embed

    return embed(model, crops, size)


def _feature_map(model: nn.Module, image: np.ndarray, size: int) -> np.ndarray:
    """(h, w) activation energy of the backbone's last feature map over one image."""
    from rlhf.backbone import input_stats, preprocess

    param = next(model.parameters())
    x = preprocess(image[None], size, *input_stats(model)).to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        fmap = model.forward_features(x)[0]
    return fmap.float().norm(dim=0).cpu().numpy()


def mirror_box(box: Box, width: int) -> Box:
    """The same box in the horizontally mirrored photo."""
    l, t, r, b = box
    return (width - r, t, width - l, b)


class CropFeaturizer:
    """Features of crops: frozen backbone embedding + geometry + colour + saliency, cached.

    Each crop is embedded once: embeddings and features are cached in memory keyed by (photo id,
    box, mirrored), and the photo's saliency map by (photo id, mirrored); `save_cache` /
    `load_cache` keep the embeddings on disk (e.g. under a run folder). The photo id is trusted to
    name the pixels (it is the absolute path), as everywhere in this project.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", backbone_weights: str | None = None,
                 input_size: int = 160, device: str = "cpu", batch_size: int = 32,
                 max_cached_crops: int = 50_000, max_cached_photos: int = 256):
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.input_size = int(input_size)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = _backbone(backbone, backbone_weights).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.embed_dim = int(getattr(self.model, "num_features", 0)) or int(
            _embed(self.model, np.zeros((1, 32, 32, 3), np.uint8), self.input_size).shape[1])
        self.feature_names = tuple(f"emb{i}" for i in range(self.embed_dim)) + HAND_FEATURES
        # Bounds for long-lived users (the RL scoring actor): about 5 KB per crop, 0.5 MB per photo.
        self._cache: LRUCache[tuple[str, Box, bool], np.ndarray] = LRUCache(max_cached_crops)
        self._emb: LRUCache[tuple[str, Box, bool], np.ndarray] = LRUCache(max_cached_crops)
        self._maps: LRUCache[tuple[str, bool, str], Saliency] = LRUCache(2 * max_cached_photos)
        self.max_cached_photos = max_cached_photos
        self.crops_embedded = 0
        self.seconds_embedding = 0.0

    @property
    def max_cached_crops(self) -> int:
        """Most crops whose embedding and features are kept (least recently used forgotten first)."""
        return self._emb.size

    @max_cached_crops.setter
    def max_cached_crops(self, n: int) -> None:
        self._emb.resize(n)
        self._cache.resize(n)

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def to(self, device: str | torch.device) -> CropFeaturizer:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def clear_caches(self) -> None:
        """Forget every cached embedding, feature and saliency map."""
        self._cache.clear()
        self._emb.clear()
        self._maps.clear()

    def features(self, photo: Photo, boxes: Sequence[Sequence[float]], mirrored: bool = False) -> np.ndarray:
        """(N, dim) float32 raw (unstandardised) features of the boxes in the photo."""
        w, h = photo.width, photo.height
        keys = [(photo.id, clip_box(b, w, h), bool(mirrored)) for b in boxes]
        # Held here as well: one call may ask for more crops than the cache keeps.
        got = {k: v for k in dict.fromkeys(keys) if (v := self._cache.get(k)) is not None}
        missing = [k for k in dict.fromkeys(keys) if k not in got]
        for i in range(0, len(missing), self.batch_size):
            got.update(self._compute(photo, missing[i:i + self.batch_size], mirrored))
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([got[k] for k in keys])

    def _compute(self, photo: Photo, keys: list[tuple[str, Box, bool]],
                 mirrored: bool) -> dict[tuple[str, Box, bool], np.ndarray]:
        w, h = photo.width, photo.height
        pixels = photo.pixels[:, ::-1] if mirrored else photo.pixels
        boxes = [mirror_box(k[1], w) if mirrored else k[1] for k in keys]
        crops = np.stack([resize(pixels[t:b, l:r], self.input_size) for (l, t, r, b) in boxes])
        embs = {k: e for k in keys if (e := self._emb.get(k)) is not None}
        todo = [i for i, k in enumerate(keys) if k not in embs]
        if todo:
            t0 = time.perf_counter()
            emb = _embed(self.model, crops[todo], self.input_size).astype(np.float32)
            self.seconds_embedding += time.perf_counter() - t0
            self.crops_embedded += len(todo)
            for i, e in zip(todo, emb, strict=True):
                embs[keys[i]] = e
                self._emb.put(keys[i], e)
        maps = [self._saliency(photo, mirrored, kind) for kind in SALIENCY_MAPS]
        out = {}
        for k, box, crop in zip(keys, boxes, crops, strict=True):
            hand = [geometry_features(box, w, h), colour_features(crop)] + [m.features(box) for m in maps]
            out[k] = np.concatenate([embs[k], *hand]).astype(np.float32)
            self._cache.put(k, out[k])
        return out

    def _saliency(self, photo: Photo, mirrored: bool, kind: str) -> Saliency:
        """A saliency map of the whole photo: "net" (backbone activation energy) or "sr"."""
        key = (photo.id, bool(mirrored), kind)
        sal = self._maps.get(key)
        if sal is None:
            other = self._maps.get((photo.id, not mirrored, kind))
            if other is not None:
                grid = other.grid[:, ::-1]
            else:
                if kind == "net":
                    # Twice the crop size: the whole photo needs more cells than one crop does.
                    raw = _feature_map(self.model, photo.pixels, 2 * self.input_size)
                else:
                    raw = _sr_map(photo.pixels)
                grid = Saliency.grid_from_map(raw, photo.width, photo.height)
                grid = grid[:, ::-1] if mirrored else grid
            sal = Saliency(np.ascontiguousarray(grid), photo.width, photo.height)
            self._maps.put(key, sal)
        return sal

    def cache_state(self) -> dict[str, Any]:
        """The expensive part of the cache (embeddings, saliency grids) as plain data.

        The cheap hand-made features are recomputed from it, so a saved cache stays valid when
        they change."""
        return {"backbone": self.backbone_name, "backbone_weights": self.backbone_weights,
                "input_size": self.input_size, "embeddings": dict(self._emb.items()),
                "grids": {k: (m.grid, m.width, m.height) for k, m in self._maps.items()}}

    def load_cache_state(self, state: dict[str, Any]) -> int:
        """Adopt a saved cache made by the same backbone, weights and size; returns crops adopted."""
        same = (state.get("backbone"), state.get("backbone_weights"), state.get("input_size")) == (
            self.backbone_name, self.backbone_weights, self.input_size)
        if not same:
            return 0
        for k, e in state["embeddings"].items():
            self._emb.put(k, e)
        for k, (grid, w, h) in state["grids"].items():
            if len(k) == 3 and k not in self._maps:  # (photo id, mirrored, kind)
                self._maps.put(k, Saliency(grid, w, h))
        return len(state["embeddings"])

    def save_cache(self, path: str | Path) -> Path:
        torch.save(self.cache_state(), path)
        return Path(path)

    def load_cache(self, path: str | Path) -> int:
        """Adopt a cache file if it exists and matches (0 otherwise)."""
        p = Path(path)
        if not p.is_file():
            return 0
        return self.load_cache_state(torch.load(p, map_location="cpu", weights_only=False))


def geometry_features(box: Box, width: int, height: int) -> np.ndarray:
    """Centre, size, area and log aspect ratio of a box, relative to the photo."""
    l, t, r, b = box
    bw, bh = (r - l) / width, (b - t) / height
    return np.array([(l + r) / 2 / width, (t + b) / 2 / height, bw, bh, bw * bh,
                     math.log((r - l) / (b - t))], np.float32)


def colour_features(crop: np.ndarray) -> np.ndarray:
    """Mean RGB, warmth (R - B), luminance, its spread (contrast) and mean saturation, in [0, 1]."""
    x = crop.reshape(-1, 3).astype(np.float32) / 255.0
    mean = x.mean(0)
    lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
    mx, mn = x.max(1), x.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return np.array([mean[0], mean[1], mean[2], mean[0] - mean[2], lum.mean(), lum.std(), sat.mean()],
                    np.float32)


def _sr_map(pixels: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (boxstats.spectral_residual) of a photo at <= 256 px, blurred."""
    scale = min(1.0, 256 / max(pixels.shape[:2]))
    small = resize(pixels, (max(8, round(pixels.shape[1] * scale)), max(8, round(pixels.shape[0] * scale))))
    m = spectral_residual(small, blur_sigma=2.0)
    return np.ones(small.shape[:2], np.float32) if m is None else m


class Saliency:
    """A photo's saliency map on a grid of long side SALIENCY_GRID (summing to 1), its main
    salient region, and the framing cues of a box read off it in O(1) by integral images."""

    def __init__(self, grid: np.ndarray, width: int, height: int):
        self.grid = grid
        self.width, self.height = width, height
        gh, gw = grid.shape
        self._sx, self._sy = gw / width, gh / height
        self._ii = moment_sat(grid)
        self.subject_point, self.subject_box = self._subject()

    @staticmethod
    def grid_from_map(raw: np.ndarray, width: int, height: int) -> np.ndarray:
        """Resample to the grid; keep only what rises above the map's median, so the mass sits
        on the subject rather than on the floor of texture every photo has everywhere."""
        import cv2

        scale = SALIENCY_GRID / max(width, height)
        gw, gh = max(1, round(width * scale)), max(1, round(height * scale))
        grid = cv2.resize(raw.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA
                          if raw.shape[1] > gw else cv2.INTER_LINEAR)
        grid = np.clip(grid - np.median(grid), 0, None)
        if grid.sum() <= 0:  # a flat photo: every cell equally (un)interesting
            grid = np.ones_like(grid)
        return (grid / grid.sum()).astype(np.float32)

    def _subject(self) -> tuple[tuple[float, float], tuple[float, float, float, float]]:
        """(mass centroid, bounding box) in photo pixels of the main salient region: the connected
        region above SUBJECT_THRESHOLD of the peak that holds the most mass."""
        import cv2

        g = self.grid
        mask = (g >= SUBJECT_THRESHOLD * g.max()).astype(np.uint8)
        n, labels = cv2.connectedComponents(mask)
        masses = np.bincount(labels.ravel(), weights=g.ravel().astype(np.float64), minlength=n)
        masses[0] = 0.0  # label 0 is everything below the threshold
        ys, xs = np.nonzero(labels == int(np.argmax(masses)))
        wts = g[ys, xs].astype(np.float64)
        cx = float(((xs + 0.5) * wts).sum() / wts.sum()) / self._sx
        cy = float(((ys + 0.5) * wts).sum() / wts.sum()) / self._sy
        box = (xs.min() / self._sx, ys.min() / self._sy, (xs.max() + 1) / self._sx, (ys.max() + 1) / self._sy)
        return (cx, cy), box

    def _cells(self, l: float, t: float, r: float, b: float) -> tuple[int, int, int, int]:
        gh, gw = self.grid.shape
        x0 = min(int(l * self._sx), gw - 1)
        y0 = min(int(t * self._sy), gh - 1)
        x1 = min(gw, max(x0 + 1, math.ceil(r * self._sx)))
        y1 = min(gh, max(y0 + 1, math.ceil(b * self._sy)))
        return x0, y0, x1, y1

    def features(self, box: Box) -> np.ndarray:
        """The SALIENCY_CUES of a box (see there)."""
        l, t, r, b = box
        cells = self._cells(l, t, r, b)
        x0, y0, x1, y1 = cells
        mass, mx, my = box_sums(self._ii, *cells)
        n_cells = (x1 - x0) * (y1 - y0)
        density = mass * self.grid.size / n_cells
        if mass > 1e-9:
            cx = min(max((mx / mass / self._sx - l) / (r - l), 0.0), 1.0)
            cy = min(max((my / mass / self._sy - t) / (b - t), 0.0), 1.0)
        else:
            cx = cy = 0.5
        # The densest edge strip, with the env's strip depth: how hard an edge cuts through the subject.
        edges = framing_cues(self._ii, *cells).edges
        sl, st, sr, sb = self.subject_box
        iw = max(0.0, min(sr, r) - max(sl, l))
        ih = max(0.0, min(sb, b) - max(st, t))
        inside = iw * ih / max((sr - sl) * (sb - st), 1e-9)
        px, py = self.subject_point
        # Outside the crop the position still says how far off it is; beyond a crop-width it no longer matters.
        sx = min(max((px - l) / (r - l), -1.0), 2.0)
        sy = min(max((py - t) / (b - t), -1.0), 2.0)
        return np.array([mass, density, cx, cy, abs(cx - 1 / 3), abs(cx - 2 / 3), abs(cy - 1 / 3),
                         abs(cy - 2 / 3), float(edges.max()), inside, sx, sy, abs(sx - 1 / 3), abs(sx - 2 / 3),
                         *(max(0.0, q - share) for share in (mass, inside) for q in SHARE_LEVELS)],
                        np.float32)

