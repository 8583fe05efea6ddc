"""The human reward model: a per-crop score r(x) learned from one person's crop comparisons.

A crop's features are
- the frozen backbone's pooled embedding of the crop's pixels (content), reduced by PCA fitted on
  the training crops, so 80 pairs need not fit 1280 free weights;
- its geometry in the photo (centre, size, area, log aspect ratio, all relative to the photo),
  since taste in crops is about framing as much as content;
- cheap colour statistics of the crop (mean RGB, warmth R - B, luminance, contrast, saturation);
- framing cues from two saliency maps of the whole photo (the backbone's activation energy, a
  semantic subject; OpenCV's spectral residual, the cue the crop policy also sees): how much of
  the salient mass the crop holds, where its centroid lies inside the crop and how far from the
  thirds lines, whether an edge cuts through it, and where the main salient region sits. "The
  subject near the left third" is a property of crop *and* photo, which a crop's pixels alone
  show only faintly.

Features are centred on the training crops and scaled by their spread *within* pairs (what the
Bradley-Terry loss sees). A small head (linear by default, or one hidden layer) maps them to r;
it is trained with the Bradley-Terry loss (A better: y=1, B better: y=0, no preference: y=0.5),
under a likelihood that expects a share eps of the answers to be flipped (slips of the key, changes
of mind: P(A) = eps + (1 - 2 eps) sigma(r_a - r_b)), with eps chosen from --label_noise by
cross-validated log-loss; a plain BT head lets a few answers against a large margin pull its weights
the most, and on the bench's `tight` answers that cost 0.08 of held-out accuracy. The head carries
an L1 penalty applied by proximal steps (tastes rest on a few features; with 100 pairs a plain L2
penalty spreads the weight over every correlated feature) plus a light L2 penalty.

How strong the L1 penalty should be depends on the taste (one resting on warmth alone wants a
strong one; "tight but holding the subject" needs area and a bend in the subject share, and a
weaker one), so it is chosen on held-out loss: 5-fold cross-validation, folds by photo (the model
will score photos it never saw, and pairs of one photo share colours and subject), each --l1
value trained on every fold; the strongest penalty whose pooled held-out log-loss is within one
standard error of the lowest wins (``--l1_rule 1se``: closer than that is a tie, and the sparser
head carries fewer chance features to new photos; when no value's loss is clearly below an
indifferent head's log 2, cross-validated accuracy decides, if it is above chance), and the final
head is trained on all pairs,
since with 100 pairs keeping 20 aside for good costs accuracy. Measured on the personalization
bench's answers (three stage-1 policies x three tastes, three seeds): worst
taste 0.66-0.77 held-out accuracy with one 20-pair split and l1 10, 0.66-0.84 this way (see
bench/README.md). Early stopping (--patience) is there but off by default: on those answers it
stopped heads after a few epochs, before L1 had picked the few features a taste rests on.
``--cv_folds 0`` gives the classic single held-out split with early stopping and the best
epoch's weights.

After training r is centred per photo: `reward` subtracts the mean r of the photo's reference
crops (the whole photo and a 3x3 grid of 0.6-size crops), so ``human_score = sigmoid(r)`` lies in
[0, 1] and is 0.5 for a crop as good as the photo's typical framing. Pairs compare crops of one
photo, so they fix r only up to a constant per photo; TRL's centring (``--centring global``: the
mean over all training crops) leaves that constant in, and on the personalization bench it put
whole photos in sigmoid's flat tails (every crop of one photo at 0.00, of another at 0.97-1.00),
where stage 3 could not tell crops apart.

Mirror augmentation is off by default: a mirrored crop has mirrored geometry, and a taste such as
"subject near the LEFT third" is not mirror-invariant, so mirroring would teach the opposite of it.
Turn it on only for tastes known to be left/right symmetric. Box jitter (off by default) adds
copies of each pair with every edge moved by up to a few percent of the box; pairs whose two
crops nearly coincide are not jittered, since jitter could swap which one is better.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf.boxstats import box_iou, box_sums, framing_cues, moment_sat, spectral_residual
from rlhf.images import Box, Photo, clip_box, resize

# 2: the share hinge cues joined the features (a version-1 model's head reads fewer of them).
FORMAT_VERSION = 2

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
# Checked against hand-marked subjects of the five bundled training photos (backbone map): 0.5
# placed them best; 0.3 spilled into the background, 0.7 shrank to one part of the subject.
SUBJECT_THRESHOLD = 0.5


# How rewards are centred (see PreferenceRewardModel).
CENTRINGS = ("photo", "global")
# How held-out loss picks the L1 penalty (RewardTrainConfig.l1_rule).
L1_RULES = ("1se", "min")


class PreferenceDataError(ValueError):
    """Preference data that cannot train a model; the message names the file and the problem."""


@dataclass
class RewardTrainConfig:
    """Train the human reward model (per-crop score, Bradley-Terry) on crop preference pairs."""

    preference_data: str = field(default="", metadata={
        "help": "pairs JSON file or preference store (SQLite) with answered pairs"})
    out: str | None = field(default=None, metadata={
        "help": "run folder; None = results/reward-<time>/"})
    annotator: str | None = field(default=None, metadata={
        "help": "use this annotator's answers only; None = the store's consensus (majority vote) of all answers"})
    epochs: int = field(default=50, metadata={"help": "maximum training epochs over the pairs"})
    lr: float = field(default=0.03, metadata={"help": "Adam learning rate of the head (cosine-decayed to 0)"})
    l1: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0], metadata={
        "help": "L1 penalty on the head's input weights (proximal steps): objective = mean BT loss + "
                "(l1*|w|_1 + weight_decay*|w|^2) / n_train_pairs; selects the few features a taste rests "
                "on. Several values: --l1_rule picks one by held-out loss (tastes differ: one "
                "resting on a single cue wants a strong penalty, one that bends wants a weaker one)"})
    l1_rule: str = field(default="1se", metadata={"choices": L1_RULES, "help": (
        "how held-out loss picks --l1: '1se' = the strongest penalty whose held-out loss lies within one "
        "standard error of the lowest (Breiman's one-standard-error rule, glmnet's lambda.1se); 'min' = the "
        "lowest loss. With 100 noisy pairs two losses that close are a tie, and the weaker penalty keeps "
        "features that only happen to go with the answers (warm: 64 features at l1 1 against 29 at l1 3, "
        "losses 0.504 and 0.506), which stage 3 then exploits on photos the person never saw")})
    label_noise: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2], metadata={
        "help": "share of answers taken to be flipped (slips, changes of mind): the likelihood of an answer is "
                "eps + (1 - 2 eps) * sigma(r_a - r_b) (bradley_terry_loss), so a few answers against the rest "
                "cannot pull the head their way. Several values: the one whose best --l1 has the lowest "
                "cross-validated held-out log-loss (the held-out answers' log-likelihood under that model) wins, "
                "then --l1_rule picks --l1 under it. On the personalization bench's tight answers (g33, "
                "10 %% noise) held-out log-loss chose 0.2 (0.597, against 0.638 at 0 and 0.621 at 0.1) and "
                "accuracy on the bench's noiseless held-out pairs rose from 0.746 to 0.831"})
    weight_decay: float = field(default=1.0, metadata={
        "help": "L2 penalty on the head's weights (scaled by 1/n_train_pairs like l1)"})
    batch_size: int = field(default=16, metadata={"help": "pairs per gradient step"})
    cv_folds: int = field(default=5, metadata={
        "help": "k-fold cross-validation (split by pair, seeded): the mean held-out loss per epoch over "
                "the folds picks --l1 and the epoch to stop at, then the head is trained on ALL pairs for "
                "that many epochs (with 100 pairs, holding 20 out for good costs accuracy). 0 = one "
                "held-out split of --val_fraction: early stopping on it, the head keeps the rest only"})
    val_fraction: float = field(default=0.2, metadata={
        "help": "with --cv_folds 0: fraction of pairs held out (split by pair, seeded) for early stopping "
                "and metrics"})
    patience: int = field(default=0, metadata={
        "help": "early stopping: stop after this many epochs without a better held-out loss (pooled over "
                "the folds) and use the best epoch. 0 (default) = train every epoch: the L1 penalty "
                "chosen on held-out loss regularises, and on the personalization bench early stopping "
                "picked heads stopped after a few epochs that spread weight over every feature instead "
                "of the few a taste rests on"})
    seed: int = field(default=0, metadata={"help": "seed of the split, initialisation and augmentation"})
    backbone: str = field(default="efficientnet_lite0", metadata={
        "help": "timm model name of the frozen feature extractor"})
    backbone_weights: str | None = field(default=None, metadata={
        "help": "local weights file for the backbone (default: the shipped EfficientNet-Lite0 ImageNet weights)"})
    input_size: int = field(default=160, metadata={"help": "crops are resized to this square size for the backbone"})
    embed_dim: int = field(default=8, metadata={
        "help": "PCA components of the backbone embedding fed to the head (0 = none, -1 = all)"})
    hidden: int = field(default=0, metadata={"help": "hidden units of the head (0 = linear head)"})
    augment_mirror: bool = field(default=False, metadata={
        "help": "add mirrored pairs (mirrored pixels and geometry); wrong for left/right tastes, so off"})
    augment_jitter: float = field(default=0.0, metadata={
        "help": "box jitter as a fraction of box size (e.g. 0.03); 0 = off"})
    jitter_copies: int = field(default=2, metadata={"help": "jittered copies of each pair when jitter is on"})
    centring: str = field(default="photo", metadata={"choices": CENTRINGS, "help": (
        "what r is centred on before human_score = sigmoid(r): 'photo' = the mean r of the photo's own "
        "reference crops (whole photo + 3x3 grid of 0.6-size crops), so 0.5 means 'as good as this photo's "
        "typical framing'; 'global' = the mean r of the training crops (TRL's reward centring). Pairs "
        "compare crops of one photo, so they fix r only up to a constant per photo: with 'global' that "
        "constant pushes whole photos into sigmoid's flat tails, where stage 3 sees no difference "
        "between crops")})
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda)"})

    def __post_init__(self) -> None:
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {self.centring!r}")
        if self.l1_rule not in L1_RULES:
            raise ValueError(f"l1_rule must be one of {L1_RULES}, got {self.l1_rule!r}")
        if isinstance(self.l1, int | float):
            self.l1 = [float(self.l1)]
        self.l1 = [float(v) for v in self.l1]
        if isinstance(self.label_noise, int | float):
            self.label_noise = [float(self.label_noise)]
        self.label_noise = [float(v) for v in self.label_noise]
        if not self.label_noise or not all(0 <= v < 0.5 for v in self.label_noise):
            raise ValueError(f"label_noise must be one or more values in [0, 0.5), got {self.label_noise}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0 or self.weight_decay < 0 or not self.l1 or min(self.l1) < 0:
            raise ValueError(f"lr must be > 0, l1 (one or more values) and weight_decay >= 0; got lr={self.lr}, "
                             f"l1={self.l1}, weight_decay={self.weight_decay}")
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ValueError(f"cv_folds must be 0 (one held-out split) or >= 2, got {self.cv_folds}")
        if self.cv_folds == 0 and self.val_fraction == 0 and (len(self.l1) > 1 or len(self.label_noise) > 1):
            raise ValueError(f"several --l1 {self.l1} or --label_noise {self.label_noise} values need held-out "
                             "pairs to choose between them: use --cv_folds >= 2 or --val_fraction > 0, or give "
                             "one value of each")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.patience < 0 or self.hidden < 0 or self.jitter_copies < 0:
            raise ValueError("patience, hidden and jitter_copies must be >= 0")
        if self.input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {self.input_size}")
        if self.embed_dim < -1:
            raise ValueError(f"embed_dim must be -1 (all), 0 (none) or a positive count, got {self.embed_dim}")
        if not 0.0 <= self.augment_jitter <= 0.2:
            raise ValueError(f"augment_jitter is a small fraction of the box size in [0, 0.2], got {self.augment_jitter}")


# --- the frozen backbone -------------------------------------------------------------------------

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
        self._cache: dict[tuple[str, Box, bool], np.ndarray] = {}
        self._emb: dict[tuple[str, Box, bool], np.ndarray] = {}
        self._maps: dict[tuple[str, bool, str], Saliency] = {}
        # Bounds for long-lived users (the RL scoring actor): about 5 KB per crop, 0.5 MB per photo.
        self.max_cached_crops, self.max_cached_photos = max_cached_crops, max_cached_photos
        self.crops_embedded = 0
        self.seconds_embedding = 0.0

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
        if len(self._emb) > self.max_cached_crops:
            self._cache.clear()
            self._emb.clear()
        if len(self._maps) > 2 * self.max_cached_photos:
            self._maps.clear()
        w, h = photo.width, photo.height
        keys = [(photo.id, clip_box(b, w, h), bool(mirrored)) for b in boxes]
        missing = [k for k in dict.fromkeys(keys) if k not in self._cache]
        for i in range(0, len(missing), self.batch_size):
            self._compute(photo, missing[i:i + self.batch_size], mirrored)
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cache[k] for k in keys])

    def _compute(self, photo: Photo, keys: list[tuple[str, Box, bool]], mirrored: bool) -> None:
        w, h = photo.width, photo.height
        pixels = photo.pixels[:, ::-1] if mirrored else photo.pixels
        boxes = [mirror_box(k[1], w) if mirrored else k[1] for k in keys]
        crops = np.stack([resize(pixels[t:b, l:r], self.input_size) for (l, t, r, b) in boxes])
        todo = [i for i, k in enumerate(keys) if k not in self._emb]
        if todo:
            t0 = time.perf_counter()
            emb = _embed(self.model, crops[todo], self.input_size).astype(np.float32)
            self.seconds_embedding += time.perf_counter() - t0
            self.crops_embedded += len(todo)
            for i, e in zip(todo, emb, strict=True):
                self._emb[keys[i]] = e
        maps = [self._saliency(photo, mirrored, kind) for kind in SALIENCY_MAPS]
        for k, box, crop in zip(keys, boxes, crops, strict=True):
            hand = [geometry_features(box, w, h), colour_features(crop)] + [m.features(box) for m in maps]
            self._cache[k] = np.concatenate([self._emb[k], *hand]).astype(np.float32)

    def _saliency(self, photo: Photo, mirrored: bool, kind: str) -> Saliency:
        """A saliency map of the whole photo: "net" (backbone activation energy) or "sr"."""
        key = (photo.id, bool(mirrored), kind)
        if key not in self._maps:
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
            self._maps[key] = Saliency(np.ascontiguousarray(grid), photo.width, photo.height)
        return self._maps[key]

    def cache_state(self) -> dict[str, Any]:
        """The expensive part of the cache (embeddings, saliency grids) as plain data.

        The cheap hand-made features are recomputed from it, so a saved cache stays valid when
        they change."""
        return {"backbone": self.backbone_name, "backbone_weights": self.backbone_weights,
                "input_size": self.input_size, "embeddings": dict(self._emb),
                "grids": {k: (m.grid, m.width, m.height) for k, m in self._maps.items()}}

    def load_cache_state(self, state: dict[str, Any]) -> int:
        """Adopt a saved cache made by the same backbone, weights and size; returns crops adopted."""
        same = (state.get("backbone"), state.get("backbone_weights"), state.get("input_size")) == (
            self.backbone_name, self.backbone_weights, self.input_size)
        if not same:
            return 0
        self._emb.update(state["embeddings"])
        for k, (grid, w, h) in state["grids"].items():
            if len(k) == 3:  # (photo id, mirrored, kind)
                self._maps.setdefault(k, Saliency(grid, w, h))
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


# --- normaliser and head -------------------------------------------------------------------------

class FeatureNormaliser:
    """PCA of the embedding block (fitted on training crops), centring and scaling of every feature."""

    def __init__(self, n_embed: int, components: np.ndarray, embed_mean: np.ndarray,
                 mean: np.ndarray, std: np.ndarray):
        self.n_embed = n_embed
        self.components = components.astype(np.float32)  # (k, n_embed)
        self.embed_mean = embed_mean.astype(np.float32)
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, n_embed: int, embed_dim: int, x_other: np.ndarray | None = None
            ) -> FeatureNormaliser:
        """Fit on training crops `x`; with `x_other` (the other crop of each pair, row for row) the
        scale is the spread of within-pair differences rather than of crops.

        Bradley-Terry sees only r_a - r_b of two crops of one photo. A feature such as warmth
        varies far more between photos than between two crops of one photo, so scaling by its
        spread over crops would shrink exactly the differences the person judged, and the
        penalty would then silence it. Scaling by the within-pair spread puts every feature on
        the footing the loss sees.
        """
        both = x if x_other is None else np.concatenate([x, x_other])
        emb = both[:, :n_embed].astype(np.float64)
        emb_mean = emb.mean(0)
        k = n_embed if embed_dim == -1 else min(embed_dim, n_embed, max(len(both) - 1, 0))
        if k > 0 and embed_dim != -1:
            _, _, vt = np.linalg.svd(emb - emb_mean, full_matrices=False)
            comps = vt[:k]
        elif k > 0:
            comps = np.eye(n_embed)
        else:
            comps = np.zeros((0, n_embed))

        def reduce(a: np.ndarray) -> np.ndarray:
            return np.concatenate([(a[:, :n_embed] - emb_mean) @ comps.T, a[:, n_embed:]], axis=1)

        reduced = reduce(both)
        spread = reduced.std(0) if x_other is None else (reduce(x) - reduce(x_other)).std(0)
        # A feature that never differs carries nothing; dividing by ~0 would blow it up.
        spread = np.where(spread > 1e-6, spread, 1.0)
        return cls(n_embed, comps, emb_mean, reduced.mean(0), spread)

    @property
    def out_dim(self) -> int:
        return len(self.mean)

    def transform(self, x: np.ndarray) -> np.ndarray:
        emb = (x[:, :self.n_embed] - self.embed_mean) @ self.components.T
        reduced = np.concatenate([emb, x[:, self.n_embed:]], axis=1)
        return ((reduced - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"n_embed": self.n_embed, "components": torch.from_numpy(self.components),
                "embed_mean": torch.from_numpy(self.embed_mean), "mean": torch.from_numpy(self.mean),
                "std": torch.from_numpy(self.std)}

    @classmethod
    def from_state_dict(cls, s: dict[str, Any]) -> FeatureNormaliser:
        return cls(int(s["n_embed"]), s["components"].numpy(), s["embed_mean"].numpy(),
                   s["mean"].numpy(), s["std"].numpy())


class RewardHead(nn.Module):
    """Standardised features -> r: linear, or one hidden layer when hidden > 0."""

    def __init__(self, in_dim: int, hidden: int = 0):
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        self.net = (nn.Linear(in_dim, 1) if hidden == 0 else
                    nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)))
        # Start indifferent (r = 0 for every crop): a random start would favour arbitrary features,
        # and with few pairs the penalty would take many steps to undo that. A hidden layer's
        # output weights start small instead (at zero its inputs would get no gradient).
        last = self.net if hidden == 0 else self.net[-1]
        if hidden == 0:
            nn.init.zeros_(last.weight)
        else:
            last.weight.data.mul_(0.1)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def weights(self) -> list[nn.Parameter]:
        """The penalised parameters (biases are free: a bias cancels in r_a - r_b anyway)."""
        return [m.weight for m in self.net.modules() if isinstance(m, nn.Linear)]


def _proximal_l1(opt: torch.optim.Adam, weights: Sequence[nn.Parameter], strength: float) -> None:
    """Soft-threshold weights after an Adam step: the L1 part of a proximal-gradient step.

    Adam scales each coordinate's step by 1/sqrt(v); the threshold is scaled the same way, so a
    weight moves by (|gradient| - strength) in Adam's units and stays exactly 0 while its gradient
    is below the L1 strength. (A subgradient of |w| in the loss would only make Adam hover around
    zero, and shrink all weights a little, rather than select features.)
    """
    group = opt.param_groups[0]
    lr, (_, beta2), eps = group["lr"], group["betas"], group["eps"]
    with torch.no_grad():
        for w in weights:
            state = opt.state.get(w)
            if not state:
                continue
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
            # Capped at Adam's own largest step (lr): a weight that has seen no gradient yet
            # (v = 0) shrinks like any other instead of being wiped out at once.
            thresh = (lr * strength / (v_hat.sqrt() + eps)).clamp_max(lr)
            w.copy_(w.sign() * (w.abs() - thresh).clamp_min(0.0))


def bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
                       label_noise: float = 0.0) -> torch.Tensor:
    """Mean (or per pair: reduction="none") of -[y log p + (1 - y) log(1 - p)], y=0.5 for a tie, where
    p = P(A answered better) = eps + (1 - 2 eps) sigma(r_a - r_b) with eps = label_noise: the person
    answers by the Bradley-Terry model, except that a share eps of answers is flipped (a slip of the
    key, a change of mind). eps = 0 is the plain BT loss. With eps > 0 a pair answered against a
    large margin costs at most -log eps, so a few slips cannot drag the head towards them."""
    d = r_a - r_b
    if label_noise <= 0:
        return nn.functional.binary_cross_entropy_with_logits(d, y, reduction=reduction)
    # log(eps + (1 - 2 eps) sigma(+-d)), from logsigmoid so it stays finite for any margin.
    keep, slip = math.log1p(-2 * label_noise), math.log(label_noise)
    log_p = torch.logaddexp(keep + nn.functional.logsigmoid(d), torch.full_like(d, slip))
    log_q = torch.logaddexp(keep + nn.functional.logsigmoid(-d), torch.full_like(d, slip))
    loss = -(y * log_p + (1 - y) * log_q)
    return loss.mean() if reduction == "mean" else loss


# --- the model -----------------------------------------------------------------------------------

def reference_boxes(width: int, height: int) -> list[Box]:
    """The crops a photo's rewards are centred on: the whole photo and a 3x3 grid of crops 0.6 of
    its width and height (left/centre/right x top/middle/bottom), the range a crop policy explores."""
    w, h = round(0.6 * width), round(0.6 * height)
    boxes = [(0, 0, width, height)]
    for fy in (0.0, 0.5, 1.0):
        for fx in (0.0, 0.5, 1.0):
            left, top = round(fx * (width - w)), round(fy * (height - h))
            boxes.append((left, top, left + w, top + h))
    return boxes


class PreferenceRewardModel:
    """r(photo, box): featurizer -> normaliser -> head, minus the centring offset.

    Centring ``photo`` (default) subtracts the mean r of the photo's own reference crops
    (`reference_boxes`); ``global`` subtracts one offset, the mean r of the training crops.
    """

    def __init__(self, featurizer: CropFeaturizer, normaliser: FeatureNormaliser, head: RewardHead,
                 offset: float = 0.0, config: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, centring: str = "global"):
        if centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {centring!r}")
        self.featurizer = featurizer
        self.normaliser = normaliser
        self.head = head.to(featurizer.device).eval()
        self.offset = float(offset)
        self.centring = centring
        self.config = dict(config or {})
        self.metrics = dict(metrics or {})
        self._photo_offsets: dict[tuple[str, int, int], float] = {}

    @property
    def device(self) -> torch.device:
        return self.featurizer.device

    def to(self, device: str | torch.device) -> PreferenceRewardModel:
        self.featurizer.to(device)
        self.head.to(device)
        return self

    def raw_from_features(self, raw_features: np.ndarray) -> np.ndarray:
        """Uncentred r for raw feature rows."""
        x = torch.from_numpy(self.normaliser.transform(raw_features)).to(self.device)
        with torch.no_grad():
            return self.head(x).double().cpu().numpy()

    def photo_offset(self, photo: Photo) -> float:
        """What `reward` subtracts for this photo (see the class docstring)."""
        if self.centring == "global":
            return self.offset
        key = (photo.id, photo.width, photo.height)
        if key not in self._photo_offsets:
            if len(self._photo_offsets) > 4 * self.featurizer.max_cached_photos:
                self._photo_offsets.clear()
            refs = self.featurizer.features(photo, reference_boxes(photo.width, photo.height))
            self._photo_offsets[key] = float(self.raw_from_features(refs).mean())
        return self._photo_offsets[key]

    def reward(self, photo: Photo, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """Centred r per box: 0 for a crop as good as the photo's reference crops on average
        (centring "photo"), or as the average training crop ("global")."""
        return self.raw_from_features(self.featurizer.features(photo, boxes)) - self.photo_offset(photo)

    def human_score(self, photo: Photo, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """sigmoid(r) per box in [0, 1]; 0.5 for an average crop (of this photo, with centring "photo")."""
        return 1.0 / (1.0 + np.exp(-self.reward(photo, boxes)))

    def prefer(self, photo: Photo, box_a: Sequence[float], box_b: Sequence[float]) -> float:
        """P(A better than B) under Bradley-Terry."""
        r = self.reward(photo, [box_a, box_b])
        return float(1.0 / (1.0 + math.exp(-(r[0] - r[1]))))

    def save(self, path: str | Path) -> Path:
        """One .pth: head weights, normaliser, centring offset, backbone name + weights, config."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "format": "rlhf-photographer/human-reward-model", "version": FORMAT_VERSION,
            "backbone": self.featurizer.backbone_name, "backbone_weights": self.featurizer.backbone_weights,
            "input_size": self.featurizer.input_size, "feature_names": list(self.featurizer.feature_names),
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
            "head_in_dim": self.head.in_dim, "head_hidden": self.head.hidden,
            "normaliser": self.normaliser.state_dict(), "offset": self.offset, "centring": self.centring,
            "config": self.config, "metrics": self.metrics,
        }, path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backbone_weights: str | None = None,
             featurizer: CropFeaturizer | None = None) -> PreferenceRewardModel:
        """Load a saved model; `backbone_weights` overrides the stored path (a moved weights file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such human reward model file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our file"
            raise ValueError(f"{path}: not a readable human reward model ({e})") from e
        if not isinstance(state, dict) or state.get("format") != "rlhf-photographer/human-reward-model":
            raise ValueError(f"{path}: not a human reward model file (no 'format' marker)")
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: human reward model format version {state.get('version')}, this version "
                             f"reads {FORMAT_VERSION} (its features changed); retrain it with "
                             "`photographer train-reward` on the same preference data")
        weights = backbone_weights or state["backbone_weights"]
        if featurizer is None:
            featurizer = CropFeaturizer(state["backbone"], weights, state["input_size"], device=device)
        elif (featurizer.backbone_name, featurizer.input_size) != (state["backbone"], state["input_size"]):
            raise ValueError(f"{path}: saved for {state['backbone']}@{state['input_size']}, "
                             f"featurizer is {featurizer.backbone_name}@{featurizer.input_size}")
        head = RewardHead(state["head_in_dim"], state["head_hidden"])
        head.load_state_dict(state["head"])
        return cls(featurizer, FeatureNormaliser.from_state_dict(state["normaliser"]), head,
                   state["offset"], state.get("config"), state.get("metrics"), state.get("centring", "global"))


# --- training ------------------------------------------------------------------------------------

@dataclass
class PreferenceExample:
    """One comparison ready to train on: y = 1 (A better), 0 (B better), 0.5 (no preference)."""

    pair_id: str
    photo: Photo
    box_a: Box
    box_b: Box
    y: float


@dataclass
class TrainHistory:
    """Per-epoch curves and the final held-out figures."""

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    n_pairs: int = 0
    n_train: int = 0  # pairs the final head was trained on
    n_val: int = 0  # pairs its held-out figures come from (with cross-validation: every pair, once)
    stopped_early: bool = False
    seconds_featurizing: float = 0.0
    ms_per_crop: float = 0.0
    validation: str = ""  # how held-out figures were measured (k-fold cross-validation or one split)
    l1: float = 0.0  # the --l1 value used
    l1_val_loss: dict[str, float] = field(default_factory=dict)  # best held-out loss of each --l1 value
    l1_rule: str = "min"  # how the --l1 value was chosen (RewardTrainConfig.l1_rule)
    l1_se: float = float("nan")  # standard error of the lowest held-out loss
    l1_choice: str = ""  # why that --l1 value (see _choose_l1)
    label_noise: float = 0.0  # the --label_noise value used
    label_noise_val_loss: dict[str, float] = field(default_factory=dict)  # lowest held-out loss of each value

    def final(self) -> dict[str, Any]:
        i = self.epochs.index(self.best_epoch) if self.best_epoch in self.epochs else -1
        return {"val_accuracy": self.val_accuracy[i] if self.n_val else None,
                "val_log_loss": self.val_loss[i] if self.n_val else None,
                "train_loss": self.train_loss[i], "train_accuracy": self.train_accuracy[i],
                "best_epoch": self.best_epoch, "epochs_run": len(self.epochs),
                "stopped_early": self.stopped_early, "n_pairs": self.n_pairs,
                "n_train": self.n_train, "n_val": self.n_val,
                "seconds_featurizing": round(self.seconds_featurizing, 3),
                "ms_per_crop": round(self.ms_per_crop, 2), "validation": self.validation, "l1": self.l1,
                "l1_val_loss": self.l1_val_loss, "l1_rule": self.l1_rule,
                "l1_se": None if math.isnan(self.l1_se) else self.l1_se, "l1_choice": self.l1_choice,
                "label_noise": self.label_noise, "label_noise_val_loss": self.label_noise_val_loss}


def examples_from_pairs(pairs: Sequence[Any], source: str | Path = "<pairs>") -> list[PreferenceExample]:
    """Answered pairs (rlhf.pairs.Pair) -> examples; each photo is loaded once.

    Unanswered pairs are skipped. A photo that cannot be loaded, or a box outside its photo, raises
    PreferenceDataError naming the preference file, the pair and the problem.
    """
    from rlhf.images import ImageLoadError, load_image, photo_id

    target = {1: 1.0, 2: 0.0, 0: 0.5}
    photos: dict[str, Photo] = {}
    out = []
    for i, p in enumerate(pairs):
        if p.preference is None:
            continue
        if p.preference not in target:
            raise PreferenceDataError(f"{source}: pair #{i} (id {p.id!r}) field 'preference': must be "
                                      f"1, 2 or 0, got {p.preference!r}")
        if p.image not in photos:
            try:
                photos[p.image] = Photo(photo_id(p.image), load_image(p.image))
            except ImageLoadError as e:
                raise PreferenceDataError(f"{source}: pair #{i} (id {p.id!r}) field 'image': {e}") from e
        photo = photos[p.image]
        boxes = []
        for name in ("crop_a", "crop_b"):
            box = tuple(int(v) for v in getattr(p, name))
            l, t, r, b = box
            if not (0 <= l < r <= photo.width and 0 <= t < b <= photo.height):
                raise PreferenceDataError(
                    f"{source}: pair #{i} (id {p.id!r}) field {name!r}: box {list(box)} lies outside "
                    f"the {photo.width}x{photo.height} photo {p.image}")
            boxes.append(box)
        out.append(PreferenceExample(p.id, photo, boxes[0], boxes[1], target[p.preference]))
    return out


def jitter_box(box: Box, frac: float, width: int, height: int, rng: np.random.Generator) -> Box:
    """Move each edge by up to frac of the box's size, staying inside the photo."""
    l, t, r, b = box
    dx, dy = frac * (r - l), frac * (b - t)
    j = rng.uniform(-1, 1, 4) * np.array([dx, dy, dx, dy])
    return clip_box((l + j[0], t + j[1], r + j[2], b + j[3]), width, height)


