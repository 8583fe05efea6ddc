"""Features of a crop for the human reward model: an embedding RoI-pooled from the photo's feature map,
geometry, colour statistics, and framing cues from two saliency maps of the whole photo.

Everything is read off the photo's context (rlhf.context): the feature map, summed-area tables of the
working pixels and the saliency maps are computed once per photo and kept with the context, so a crop
costs look-ups and one `roi_align`, not a backbone pass or a resize of full-resolution pixels (see
docs/design.md, "The reward model").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf.boxstats import box_sums, framing_cues, moment_sat, spectral_residual
from rlhf.cache import LRUCache
from rlhf.context import PhotoContext, context_of
from rlhf.feature_map import FEATURE_DIM, FEATURE_LONG_SIDE
from rlhf.images import Box, Photo, clip_box, resize

# How a crop's embedding is made: roi_align (one bin) on the photo's feature map at FEATURE_LONG_SIDE.
# Cache and model files record it: an embedding made another way is another feature.
POOLING = f"roi{FEATURE_LONG_SIDE}"

GEOMETRY_FEATURES = ("cx", "cy", "w", "h", "area", "log_aspect")
# The crop's colour on the axes a photo editor's basic panel adjusts: exposure (luminance), white
# balance's temperature (warmth, amber - blue: R - B) and tint (green - magenta: G - (R + B) / 2),
# contrast and saturation. Mean luminance, warmth and tint are three independent axes of the mean
# colour; mean R, G and B beside them would repeat the same three dimensions, and L1 would pick
# among equivalent features by chance.
COLOUR_FEATURES = ("luminance", "warmth", "tint", "contrast", "saturation")
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
# Luminance of RGB in [0, 1] (ITU-R BT.601 weights, as colour_features).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Crops whose features a featurizer keeps in memory (about 10 KB each): a crop costs a fraction of a
# millisecond to featurize from its photo's context, so the cache need only hold a policy's neighbourhood.
MAX_CACHED_CROPS = 4096


def _backbone(name: str, weights: str | None) -> nn.Module:
    from rlhf.backbone import load_backbone

    return load_backbone(name, weights=weights)


def mirror_box(box: Box, width: int) -> Box:
    """The same box in the horizontally mirrored photo."""
    l, t, r, b = box
    return (width - r, t, width - l, b)


def roi_embeddings(fmap: np.ndarray, boxes: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """(N, C) mean feature of each box (photo pixels of a `width` x `height` photo) on the photo's map (C, h, w).

    `torchvision.ops.roi_align` with one output bin, adaptive sampling and pixel-centre alignment, as
    Fast R-CNN pools a region's features. The map spans the whole photo, so a box is scaled to map
    cells per axis (w / width, h / height).
    """
    from torchvision.ops import roi_align

    _, h, w = fmap.shape
    sx, sy = w / width, h / height
    rois = torch.tensor([[0.0, l * sx, t * sy, r * sx, b * sy] for l, t, r, b in boxes], dtype=torch.float32)
    with torch.inference_mode():
        out = roi_align(torch.from_numpy(fmap)[None], rois, output_size=1, spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
    return out[:, :, 0, 0].numpy()


class CropFeaturizer:
    """Features of crops, from each photo's context: RoI-pooled embedding + geometry + colour + saliency.

    backbone, backbone_weights: the frozen network whose last feature map the embedding is pooled
    from. The default, the shipped EfficientNet-Lite0, is the map every photo context holds; another
    network is run once per photo on the context's working pixels, at the same long side, and its map
    kept with the context. device: where that network and the reward head run (default cpu).
    max_cached_crops: most crops whose features are kept in memory (least recently used forgotten
    first); the per-photo maps and tables live with the photo's context. The photo id is trusted to
    name the pixels (it is the absolute path), as everywhere in this project.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", backbone_weights: str | None = None,
                 device: str = "cpu", max_cached_crops: int = MAX_CACHED_CROPS):
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.pooling = POOLING
        self.device = torch.device(device)
        from rlhf.backbone import DEFAULT_BACKBONE

        shipped = backbone == DEFAULT_BACKBONE and backbone_weights is None
        self.model: nn.Module | None = None
        if not shipped:
            self.model = _backbone(backbone, backbone_weights).to(self.device).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.embed_dim = FEATURE_DIM if self.model is None else int(self.model.num_features)
        self.feature_names = tuple(f"emb{i}" for i in range(self.embed_dim)) + HAND_FEATURES
        self._cache: LRUCache[tuple[str, Box, bool], np.ndarray] = LRUCache(max_cached_crops)
        self._emb: LRUCache[tuple[str, Box, bool], np.ndarray] = LRUCache(max_cached_crops)
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
        if self.model is not None:
            self.model.to(self.device)
        return self

    def clear_caches(self) -> None:
        """Forget every cached embedding and feature (the photos' maps go with their contexts)."""
        self._cache.clear()
        self._emb.clear()

    def features(self, photo: Photo, boxes: Sequence[Sequence[float]], mirrored: bool = False) -> np.ndarray:
        """(N, dim) float32 raw (unstandardised) features of the boxes in the photo; with `mirrored`, of
        each crop's mirror image as it lies in the mirrored photo (training augmentation)."""
        w, h = photo.width, photo.height
        keys = [(photo.id, clip_box(b, w, h), bool(mirrored)) for b in boxes]
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        # Held here as well: one call may ask for more crops than the cache keeps.
        got = {k: v for k in dict.fromkeys(keys) if (v := self._cache.get(k)) is not None}
        missing = [k for k in dict.fromkeys(keys) if k not in got]
        if missing:
            got.update(self._compute(context_of(photo), missing, mirrored))
        return np.stack([got[k] for k in keys])

    def _compute(self, ctx: PhotoContext, keys: list[tuple[str, Box, bool]],
                 mirrored: bool) -> dict[tuple[str, Box, bool], np.ndarray]:
        w, h = ctx.width, ctx.height
        # Boxes in the pixels of the photo as seen (mirrored or not), and as cut from the stored one.
        seen = [mirror_box(k[1], w) if mirrored else k[1] for k in keys]
        embs = {k: e for k in keys if (e := self._emb.get(k)) is not None}
        todo = [i for i, k in enumerate(keys) if k not in embs]
        if todo:
            t0 = time.perf_counter()
            emb = roi_embeddings(self._map(ctx, mirrored), [seen[i] for i in todo], w, h)
            self.seconds_embedding += time.perf_counter() - t0
            self.crops_embedded += len(todo)
            for i, e in zip(todo, emb, strict=True):
                embs[keys[i]] = e
                self._emb.put(keys[i], e)
        # A mirror image has the same colours in the mirrored box: read them off the stored photo.
        colour = colour_box_features(ctx.derived("preference.colour_table", colour_table_of),
                                     [k[1] for k in keys], w, h)
        sal = [self._saliency(ctx, kind, mirrored).features(np.array(seen)) for kind in SALIENCY_MAPS]
        geo = geometry_features(np.array(seen), w, h)
        rows = np.concatenate([np.stack([embs[k] for k in keys]), geo, colour, *sal], axis=1).astype(np.float32)
        out = {}
        for k, row in zip(keys, rows, strict=True):
            out[k] = row
            self._cache.put(k, row)
        return out

    def _map(self, ctx: PhotoContext, mirrored: bool) -> np.ndarray:
        """The photo's (or its mirror image's) last feature map (C, h, w) under this backbone.

        A mirror image gets its own forward pass rather than the map flipped: TF "SAME" padding is
        not symmetric, so the flipped map is not what the network sees in a mirrored photo."""
        if self.model is None and not mirrored:
            return ctx.fmap
        from rlhf.feature_map import feature_map

        def build(c: PhotoContext) -> np.ndarray:
            return feature_map(np.ascontiguousarray(c.work[:, ::-1]) if mirrored else c.work, self.model)

        return ctx.derived(("preference.map", self.backbone_name, self.backbone_weights, mirrored), build)

    def _saliency(self, ctx: PhotoContext, kind: str, mirrored: bool) -> Saliency:
        """A saliency map of the whole photo: "net" (the channel norm of the backbone's feature map) or
        "sr" (spectral residual of the working pixels); a mirror image's is the grid flipped."""
        def build(c: PhotoContext) -> Saliency:
            if mirrored:
                grid = self._saliency(c, kind, False).grid[:, ::-1]
            else:
                raw = np.linalg.norm(self._map(c, False), axis=0) if kind == "net" else _sr_map(c.work)
                grid = Saliency.grid_from_map(raw, c.width, c.height)
            return Saliency(np.ascontiguousarray(grid), c.width, c.height)

        net = (self.backbone_name, self.backbone_weights) if kind == "net" else None
        return ctx.derived(("preference.saliency", kind, net, mirrored), build)

    def cache_state(self) -> dict[str, Any]:
        """The cached crop embeddings as plain data, with what made them (backbone, weights, pooling).

        The hand-made features are recomputed from the photo contexts, so a saved cache stays valid
        when they change."""
        return {"backbone": self.backbone_name, "backbone_weights": self.backbone_weights,
                "pooling": self.pooling, "embeddings": dict(self._emb.items())}

    def load_cache_state(self, state: dict[str, Any]) -> int:
        """Adopt a saved cache made by the same backbone, weights and pooling; returns crops adopted.

        A cache of another pooling (e.g. one backbone pass per crop, which recorded none) is ignored."""
        same = (state.get("backbone"), state.get("backbone_weights"), state.get("pooling")) == (
            self.backbone_name, self.backbone_weights, self.pooling)
        if not same:
            return 0
        for k, e in state["embeddings"].items():
            self._emb.put(k, e)
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


