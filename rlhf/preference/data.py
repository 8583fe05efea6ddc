"""Answered pairs as training examples, and their raw features (with box jitter)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhf.boxstats import box_iou
from rlhf.images import Box, Photo, clip_box
from rlhf.preference.features import CropFeaturizer


class PreferenceDataError(ValueError):
    """Preference data that cannot train a model; the message names the file and the problem."""


@dataclass
class PreferenceExample:
    """One comparison ready to train on: y = 1 (A better), 0 (B better), 0.5 (no preference)."""

    pair_id: str
    photo: Photo
    box_a: Box
    box_b: Box
    y: float


def examples_from_pairs(pairs: Sequence[Any], source: str | Path = "<pairs>") -> list[PreferenceExample]:
    """Answered pairs (rlhf.pairs.Pair) -> examples; each photo is read once, as its context.

    Photos are read lazily (Photo.from_path); each one's context (rlhf.context), which the features
    come from, is built or read here, so a file that cannot be decoded fails now. Unanswered pairs are
    skipped. A photo that cannot be loaded, or a box outside its photo, raises PreferenceDataError
    naming the preference file, the pair and the problem.
    """
    from rlhf.context import context_of
    from rlhf.images import ImageLoadError

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
                photo = Photo.from_path(p.image)
                context_of(photo)
                photos[p.image] = photo
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


def pair_features(fz: CropFeaturizer, examples: Sequence[PreferenceExample], mirrored: bool = False,
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