def _pair_features(fz: CropFeaturizer, examples: Sequence[PreferenceExample], mirrored: bool = False,
                   jitter: float = 0.0, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw features (n, dim) of the A crops and of the B crops, grouped per photo for batching."""
    fa = np.zeros((len(examples), fz.dim), np.float32)
    fb = np.zeros_like(fa)
    by_photo: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_photo.setdefault(ex.photo.id, []).append(i)
    for idx in by_photo.values():
        photo = examples[idx[0]].photo
        boxes: list[Box] = []
        for i in idx:
            a, b = examples[i].box_a, examples[i].box_b
            if jitter > 0 and rng is not None:
                # Jitter could swap which of two near-identical crops is better: keep those as they are.
                if box_iou(a, b) < 0.8:
                    a = jitter_box(a, jitter, photo.width, photo.height, rng)
                    b = jitter_box(b, jitter, photo.width, photo.height, rng)
            boxes += [a, b]
        f = fz.features(photo, boxes, mirrored=mirrored)
        fa[idx], fb[idx] = f[0::2], f[1::2]
    return fa, fb


def _evaluate(head: RewardHead, xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor, label_noise: float = 0.0
              ) -> tuple[torch.Tensor, float, int]:
    """(BT log-loss per pair (with that label noise), accuracy over non-tied pairs (NaN when all are ties), non-tied pairs)."""
    with torch.no_grad():
        ra, rb = head(xa), head(xb)
        losses = bradley_terry_loss(ra, rb, y, reduction="none", label_noise=label_noise)
        decided = y != 0.5
        n = int(decided.sum())
        # Equal rewards count half, as rlhf.evaluation.reward_model_accuracy counts them: an
        # indifferent head scores 0.5, not the share of pairs that B won.
        d = (ra - rb)[decided]
        right = torch.where(d == 0, 0.5, ((d > 0) == (y[decided] > 0.5)).float())
        acc = float(right.mean()) if n else float("nan")
    return losses, acc, n


@dataclass
class _Data:
    """Standardised features of some pairs: xa, xb (views, n, d) with the annotated view first; y (n,)."""

    xa: torch.Tensor
    xb: torch.Tensor
    y: torch.Tensor


def _standardised(views: Sequence[tuple[np.ndarray, np.ndarray]], y: np.ndarray, train: np.ndarray,
                  held: np.ndarray, fz: CropFeaturizer, cfg: RewardTrainConfig
                  ) -> tuple[FeatureNormaliser, _Data, _Data]:
    """Normaliser fitted on the training pairs' crops as annotated; held-out pairs get no augmented views."""
    norm = FeatureNormaliser.fit(views[0][0][train], fz.embed_dim, cfg.embed_dim, views[0][1][train])

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(norm.transform(a)).to(fz.device)

    def data(idx: np.ndarray, vs: Sequence[tuple[np.ndarray, np.ndarray]]) -> _Data:
        return _Data(torch.stack([tensor(v[0][idx]) for v in vs]), torch.stack([tensor(v[1][idx]) for v in vs]),
                     torch.tensor(y[idx], dtype=torch.float32, device=fz.device))

    return norm, data(train, views), data(held, views[:1])


def _epochs(cfg: RewardTrainConfig, l1: float, train: _Data, held: _Data | None, seed: int, label_noise: float = 0.0
            ) -> Iterator[tuple[RewardHead, tuple[float, float, torch.Tensor, float, int]]]:
    """Train a fresh head epoch by epoch; after each, yield it and (train loss, train accuracy,
    held-out loss per pair, held-out accuracy, held-out non-tied pairs)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = train.y.device
    head = RewardHead(train.xa.shape[-1], cfg.hidden).to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    n = len(train.y)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    # Cosine decay to zero: the L1 term's subgradient makes Adam hover around zero weights; a
    # shrinking step lets those settle and the rest converge.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    for _ in range(cfg.epochs):
        head.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        view = torch.randint(train.xa.shape[0], (n,), generator=gen).to(dev)  # one random view of each pair
        for i in range(0, n, cfg.batch_size):
            j = perm[i:i + cfg.batch_size]
            v = view[j]
            loss = bradley_terry_loss(head(train.xa[v, j]), head(train.xb[v, j]), train.y[j], label_noise=label_noise)
            # The penalties are a prior over the whole data set: their weight per pair falls as pairs grow.
            obj = loss + cfg.weight_decay / n * sum((w ** 2).sum() for w in head.weights())
            opt.zero_grad()
            obj.backward()
            opt.step()
            if l1 > 0:
                # On the input layer only: L1 there selects features; on a hidden head's output
                # layer it would also switch off hidden units it still needs.
                _proximal_l1(opt, head.weights()[:1], l1 / n)
            sched.step()
        head.eval()
        tr_losses, tr_acc, _ = _evaluate(head, train.xa[0], train.xb[0], train.y, label_noise)
        v_losses, v_acc, v_n = (_evaluate(head, held.xa[0], held.xb[0], held.y, label_noise) if held is not None
                                else (torch.zeros(0), float("nan"), 0))
        yield head, (float(tr_losses.mean()), tr_acc, v_losses, v_acc, v_n)


@dataclass
class _Candidate:
    """One (--label_noise, --l1) pair's held-out curves (pooled over the folds) and its best epoch."""

    l1: float
    label_noise: float = 0.0
    curves: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (
        "train_loss", "train_accuracy", "val_loss", "val_accuracy")})
    best: tuple[float, int] = (math.inf, 0)
    best_state: dict[str, torch.Tensor] | None = None
    best_pair_losses: torch.Tensor | None = None  # each held-out pair's loss at the best epoch
    n_decided: int = 0  # held-out pairs with a strict preference (accuracy counts these)
    stopped_early: bool = False

    @property
    def best_accuracy(self) -> float:
        return self.curves["val_accuracy"][self.best[1] - 1] if self.best[1] else float("nan")


