"""SIMULATED annotators: stand-ins for a person with a known, named taste.

They exist to test the personalization loop end to end (pairs -> reward model -> fine-tuning)
against a ground truth, and are labelled as simulated wherever they appear: their names start
with ``simulated:`` (e.g. ``simulated:tight``), and that name is what the store records.

A taste is a utility of (photo, box). The annotator compares the utilities of crops A and B:
1 if A is higher, 2 if B is, 0 when they are within the taste's margin. With probability
``noise`` the answer is flipped (1 <-> 2; a 0 becomes 1 or 2 at random), so the rate of answers
that differ from the noiseless annotator is ``noise`` itself.

Every taste is learnable by a reward model that sees the crop's pixels and its geometry in the
photo (position, size, aspect ratio), and both crops of a pair come from the same photo, so
per-photo constants cancel:
- ``tight``: the smallest crop holding 70% of the photo's salient mass: utility = -(area share)
  - 4 x (salient share missing below 70%). Cutting the subject shows in the crop's pixels (a
  subject running off its edges), its size in the geometry. (Among random pairs it often prefers
  the larger crop, because small random crops miss the subject; its best crops are tight.)
- ``left_third``: the crop's own salient centroid close to its left third line (x = 1/3).
- ``warm``: mean (R - B) of the crop's pixels.
- ``wide``: the crop's area share of the photo.
Saliency is OpenCV's spectral residual (``cv2.saliency``), a cheap subject proxy, kept only where
it exceeds its 70th percentile so the mass sits on the subject rather than on texture everywhere.
Utilities come from integral images at <= 256 px: an answer costs about 40 us after a
per-photo set-up of about a millisecond.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from rlhf.boxstats import box_sums, moment_sat, spectral_residual, summed_area
from rlhf.context import PhotoContext, context_of
from rlhf.images import Box, Photo, clip_box, fingerprint, photo_id
from rlhf.pairs import A_BETTER, B_BETTER, NO_PREFERENCE, Pair
from rlhf.store import PreferenceStore

SIMULATED_PREFIX = "simulated:"
FEATURE_SIDE = 256  # the features' longest side; finer than any margin a taste uses
SALIENCY_PERCENTILE = 70.0
# tight: a crop holds the subject when it holds this share of the salient mass; each unit of share
# missing costs 4 units of area share, so cutting the subject never pays for the area it saves.
TIGHT_SUBJECT_SHARE = 0.7
TIGHT_CUT_COST = 4.0


class PhotoFeatures:
    """Summed-area tables of a photo's saliency (with its moments) and of R - B, at <= 256 px."""

    def __init__(self, ctx: PhotoContext):
        self.width, self.height = ctx.width, ctx.height
        # By the pixels, not the file: the same photo in memory or on disk gets the same answers.
        self.fingerprint = fingerprint(ctx.work)
        s = min(1.0, FEATURE_SIDE / max(self.width, self.height))
        w, h = max(8, round(self.width * s)), max(8, round(self.height * s))
        small = cv2.resize(ctx.work, (w, h), interpolation=cv2.INTER_AREA)
        self.sx, self.sy = w / self.width, h / self.height
        m = spectral_residual(small, blur_sigma=2.0)
        if m is None:
            raise RuntimeError(f"photo {ctx.digest}: OpenCV saliency failed")
        sal = m.astype(np.float64)
        sal = np.maximum(sal - np.percentile(sal, SALIENCY_PERCENTILE), 0.0)
        if sal.sum() <= 0:  # a flat photo: every pixel equally (un)interesting
            sal = np.ones_like(sal)
        sal /= sal.sum()
        warmth = (small[..., 0].astype(np.float64) - small[..., 2].astype(np.float64)) / 255.0
        self._sal = moment_sat(sal)  # mass, mass * x, mass * y
        self._warm = summed_area(warmth)

    def _small_box(self, box: Sequence[float]) -> tuple[int, int, int, int]:
        l, t, r, b = clip_box(box, self.width, self.height)
        h, w = self._sal.shape[-2] - 1, self._sal.shape[-1] - 1
        sl, st = min(int(l * self.sx), w - 1), min(int(t * self.sy), h - 1)
        sr, sb = max(sl + 1, min(w, round(r * self.sx))), max(st + 1, min(h, round(b * self.sy)))
        return sl, st, sr, sb

    def area_share(self, box: Sequence[float]) -> float:
        l, t, r, b = clip_box(box, self.width, self.height)
        return (r - l) * (b - t) / (self.width * self.height)

    def salient_mass(self, box: Sequence[float]) -> float:
        """Share of the photo's salient mass inside the box (0..1)."""
        return float(box_sums(self._sal[0], *self._small_box(box)))

    def salient_centroid_x(self, box: Sequence[float]) -> float:
        """Salient centroid across the box, 0 = left edge, 1 = right edge (0.5 with no mass)."""
        sb = self._small_box(box)
        m, mx, _ = box_sums(self._sal, *sb)
        if m < 1e-9:
            return 0.5
        return float((mx / m - sb[0]) / (sb[2] - sb[0]))

    def warmth(self, box: Sequence[float]) -> float:
        """Mean (R - B) / 255 over the box."""
        sb = self._small_box(box)
        return float(box_sums(self._warm, *sb)) / ((sb[2] - sb[0]) * (sb[3] - sb[1]))