def geometry_features(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre, size, area and log aspect ratio of boxes (N, 4) relative to the photo: (N, 6); one box (4,)
    gives (6,)."""
    arr = np.asarray(boxes, dtype=np.float64)
    l, t, r, b = arr.reshape(-1, 4).T
    bw, bh = (r - l) / width, (b - t) / height
    out = np.stack([(l + r) / 2 / width, (t + b) / 2 / height, bw, bh, bw * bh, np.log((r - l) / (b - t))],
                   axis=1).astype(np.float32)
    return out[0] if arr.ndim == 1 else out


def colour_features(crop: np.ndarray) -> np.ndarray:
    """COLOUR_FEATURES of a crop's pixels (RGB in [0, 1]): mean luminance, warmth (R - B), tint
    (G - (R + B) / 2), the luminance's spread (contrast) and mean saturation (the definition
    colour_box_features reads off tables). Summed in float64: a float32 mean over a large crop drifts
    by about 1e-4."""
    x = crop.reshape(-1, 3).astype(np.float64) / 255.0
    mean = x.mean(0)
    lum = x @ LUMA.astype(np.float64)
    mx, mn = x.max(1), x.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return np.array([lum.mean(), mean[0] - mean[2], mean[1] - (mean[0] + mean[2]) / 2, lum.std(), sat.mean()],
                    np.float32)


def colour_table(pixels: np.ndarray) -> np.ndarray:
    """Summed-area table (h + 1, w + 1, 5), float64, of R, G, B, luminance squared and saturation of
    uint8 RGB pixels, in [0, 1]: colour_features of any box is then a few look-ups (luminance is the
    weighted mean of R, G and B; contrast is sqrt(mean of its square - its mean squared)). Float64
    throughout: the variance of a flat crop is a small difference of large sums."""
    import cv2

    h, w = pixels.shape[:2]
    x = np.empty((h, w, 5), np.float64)
    x[..., :3] = pixels
    x[..., :3] /= 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    # max(mx, 1e-6): a black pixel (mx = mn = 0) has saturation 0, as in colour_features.
    x[..., 4] = (mx - np.minimum(np.minimum(r, g), b)) / np.maximum(mx, 1e-6)
    wr, wg, wb = LUMA.astype(np.float64)
    lum = r * wr + g * wg + b * wb
    x[..., 3] = lum * lum
    return cv2.integral(x, sdepth=cv2.CV_64F)


def colour_table_of(ctx: PhotoContext) -> np.ndarray:
    """colour_table of the context's working pixels."""
    return colour_table(ctx.work)