def _folds(examples: Sequence[PreferenceExample], cfg: RewardTrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) pair indices per fold: k folds, or the one --val_fraction split."""
    n = len(examples)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n)
    if cfg.cv_folds >= 2:
        photos = sorted({ex.photo.id for ex in examples})
        if len(photos) >= cfg.cv_folds:
            # Folds by photo: the model will score crops of photos it never saw, and pairs of one
            # photo share what a per-pair split would leak (its colours, its subject's place).
            groups = np.array_split(rng.permutation(len(photos)), cfg.cv_folds)
            fold_of = {photos[j]: f for f, g in enumerate(groups) for j in g}
            parts = [np.array([i for i in range(n) if fold_of[examples[i].photo.id] == f], int)
                     for f in range(cfg.cv_folds)]
        else:
            parts = np.array_split(order, min(cfg.cv_folds, n))
        return [(np.sort(np.setdiff1d(np.arange(n), part)), np.sort(part)) for part in parts]
    n_val = 0 if cfg.val_fraction <= 0 else max(1, round(n * cfg.val_fraction))
    return [(np.sort(order[n_val:]), np.sort(order[:n_val]))]


def _try(cfg: RewardTrainConfig, l1: float, folds: Sequence[tuple[_Data, _Data]], label_noise: float = 0.0
         ) -> _Candidate:
    """Train one head per fold in lockstep; the folds' pooled held-out loss scores the candidate
    (at the last epoch, or with --patience at its best epoch, which early stopping finds)."""
    # Held-out pairs with a strict preference: fixed by the folds, the same every epoch.
    cand = _Candidate(l1, label_noise, n_decided=sum(int((va.y != 0.5).sum()) for _, va in folds))
    since_best = 0
    runs = [_epochs(cfg, l1, tr, va, cfg.seed + i, label_noise) for i, (tr, va) in enumerate(folds)]
    n_val = [len(va.y) for _, va in folds]
    n_train = [len(tr.y) for tr, _ in folds]
    for epoch, results in enumerate(zip(*runs, strict=True), 1):
        cand.curves["train_loss"].append(sum(r[1][0] * k for r, k in zip(results, n_train, strict=True))
                                         / sum(n_train))
        # Pooled over folds: every held-out pair counts once, whatever its fold's size.
        held = torch.cat([r[1][2].cpu() for r in results])
        cand.curves["val_loss"].append(float(held.mean()) if len(held) else float("nan"))
        accs = [r[1][1] for r in results if not math.isnan(r[1][1])]
        cand.curves["train_accuracy"].append(sum(accs) / len(accs) if accs else float("nan"))
        decided = cand.n_decided
        cand.curves["val_accuracy"].append(sum(r[1][3] * r[1][4] for r in results if r[1][4]) / decided
                                           if decided else float("nan"))
        monitored = cand.curves["val_loss"][-1] if sum(n_val) else cand.curves["train_loss"][-1]
        # Without early stopping the epoch used is the newest one.
        if not cfg.patience or monitored < cand.best[0] - 1e-6:
            cand.best = (monitored, epoch)
            cand.best_pair_losses = held
            since_best = 0
            if len(folds) == 1:
                cand.best_state = {k: v.clone() for k, v in results[0][0].state_dict().items()}
        else:
            since_best += 1
        if sum(n_val) and cfg.patience and since_best >= cfg.patience:
            cand.stopped_early = True
            break
    return cand


def _choose_l1(cands: Sequence[_Candidate], rule: str) -> tuple[_Candidate, float, str]:
    """The candidate --l1 value by `rule` (RewardTrainConfig.l1_rule), the standard error of the
    lowest held-out loss (nan without held-out pairs: then the lowest training loss wins), and why."""
    best = min(cands, key=lambda c: c.best[0])
    losses = best.best_pair_losses
    if losses is None or len(losses) < 2:
        return best, float("nan"), "the lowest loss"
    se = float(losses.std()) / math.sqrt(len(losses))
    # A penalty so strong that the head is (near) indifferent scores about log 2 whatever the taste:
    # never the tie-break's pick (it would be when every value is weak, e.g. a first round of 50 pairs).
    # The margin is at least float rounding: an all-zero head's losses are log 2 each, so se is 0.
    tied = [c for c in cands if c.best[0] <= best.best[0] + se and c.best[0] < math.log(2) - max(se, 1e-4)]
    if not tied:
        # No loss clearly below an indifferent head's: log-loss cannot rank them. With ties among
        # the answers and label noise it can sit at log 2 while the ranking is right (g30's warm:
        # l1 10 had cross-validated log-loss 0.6936 and accuracy 0.786 on 84 decided pairs, and
        # scored 1.000 on the bench's noiseless held-out pairs; the indifferent head won by loss).
        # Then accuracy decides, if one is above chance at 95 % (one-sided binomial, normal approx.).
        sure = [c for c in cands if c.n_decided and c.best_accuracy > 0.5 + 1.645 * 0.5 / math.sqrt(c.n_decided)]
        if sure:
            return (max(sure, key=lambda c: (c.best_accuracy, c.l1)), se,
                    "no held-out loss clearly below an indifferent head's log 2: the highest held-out accuracy, "
                    "above chance")
        return best, se, "no held-out loss or accuracy clearly better than an indifferent head's: the lowest loss"
    if rule == "min":
        return best, se, "min: the lowest held-out loss"
    return (max(tied, key=lambda c: c.l1), se,
            f"1se: the strongest penalty within one standard error, {se:.4f}, of the lowest held-out loss")


def train_reward_model(examples: Sequence[PreferenceExample], cfg: RewardTrainConfig,
                       featurizer: CropFeaturizer | None = None,
                       log: Callable[[str], None] | None = print) -> tuple[PreferenceRewardModel, TrainHistory]:
    """Fit the head with the Bradley-Terry loss; held-out loss picks --l1 and the epoch to stop at.

    With --cv_folds k >= 2 every --l1 value is trained on k folds (each pair held out once); the
    value and epoch with the lowest pooled held-out loss win, and the head is then trained on all
    pairs for that many epochs; the reported held-out figures are the cross-validated ones. With
    --cv_folds 0 one --val_fraction split does the same, and the model keeps the best epoch's
    head trained on the rest.
    """
    if len(examples) < 2:
        raise PreferenceDataError(f"need at least 2 answered pairs to train, got {len(examples)}")
    fz = featurizer or CropFeaturizer(cfg.backbone, cfg.backbone_weights, cfg.input_size, cfg.device)
    if (fz.backbone_name, fz.input_size) != (cfg.backbone, cfg.input_size):
        raise ValueError(f"featurizer is {fz.backbone_name}@{fz.input_size}, config asks "
                         f"{cfg.backbone}@{cfg.input_size}")
    rng = np.random.default_rng(cfg.seed)
    n = len(examples)
    splits = _folds(examples, cfg)
    if not len(splits[0][0]):
        raise PreferenceDataError(f"no training pairs left after holding out {len(splits[0][1])} of {n}")

    t0, n0, s0 = time.perf_counter(), fz.crops_embedded, fz.seconds_embedding
    views = [_pair_features(fz, examples)]  # the pairs as annotated come first
    if cfg.augment_mirror:
        views.append(_pair_features(fz, examples, mirrored=True))
    if cfg.augment_jitter > 0:
        for _ in range(cfg.jitter_copies):
            views.append(_pair_features(fz, examples, jitter=cfg.augment_jitter, rng=rng))
    y = np.array([ex.y for ex in examples], np.float32)
    seconds_featurizing = time.perf_counter() - t0
    n_new = fz.crops_embedded - n0

    prepared = [_standardised(views, y, tr, va, fz, cfg) for tr, va in splits]
    folds = [(tr, va) for _, tr, va in prepared]
    cv = len(splits) > 1
    what = f"{len(splits)}-fold cross-validation" if cv else f"a held-out split of {len(splits[0][1])} pairs"
    by_noise: dict[float, list[_Candidate]] = {}
    for eps in cfg.label_noise:
        for l1 in cfg.l1:
            c = _try(cfg, l1, folds, eps)
            by_noise.setdefault(eps, []).append(c)
            i = c.best[1] - 1
            if log:
                log(f"{f'label noise {eps:g}, ' if len(cfg.label_noise) > 1 else ''}l1 {l1:g}: held-out log-loss "
                    f"{c.curves['val_loss'][i]:.4f}, accuracy {c.curves['val_accuracy'][i]:.3f} at epoch {c.best[1]} "
                    f"({what})")
    # The noise model first, by the held-out likelihood of its best penalty (the answers' own verdict on
    # how often they contradict the rest); then the penalty under it, by --l1_rule.
    noise_loss = {eps: min(c.best[0] for c in cs) for eps, cs in by_noise.items()}
    eps = min(noise_loss, key=lambda e: (noise_loss[e], e))
    cands = by_noise[eps]
    if log and len(noise_loss) > 1:
        log(f"label noise {eps:g} chosen (the lowest held-out log-loss, "
            + ", ".join(f"{e:g}: {v:.4f}" for e, v in noise_loss.items()) + ")")
    chosen, se, why = _choose_l1(cands, cfg.l1_rule)
    if log and len(cands) > 1:
        log(f"l1 {chosen.l1:g} chosen ({why})")
    n_val = len(splits[0][1]) if not cv else n
    hist = TrainHistory(epochs=list(range(1, len(chosen.curves["val_loss"]) + 1)), **chosen.curves,
                        best_epoch=chosen.best[1], n_pairs=n, n_train=n if cv else len(splits[0][0]), n_val=n_val,
                        stopped_early=chosen.stopped_early, seconds_featurizing=seconds_featurizing,
                        ms_per_crop=1000 * (fz.seconds_embedding - s0) / n_new if n_new else 0.0,
                        validation=what, l1=chosen.l1, l1_rule=cfg.l1_rule, l1_se=se, l1_choice=why,
                        l1_val_loss={f"{c.l1:g}": c.best[0] for c in cands}, label_noise=eps,
                        label_noise_val_loss={f"{e:g}": v for e, v in noise_loss.items()})

    if cv:
        # The final head sees every pair, for the epochs cross-validation chose.
        every = np.arange(n)
        norm, data, _ = _standardised(views, y, every, every[:0], fz, cfg)
        run = _epochs(cfg, chosen.l1, data, None, cfg.seed, chosen.label_noise)
        for _ in range(chosen.best[1]):
            head, _ = next(run)
    else:
        norm, data, _ = prepared[0]
        head = RewardHead(norm.out_dim, cfg.hidden).to(fz.device)
        head.load_state_dict(chosen.best_state)
    head.eval()

    # TRL-style centring (--centring global): an average training crop gets r = 0, i.e. human_score 0.5.
    with torch.no_grad():
        offset = float(torch.cat([head(data.xa[0]), head(data.xb[0])]).mean())
    model = PreferenceRewardModel(fz, norm, head, offset, dataclasses.asdict(cfg), hist.final(), cfg.centring)
    if log:
        f = hist.final()
        log(f"l1 {chosen.l1:g}, {hist.best_epoch} epochs: held-out accuracy {f['val_accuracy']}, "
            f"log-loss {f['val_log_loss']} on {hist.n_val} pairs ({what}); final head trained on "
            f"{hist.n_train} pairs; featurizing {hist.ms_per_crop:.1f} ms/crop")
    return model, hist


def plot_history(hist: TrainHistory, path: str | Path, title: str = "human reward model") -> Path:
    """reward_training.png: BT loss (train, held-out) and held-out accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(hist.epochs, hist.train_loss, label="train")
    if hist.n_val:
        ax1.plot(hist.epochs, hist.val_loss, label=f"held-out ({hist.validation or f'{hist.n_val} pairs'})")
    ax1.axhline(math.log(2), color="grey", ls=":", lw=1, label="chance (ln 2)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("Bradley-Terry log-loss")
    ax1.legend()
    ax2.plot(hist.epochs, hist.train_accuracy, label="train")
    if hist.n_val:
        ax2.plot(hist.epochs, hist.val_accuracy, label="held-out")
    ax2.axhline(0.5, color="grey", ls=":", lw=1)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("pair accuracy (ties excluded)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.axvline(hist.best_epoch, color="k", ls="--", lw=0.8)
    f = hist.final()
    acc = f["val_accuracy"]
    fig.suptitle(f"{title}: l1 {hist.l1:g}, epoch {hist.best_epoch}"
                 + (f", held-out accuracy {acc:.3f}" if acc is not None and not math.isnan(acc) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def history_json(hist: TrainHistory) -> str:
    return json.dumps(dataclasses.asdict(hist), indent=2)
