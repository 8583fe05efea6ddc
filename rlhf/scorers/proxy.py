"""The default scorer (``"default"``, alias ``"proxy"``): :class:`ProxyAestheticScorer`.

A PROXY, NOT NIMA. No learned aesthetic model ships offline, so it combines real signals that work with
no download into

    score = 1 + 9 * P * sum_i w_i * term_i        (every term in [0, 1]; the weights sum to 1)

========== ====== ====================================================================================
term       weight what it measures (range [0, 1], higher is better)
========== ====== ====================================================================================
content    0.30   does the crop hold the photo's subject: EfficientNet-Lite0 ImageNet class confidence,
                  the probability mass, on the crop, of the 5 classes the whole photo most likely shows.
                  The crop's class probabilities are the classifier applied to the photo's feature map
                  averaged over the box (RoI pooling; one network pass per photo at 320 px on the long
                  side). Coffee cup: 1.0 on the cup, 0.1 on the table. When the photo has frontal faces
                  (OpenCV LBP cascade, vendored), people are the subject instead (ImageNet has no person
                  class): the share of the heads' area inside the crop.
quality    0.15   technical quality ``1 - BRISQUE / 100`` (OpenCV's BRISQUE with the vendored LIVE model;
                  0-100, lower is better), measured on the photo shrunk to <= 384 px (never enlarged:
                  BRISQUE punishes upscaling), per box from summed-area tables (rlhf/brisque.py); 0 where
                  BRISQUE is undefined (a box without texture, or under 16 px).
kept       0.05   share of the photo's saliency inside the crop.
focus      0.20   ``clip(0.5 + kept - area, 0, 1)``, area = the crop's share of the photo: saliency kept
                  beyond what the crop's size alone keeps (0.5 = the whole photo, or any crop as dense as
                  the photo; up to 1 when the crop tightens on the salient part; below 0.5 for background).
border     0.10   not cutting through salient regions: ``clip(1.25 - 0.5 * rho, 0, 1)``, rho = the highest
                  saliency density (relative to the photo's mean) of thin strips just inside the crop's
                  edges; edges on the photo's own border cut nothing and are skipped.
thirds     0.10   rule of thirds: the crop's saliency centroid near a power point (an intersection of the
                  thirds lines), ``exp(-d^2 / 0.02)`` with d in crop widths/heights; a centred subject,
                  the other classic placement, earns 0.6 of that.
exposure   0.10   ``(1 - (2 * mean_luma - 1)^2) * (1 - min(1, 2 * clipped))``, luma in [0, 1], clipped =
                  share of pixels at <= 2 or >= 253 of 255.
========== ====== ====================================================================================

The saliency map averages, each scaled to mean 1, OpenCV's spectral-residual and fine-grained static
saliency (cv2.saliency, blurred), the class-activation map of the photo's top classes and, when there are
faces, a blob on each head; it is computed at 128 px on the long side.

``P``, the scorer's own check against degenerate crops, multiplies three factors in [0, 1]:
area ``min(1, area / 0.12) ** 1.5`` (tiny high-contrast patches score near 1), aspect
``clip((4 - r) / 1.5, 0, 1)`` once ``r = long side / short side > 2.5`` (slivers score 1), and pixels
``min(1, short side / 32 px)``.

Per photo, the scorer reads the photo context (rlhf.context: working pixels, the Lite0 feature map, heads)
and derives the class-logit table, top classes, saliency and BRISQUE/exposure tables once, kept with the
context (about 20 MB a photo, bounded by the context store's memory); a box then costs only table
look-ups, and its score is cached by (photo id, box).

``score(crops)`` has no photo, so it measures what a crop alone shows: content = the crop's own top-1
class probability (network on the crop at 160 px), quality = OpenCV BRISQUE on the crop (shrunk to
<= 384 px), exposure; the photo-only terms (kept, focus, border, thirds) count as 0.5, neutral, so both
methods share one scale; P = the aspect and pixel factors. It cannot see composition: prefer
``score_boxes`` wherever the photo is known.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import torch

from rlhf.backbone import DEFAULT_BACKBONE, BackboneWeightsError, input_stats, load_backbone, preprocess
from rlhf.boxstats import box_means, box_sums, framing_cues, moment_sat, spectral_residual, summed_area
from rlhf.brisque import BrisqueRegions, brisque_score
from rlhf.cache import LRUCache
from rlhf.context import PhotoContext, context_of
from rlhf.images import Photo, clip_box, fit_long_side, resize
from rlhf.scorers.registry import AestheticScorer, Crops, as_crop_list, register_scorer


@dataclass(frozen=True)
class ProxyWeights:
    """Weights of the proxy's terms (see the module docstring); normalised to sum to 1 when used."""

    content: float = 0.30
    quality: float = 0.15
    kept: float = 0.05
    focus: float = 0.20
    border: float = 0.10
    thirds: float = 0.10
    exposure: float = 0.10

    def normalised(self, names: Sequence[str]) -> dict[str, float]:
        vals = {n: float(getattr(self, n)) for n in names}
        if any(not np.isfinite(v) or v < 0 for v in vals.values()):
            raise ValueError(f"proxy term weights must be finite and >= 0, got {vals}")
        total = sum(vals.values())
        if total <= 0:
            raise ValueError(f"proxy term weights {names} sum to 0")
        return {n: v / total for n, v in vals.items()}