@dataclass(frozen=True)
class Taste:
    """A named preference: utility(features, box), and the margin below which it has none."""

    name: str
    description: str
    utility: Callable[[PhotoFeatures, Box], float] = field(repr=False)
    margin: float


TASTES: dict[str, Taste] = {t.name: t for t in (
    Taste("tight", "smaller crops that still hold the salient subject",
          lambda f, b: -f.area_share(b) - TIGHT_CUT_COST * max(0.0, TIGHT_SUBJECT_SHARE - f.salient_mass(b)),
          margin=0.01),
    Taste("left_third", "the subject on the crop's left third line",
          lambda f, b: -abs(f.salient_centroid_x(b) - 1.0 / 3.0), margin=0.01),
    Taste("warm", "warmer colour (more red than blue)",
          lambda f, b: f.warmth(b), margin=0.004),
    Taste("wide", "larger crops", lambda f, b: f.area_share(b), margin=0.01),
)}


def _flip(answer: int, rng: np.random.Generator) -> int:
    if answer == A_BETTER:
        return B_BETTER
    if answer == B_BETTER:
        return A_BETTER
    return int(rng.choice([A_BETTER, B_BETTER]))


def check_tastes(names: Iterable[str]) -> None:
    """Fail fast, naming the choices, when any of `names` is not a simulated taste (the benches' --tastes)."""
    unknown = [t for t in names if t not in TASTES]
    if unknown:
        raise ValueError(f"unknown taste(s) {unknown}; choose from {sorted(TASTES)}")


class SimulatedAnnotator:
    """A SIMULATED annotator with one taste; deterministic per (seed, photo, A, B)."""

    def __init__(self, taste: str, noise: float = 0.1, seed: int = 0, name: str | None = None):
        if taste not in TASTES:
            raise ValueError(f"unknown taste {taste!r}; choose from {sorted(TASTES)}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise!r}")
        self.taste = TASTES[taste]
        self.noise = float(noise)
        self.seed = int(seed)
        self.name = name or f"{SIMULATED_PREFIX}{taste}"
        if not self.name.startswith(SIMULATED_PREFIX):
            raise ValueError(f"a simulated annotator's name must start with {SIMULATED_PREFIX!r} so "
                             f"its answers are never mistaken for a person's, got {self.name!r}")

    def __repr__(self) -> str:
        return f"SimulatedAnnotator(SIMULATED {self.name!r}, noise={self.noise}, seed={self.seed})"

    def features(self, photo: Photo) -> PhotoFeatures:
        """The photo's tables, kept with its context (rlhf.context)."""
        return context_of(photo).derived("simulated", PhotoFeatures)

    def utility(self, photo: Photo, box: Sequence[float]) -> float:
        return float(self.taste.utility(self.features(photo), clip_box(box, photo.width, photo.height)))

    def true_choice(self, photo: Photo, box_a: Sequence[float], box_b: Sequence[float]) -> int:
        """The noiseless answer."""
        d = self.utility(photo, box_a) - self.utility(photo, box_b)
        if abs(d) < self.taste.margin:
            return NO_PREFERENCE
        return A_BETTER if d > 0 else B_BETTER

    def choose(self, photo: Photo, box_a: Sequence[float], box_b: Sequence[float]) -> int:
        """1 (A better), 2 (B better) or 0; flipped with probability ``noise``."""
        answer = self.true_choice(photo, box_a, box_b)
        # The noise draw depends on what is compared, not on call order: any subset of pairs,
        # in any order, in any process, gets the same answers.
        key = json.dumps([self.seed, self.taste.name, self.features(photo).fingerprint,
                          [int(round(v)) for v in box_a], [int(round(v)) for v in box_b]])
        rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(),
                                                   "little"))
        return _flip(answer, rng) if rng.random() < self.noise else answer

    def annotate_pairs(self, pairs: Iterable[Pair],
                       photos_by_path: Mapping[str, Photo] | None = None) -> list[Pair]:
        """Copies of the pairs with ``preference`` set; photos not in the mapping are loaded."""
        lookup = _PhotoLookup(photos_by_path)
        return [replace(p, preference=self.choose(lookup(p.image), p.crop_a, p.crop_b), extra=dict(p.extra))
                for p in pairs]

    def annotate_store(self, store: PreferenceStore,
                       photos: Mapping[str, Photo] | Iterable[Photo] | None = None,
                       batch: int = 256) -> int:
        """Answer every pair this annotator has not answered yet; returns how many were answered."""
        lookup = _PhotoLookup(photos)
        todo = store.pairs(answered=False, annotator=self.name)
        for i in range(0, len(todo), batch):
            store.answer_many([(p.id, self.name, self.choose(lookup(p.image), p.crop_a, p.crop_b), None)
                               for p in todo[i:i + batch]])
        return len(todo)