def work_boxes(boxes: Sequence[Sequence[float]], width: int, height: int, work_w: int, work_h: int
               ) -> np.ndarray:
    """(N, 4) int: boxes in photo pixels scaled per axis to working pixels and rounded (clip_box)."""
    sx, sy = work_w / width, work_h / height
    return np.array([clip_box((l * sx, t * sy, r * sx, b * sy), work_w, work_h) for l, t, r, b in boxes],
                    np.int64).reshape(-1, 4)


def colour_box_features(table: np.ndarray, boxes: Sequence[Sequence[float]], width: int, height: int
                        ) -> np.ndarray:
    """(N, 5) colour_features of boxes (photo pixels of a `width` x `height` photo) read off a
    colour_table: equal to colour_features of each box cut from the table's pixels (work_boxes)."""
    wb = work_boxes(boxes, width, height, table.shape[1] - 1, table.shape[0] - 1)
    l, t, r, b = wb.T
    n = ((r - l) * (b - t)).astype(np.float64)[:, None]
    m = ((table[b, r] - table[t, r] - table[b, l] + table[t, l]) / n).T  # (5, N) box means
    lum = LUMA.astype(np.float64) @ m[:3]
    contrast = np.sqrt(np.maximum(m[3] - lum * lum, 0.0))
    return np.stack([lum, m[0] - m[2], m[1] - (m[0] + m[2]) / 2, contrast, m[4]], axis=1).astype(np.float32)


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

    def _cells(self, l: np.ndarray, t: np.ndarray, r: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
        gh, gw = self.grid.shape
        x0 = np.minimum(np.floor(l * self._sx).astype(np.int64), gw - 1)
        y0 = np.minimum(np.floor(t * self._sy).astype(np.int64), gh - 1)
        x1 = np.minimum(gw, np.maximum(x0 + 1, np.ceil(r * self._sx).astype(np.int64)))
        y1 = np.minimum(gh, np.maximum(y0 + 1, np.ceil(b * self._sy).astype(np.int64)))
        return x0, y0, x1, y1

    def features(self, boxes: np.ndarray) -> np.ndarray:
        """(N, len(SALIENCY_CUES)) cues of boxes (N, 4) in photo pixels (see SALIENCY_CUES), all at once."""
        l, t, r, b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).T
        cells = self._cells(l, t, r, b)
        x0, y0, x1, y1 = cells
        mass, mx, my = box_sums(self._ii, *cells)
        density = mass * self.grid.size / ((x1 - x0) * (y1 - y0))
        has = mass > 1e-9
        safe = np.where(has, mass, 1.0)
        cx = np.where(has, np.clip((mx / safe / self._sx - l) / (r - l), 0.0, 1.0), 0.5)
        cy = np.where(has, np.clip((my / safe / self._sy - t) / (b - t), 0.0, 1.0), 0.5)
        # The densest edge strip, with the env's strip depth: how hard an edge cuts through the subject.
        edges = framing_cues(self._ii, *cells).edges.max(axis=0)
        sl, st, sr, sb = self.subject_box
        iw = np.maximum(0.0, np.minimum(sr, r) - np.maximum(sl, l))
        ih = np.maximum(0.0, np.minimum(sb, b) - np.maximum(st, t))
        inside = iw * ih / max((sr - sl) * (sb - st), 1e-9)
        px, py = self.subject_point
        # Outside the crop the position still says how far off it is; beyond a crop-width it no longer matters.
        sx = np.clip((px - l) / (r - l), -1.0, 2.0)
        sy = np.clip((py - t) / (b - t), -1.0, 2.0)
        cols = [mass, density, cx, cy, abs(cx - 1 / 3), abs(cx - 2 / 3), abs(cy - 1 / 3), abs(cy - 2 / 3),
                edges, inside, sx, sy, abs(sx - 1 / 3), abs(sx - 2 / 3),
                *(np.maximum(0.0, q - share) for share in (mass, inside) for q in SHARE_LEVELS)]
        return np.stack(cols, axis=1).astype(np.float32)