PHOTO_TERMS = tuple(f.name for f in fields(ProxyWeights))
NEUTRAL = 0.5  # value of a photo-only term when scoring a crop without its photo
# Depth of the border term's edge strips, a fraction of the crop's shorter side (at least half a cell):
# shallower than the framing cues' EDGE_STRIP, so the term reacts to what lies right at the cut.
BORDER_STRIP = 0.04


@dataclass
class _Tables:
    """Per-photo work shared by all of its boxes."""

    width: int
    height: int
    logit_sat: np.ndarray      # (classes, fh + 1, fw + 1): summed class logits of the feature map
    top_classes: np.ndarray    # the photo's top-k ImageNet classes
    sal_sat: np.ndarray        # (3, sh + 1, sw + 1): boxstats.moment_sat of the saliency map
    saliency: np.ndarray       # (sh, sw): the saliency map itself (subject_map)
    faces: np.ndarray          # (n, 4) heads (l, t, r, b) in photo pixels
    brisque: BrisqueRegions    # on the analysis copy of the photo
    expo_sat: np.ndarray       # (2, ah + 1, aw + 1): luma in [0, 1], clipped-pixel indicator
    analysis_scale: float      # analysis copy pixels per photo pixel (<= 1)


@register_scorer("default", "proxy")
class ProxyAestheticScorer(AestheticScorer):
    """A proxy aesthetic score, NOT NIMA: subject content + BRISQUE + saliency composition + exposure.

    The formula is in the module docstring. `score_boxes(photo, boxes)` uses every term; `score(crops)`
    only the crop-only ones. Works offline; nothing is downloaded.
    """

    name = "proxy (not NIMA): content + BRISQUE + saliency composition + exposure"
    input_size = 224

    def __init__(self, weights: str | None = None, device: str = "cpu", *,
                 term_weights: ProxyWeights | None = None, top_k: int = 5, crop_content_size: int = 160,
                 analysis_long_side: int = 384, saliency_long_side: int = 128,
                 min_area: float = 0.12, max_aspect: float = 2.5, min_side_px: int = 32,
                 detect_faces: bool = True, box_cache_size: int = 100_000,
                 torch_threads: int | None = None, backbone: str = DEFAULT_BACKBONE):
        if not 0 < min_area < 1:
            raise ValueError(f"min_area must be in (0, 1), got {min_area}")
        if not 1 <= max_aspect < 4:
            raise ValueError(f"max_aspect must be in [1, 4), got {max_aspect}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.device = torch.device(device)
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        # The context's feature map is the shipped Lite0's: another backbone or weights needs its own pass.
        self._own_map = backbone != DEFAULT_BACKBONE or weights is not None
        if self._own_map:
            self.model = load_backbone(backbone, weights=weights).to(self.device)
        else:  # the process's one frozen Lite0, which already makes the photo contexts' maps
            from rlhf.feature_map import frozen_lite0

            self.model = frozen_lite0().to(self.device)
        if not self.model.num_classes:
            raise BackboneWeightsError(f"{weights}: the proxy's content term needs a classifier head")
        self.mean, self.std = input_stats(self.model)
        self.term_weights = term_weights or ProxyWeights()
        self._w_photo = self.term_weights.normalised(PHOTO_TERMS)
        self.top_k = int(top_k)
        self.crop_content_size = int(crop_content_size)
        self.analysis_long_side = int(analysis_long_side)
        self.saliency_long_side = int(saliency_long_side)
        self.min_area = float(min_area)
        self.max_aspect = float(max_aspect)
        self.min_side_px = int(min_side_px)
        self.detect_faces = bool(detect_faces)
        self._key = ("proxy", backbone, weights, self.top_k, self.analysis_long_side, self.saliency_long_side,
                     self.detect_faces)
        self._boxes: LRUCache[Any, Any] = LRUCache(box_cache_size)
        self._cv_lock = threading.Lock()

    # -- per-photo context -------------------------------------------------------------------------
    def _normalised_input(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    def _logit_map(self, ctx: PhotoContext) -> np.ndarray:
        """Class logits at every cell of the photo's feature map (classes, fh, fw)."""
        from rlhf.feature_map import feature_map

        fmap = feature_map(ctx.work, self.model) if self._own_map else ctx.fmap
        with torch.inference_mode():
            f = torch.from_numpy(np.ascontiguousarray(fmap)).to(self.device).float()
            # The classifier at every cell, in float32 on the model's device (much faster than numpy's float64).
            head = self.model.get_classifier()
            z = torch.einsum("kc,chw->khw", head.weight.float(), f) + head.bias.float()[:, None, None]
        return z.cpu().numpy().astype(np.float64)

    def _saliency(self, pixels: np.ndarray, subject: np.ndarray, faces: np.ndarray, width: int) -> np.ndarray:
        """faces in photo pixels of a photo `width` wide; pixels at any resolution of it."""
        h, w = pixels.shape[:2]
        s = self.saliency_long_side / max(h, w)
        sw, sh = max(8, round(w * s)), max(8, round(h * s))
        small = resize(pixels, (sw, sh))
        sigma = max(1.0, 0.02 * max(sw, sh))
        sr = spectral_residual(small, blur_sigma=sigma)
        maps = [np.ones((sh, sw), np.float32) if sr is None else sr]
        ok, m = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(np.ascontiguousarray(small[..., ::-1]))
        m = np.asarray(m, dtype=np.float32) if ok else np.ones((sh, sw), np.float32)
        if m.shape != (sh, sw):
            m = cv2.resize(m, (sw, sh), interpolation=cv2.INTER_LINEAR)
        maps.append(cv2.GaussianBlur(m, (0, 0), sigmaX=sigma))
        maps.append(cv2.resize(subject.astype(np.float32), (sw, sh), interpolation=cv2.INTER_LINEAR))
        if len(faces):
            yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float64) + 0.5
            fm = np.zeros((sh, sw))
            for l, t, r, b in faces * (sw / width):
                sig = max(0.5, 0.5 * max(r - l, b - t))
                fm += np.exp(-((xx - (l + r) / 2) ** 2 + (yy - (t + b) / 2) ** 2) / (2 * sig ** 2))
            maps.append(fm)
        out = np.zeros((sh, sw), np.float64)
        for m in maps:
            m = np.maximum(np.asarray(m, dtype=np.float64), 0.0)
            mean = m.mean()
            out += m / mean if mean > 1e-12 else 1.0
        return out / len(maps)

    def _subject(self, ctx: PhotoContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Class-logit map, top classes, heads and the saliency map (see the module docstring)."""
        logits = self._logit_map(ctx)
        top = np.argsort(logits.mean((1, 2)))[::-1][: self.top_k]
        # Class-activation map of the top classes: where the photo's subject is.
        p = np.exp(logits - logits.max(0, keepdims=True))
        subject = p[top].sum(0) / p.sum(0)
        faces = ctx.heads if self.detect_faces else np.zeros((0, 4))
        return logits, top, faces, self._saliency(ctx.work, subject, faces, ctx.width)

    def subject_map(self, ctx: PhotoContext) -> np.ndarray:
        """The photo's saliency map as this scorer sees it (float, mean about 1, saliency_long_side px):
        spectral-residual and fine-grained saliency, the ImageNet class-activation map of the photo's
        top classes, and heads. CropEnv shows it to the policy: where the subject is."""
        return self._tables(ctx).saliency

    def _tables(self, ctx: PhotoContext) -> _Tables:
        return ctx.derived(self._key, self._build_tables)

    def _build_tables(self, ctx: PhotoContext) -> _Tables:
        logits, top, faces, sal = self._subject(ctx)
        small = fit_long_side(ctx.work, self.analysis_long_side)
        a = small.shape[1] / ctx.width
        luma = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        expo = np.stack([luma / 255.0, ((luma <= 2) | (luma >= 253)).astype(np.float64)])
        return _Tables(
            width=ctx.width, height=ctx.height, logit_sat=summed_area(logits), top_classes=top,
            sal_sat=moment_sat(sal), saliency=sal,
            faces=faces, brisque=BrisqueRegions(small), expo_sat=summed_area(expo), analysis_scale=a)

    def _context(self, photo: Photo) -> _Tables:
        return self._tables(context_of(photo))

    # -- terms ---------------------------------------------------------------------------------------
    def _terms(self, ctx: _Tables, boxes: np.ndarray) -> dict[str, np.ndarray]:
        """Every term (n,) for boxes (n, 4) in photo pixels."""
        l, t, r, b = boxes.T
        W, H = ctx.width, ctx.height
        area = (r - l) * (b - t) / (W * H)
        # content: the classifier on the feature map pooled over each box
        fh, fw = ctx.logit_sat.shape[-2] - 1, ctx.logit_sat.shape[-1] - 1
        fx0, fx1, fy0, fy1 = l / W * fw, r / W * fw, t / H * fh, b / H * fh
        cells = np.maximum((fx1 - fx0) * (fy1 - fy0), 1e-9)
        z = box_sums(ctx.logit_sat, fx0, fy0, fx1, fy1) / cells
        p = np.exp(z - z.max(0, keepdims=True))
        content = p[ctx.top_classes].sum(0) / p.sum(0)
        if len(ctx.faces):
            # People are the subject when present: the share of the heads' area inside the crop.
            fl, ft, fr, fb = (c[:, None] for c in ctx.faces.T)
            inter = (np.clip(np.minimum(fr, r) - np.maximum(fl, l), 0, None)
                     * np.clip(np.minimum(fb, b) - np.maximum(ft, t), 0, None))
            content = inter.sum(0) / ((fr - fl) * (fb - ft)).sum()
        # saliency: kept, focus, border, thirds
        sh, sw = ctx.sal_sat.shape[-2] - 1, ctx.sal_sat.shape[-1] - 1
        sx0, sx1, sy0, sy1 = l / W * sw, r / W * sw, t / H * sh, b / H * sh
        cues = framing_cues(ctx.sal_sat, sx0, sy0, sx1, sy1, strip=BORDER_STRIP, min_strip=0.5)
        inside = cues.mass
        kept = np.clip(cues.kept, 0.0, 1.0)
        focus = np.clip(0.5 + kept - area, 0.0, 1.0)
        # Edges on the photo's own border cut nothing.
        on_edge = np.stack([l <= 0.01 * W, t <= 0.01 * H, r >= 0.99 * W, b >= 0.99 * H])
        rho = np.where(on_edge, 0.0, cues.edges).max(0)
        border = np.clip(1.25 - 0.5 * rho, 0.0, 1.0)
        u, v = cues.cx, cues.cy
        d_thirds = np.min([np.hypot(u - pu, v - pv) for pu in (1 / 3, 2 / 3) for pv in (1 / 3, 2 / 3)], axis=0)
        d_centre = np.hypot(u - 0.5, v - 0.5)
        thirds = np.maximum(np.exp(-d_thirds ** 2 / 0.02), 0.6 * np.exp(-d_centre ** 2 / 0.02))
        thirds = np.where(inside > 1e-12, thirds, 0.0)
        # quality and exposure on the analysis copy
        ab = boxes * ctx.analysis_scale
        bq = ctx.brisque.scores(ab)
        short = np.minimum(ab[:, 2] - ab[:, 0], ab[:, 3] - ab[:, 1])
        quality = np.where(np.isfinite(bq) & (short >= 16), np.clip(1.0 - np.nan_to_num(bq) / 100.0, 0, 1), 0.0)
        luma, clipped = box_means(ctx.expo_sat, *ab.T)
        exposure = np.maximum(0.0, 1.0 - (2.0 * luma - 1.0) ** 2) * (1.0 - np.minimum(1.0, 2.0 * clipped))
        return {"content": content, "quality": quality, "kept": kept, "focus": focus, "border": border,
                "thirds": thirds, "exposure": exposure}

    def _shape_factor(self, w: np.ndarray, h: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        h = np.asarray(h, dtype=np.float64)
        r = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1.0)
        aspect = np.where(r <= self.max_aspect, 1.0, np.clip((4.0 - r) / (4.0 - self.max_aspect), 0.0, 1.0))
        return aspect * np.minimum(1.0, np.minimum(w, h) / self.min_side_px)

    def _penalty(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        area = np.minimum(1.0, w * h / (width * height) / self.min_area) ** 1.5
        return area * self._shape_factor(w, h)

    def _score_array(self, ctx: _Tables, boxes: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        terms = self._terms(ctx, boxes)
        pen = self._penalty(boxes, ctx.width, ctx.height)
        total = sum(self._w_photo[k] * v for k, v in terms.items())
        return 1.0 + 9.0 * pen * np.clip(total, 0.0, 1.0), {**terms, "penalty": pen}

    def explain(self, photo: Photo, box: Sequence[float]) -> dict[str, float]:
        """Every term, the penalty factor P and the score of one box (for reports and debugging)."""
        bx = np.asarray([clip_box(box, photo.width, photo.height)], dtype=np.float64)
        score, terms = self._score_array(self._context(photo), bx)
        return {**{k: float(v[0]) for k, v in terms.items()}, "score": float(score[0])}

    def score_boxes(self, photo: Photo, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        clipped = [clip_box(b, photo.width, photo.height) for b in boxes]
        out = np.empty(len(clipped), dtype=np.float64)
        todo: dict[tuple[int, int, int, int], list[int]] = {}
        for i, bx in enumerate(clipped):
            hit = self._boxes.get((photo.id, photo.width, photo.height, bx))
            if hit is None:
                todo.setdefault(bx, []).append(i)
            else:
                out[i] = hit
        if todo:
            keys = list(todo)
            scores, _ = self._score_array(self._context(photo), np.asarray(keys, dtype=np.float64))
            for bx, s in zip(keys, scores, strict=True):
                out[todo[bx]] = s
                self._boxes.put((photo.id, photo.width, photo.height, bx), float(s))
        return out

    def score(self, crops: Crops) -> np.ndarray:
        items = as_crop_list(crops)
        if not items:
            return np.zeros(0, dtype=np.float64)
        x = preprocess(items, self.crop_content_size, self.mean, self.std).to(self.device)
        with torch.inference_mode():
            probs = self.model(x).float().softmax(-1).cpu().numpy()
        out = np.empty(len(items), dtype=np.float64)
        for i, c in enumerate(items):
            h, w = c.shape[:2]
            s = self.analysis_long_side / max(h, w)
            small = c if s >= 1 else resize(c, (max(1, round(w * s)), max(1, round(h * s))))
            quality = 0.0
            if min(small.shape[:2]) >= 16:
                with self._cv_lock:
                    quality = float(np.clip(1.0 - brisque_score(small) / 100.0, 0.0, 1.0))
            luma = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
            mean = float(luma.mean()) / 255.0
            clipped = float(np.mean((luma <= 2) | (luma >= 253)))
            exposure = max(0.0, 1.0 - (2.0 * mean - 1.0) ** 2) * (1.0 - min(1.0, 2.0 * clipped))
            terms = {"content": float(probs[i].max()), "quality": quality, "exposure": exposure}
            # Terms that need the photo count as neutral, so score() and score_boxes() share a scale.
            terms.update({k: NEUTRAL for k in PHOTO_TERMS if k not in terms})
            total = sum(self._w_photo[k] * v for k, v in terms.items())
            out[i] = 1.0 + 9.0 * float(self._shape_factor(w, h)) * total
        return out

    def clear_caches(self) -> None:
        """Forget cached box scores (per-photo tables leave memory with their photo context)."""
        self._boxes.clear()



@functools.cache
def _subject_mapper() -> ProxyAestheticScorer:
    return ProxyAestheticScorer(box_cache_size=1)


def subject_map(photo: Photo) -> np.ndarray:
    """`ProxyAestheticScorer.subject_map` of the photo's context, from one default scorer per process.

    Offline like the rest: the backbone's ImageNet weights ship in a package."""
    return _subject_mapper().subject_map(context_of(photo))
