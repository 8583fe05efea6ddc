"""A policy's candidate crops of a photo: what `pairs` asks about and what the few-pairs path chooses among.

Per photo: the policy's greedy crop (first), the whole photo, the final and a mid-episode box of
``rollouts`` stochastic rollouts (mid-episode boxes are wider: an episode starts from the whole photo),
and two small perturbations (shift + zoom) of each of the policy's final boxes. A policy's samples are
where it thinks good crops lie, so they hold most of what a taste would choose (docs/experiments.md:
with 8 rollouts a taste that knew the candidates would prefer one over the greedy crop on 0.97 of unseen
photos); the perturbations reach the crops a step or two beside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlhf.images import Box, clip_box

ROLLOUTS = 8  # stochastic rollouts per photo (`pairs --rollouts`; the few-pairs path's candidates)
PERTURB = 0.15  # size of the perturbations, a fraction of the box (`pairs --perturb`)


@dataclass(frozen=True)
class Candidate:
    """A candidate crop, with where it came from and its type."""

    box: Box
    source: str
    kind: str


def crop_type(box: Sequence[int], width: int, height: int) -> str:
    """tight (< 45% of the photo), medium or wide (>= 75%); ' off-centre' when its centre is off by > 10%."""
    l, t, r, b = box
    area = (r - l) * (b - t) / (width * height)
    size = "tight" if area < 0.45 else "wide" if area >= 0.75 else "medium"
    off = abs((l + r) / 2 / width - 0.5) > 0.1 or abs((t + b) / 2 / height - 0.5) > 0.1
    return f"{size} off-centre" if off else size


def perturb_box(box: Sequence[int], frac: float, width: int, height: int, rng: np.random.Generator) -> Box:
    """Shift the centre by up to frac of the box's size and zoom by up to exp(+-2 frac)."""
    l, t, r, b = box
    w, h = r - l, b - t
    cx = (l + r) / 2 + rng.uniform(-frac, frac) * w
    cy = (t + b) / 2 + rng.uniform(-frac, frac) * h
    z = math.exp(rng.uniform(-2 * frac, 2 * frac))
    w, h = min(w * z, width), min(h * z, height)
    # Shift back inside the photo rather than clipping, so the zoom keeps the box's shape.
    cx = min(max(cx, w / 2), width - w / 2)
    cy = min(max(cy, h / 2), height - h / 2)
    return clip_box((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), width, height)


def candidate_boxes(policy, env, index: int, rollouts: int, perturb: float, rng: np.random.Generator,
                    min_area: float) -> list[Candidate]:
    """Distinct candidate crops of env.photos[index] from the policy, its greedy crop first (see module doc);
    none smaller than min_area of the photo, the greedy crop always kept."""
    photo = env.photos[index]
    w, h = photo.width, photo.height
    found: dict[Box, str] = {}

    def add(box: Sequence[int], source: str, always: bool = False) -> None:
        box = clip_box(box, w, h)
        if (always or (box[2] - box[0]) * (box[3] - box[1]) >= min_area * w * h) and box not in found:
            found[box] = source

    greedy = policy.rollout(env, index, True, rng)
    add(greedy[-1], "policy", always=True)
    add(photo.full_box, "whole photo")
    policy_boxes = [greedy[-1]]
    for _ in range(rollouts):
        visited = policy.rollout(env, index, False, rng)
        add(visited[-1], "sample")
        policy_boxes.append(visited[-1])
        if len(visited) > 2:
            add(visited[int(rng.integers(1, len(visited) - 1))], "sample (mid-episode)")
    if perturb > 0:
        for box in policy_boxes:
            for _ in range(2):
                add(perturb_box(box, perturb, w, h, rng), "perturbed")
    return [Candidate(b, s, crop_type(b, w, h)) for b, s in found.items()]