def vote(annotator: SimulatedAnnotator, photo: Photo, new: Sequence[float], old: Sequence[float]) -> float:
    """The annotator's noiseless verdict on a new crop of a photo against an old one: 1 if it prefers
    the new, 0 if the old, 0.5 for no preference (within its taste's margin)."""
    return {A_BETTER: 1.0, B_BETTER: 0.0}.get(annotator.true_choice(photo, new, old), 0.5)


def preferred_rate(annotator: SimulatedAnnotator, photos: Sequence[Photo], before: Mapping[str, Sequence[float]],
                   after: Mapping[str, Sequence[float]]) -> float:
    """The share of `photos` where the annotator's noiseless taste prefers the `after` crop to the
    `before` crop (boxes by photo id), no preference counting half (see `vote`); nan for no photos."""
    votes = [vote(annotator, p, after[p.id], before[p.id]) for p in photos]
    return sum(votes) / len(votes) if votes else math.nan


class _PhotoLookup:
    """Photos by path: given ones first (by path as written or resolved), else loaded once."""

    def __init__(self, photos: Mapping[str, Photo] | Iterable[Photo] | None):
        if photos is None:
            self._by: dict[str, Photo] = {}
        elif isinstance(photos, Mapping):
            self._by = dict(photos)
        else:
            self._by = {p.id: p for p in photos}

    def __call__(self, path: str) -> Photo:
        photo = self._by.get(path)
        if photo is None:
            pid = photo_id(path)
            photo = self._by.get(pid)
            if photo is None:
                photo = self._by[pid] = Photo.from_path(path)
            self._by[path] = photo
        return photo


@dataclass
class SimulateConfig:
    """Answer a store's pairs with a SIMULATED annotator (for testing the loop, never as a person)."""

    store: str = field(default="", metadata={"help": "preference store (.sqlite) whose pairs to answer"})
    taste: str = field(default="tight", metadata={"help": "the simulated taste",
                                                  "choices": sorted(TASTES)})
    noise: float = field(default=0.1, metadata={"help": "probability of flipping an answer"})
    seed: int = field(default=0, metadata={"help": "seed of the noise"})

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("--store is required")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"--noise must be in [0, 1], got {self.noise}")


def main(argv: list[str] | None = None) -> int:
    """`photographer simulate --store S --taste T`: fill a store with SIMULATED answers.

    Bad input raises ValueError/FileNotFoundError naming the file or flag."""
    from rlhf.config import add_dataclass_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="photographer simulate", description=SimulateConfig.__doc__)
    add_dataclass_arguments(parser, SimulateConfig)
    cfg = config_from_args(SimulateConfig, parser.parse_args(argv))
    if not Path(cfg.store).is_file():
        raise FileNotFoundError(f"{cfg.store}: no such store")
    ann = SimulatedAnnotator(cfg.taste, cfg.noise, cfg.seed)
    n = ann.annotate_store(PreferenceStore(cfg.store))
    print(f"SIMULATED annotator {ann.name} (noise {cfg.noise}, seed {cfg.seed}) answered {n} pairs in "
          f"{cfg.store}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
