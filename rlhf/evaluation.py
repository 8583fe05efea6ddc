"""Evaluating crop policies on photos: aesthetic score, human score, agreement with held-out answers.

Used by `photographer evaluate` (rayjobs/evaluate.py), the personalization benchmark and the Tune
sweep of the reward weights. The signatures of ``evaluate_policy``, ``PolicyEval`` and
``preference_agreement`` are a seam: keep them stable.

Definitions (what the numbers in a report mean):

- **aesthetic**: the aesthetic scorer's 1-10 score of the policy's greedy crop of each photo;
  ``aesthetic_mean`` is its mean over the photos.
- **human**: the human reward model's ``human_score`` (sigmoid of the centred reward, in [0, 1],
  0.5 for an average training crop) of the same crop; ``human_mean`` its mean. None without a model.
- **agreement**: over held-out answered pairs on photos the policy cropped, ties (preference 0)
  excluded, the fraction where the policy's crop is nearer (higher IoU) to the preferred crop of
  the pair than to the other one; a pair where both IoUs are equal counts half. 0.5 is chance
  for a policy that ignores the person's taste. None when no pair qualifies.
- **aesthetic kept**: ``aesthetic_mean`` of a policy over that of a reference policy (the first one
  compared, e.g. the bootstrap) on the same photos, both on the 1-10 scale; stage 3 holds it at or
  above ``--min_kept`` on its training photos (rlhf.kept).
- **reward-model accuracy**: over the same kind of pairs (any photo), the fraction where the reward
  model ranks the preferred crop higher (equal rewards count half). None without model or pairs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rlhf.boxstats import box_iou
from rlhf.images import Box, Photo, image_size
from rlhf.pairs import A_BETTER, B_BETTER


def photo_key(path_or_id: str) -> str:
    """A photo's id as a comparable key: pairs store normalised paths, photos resolved ones."""
    return os.path.realpath(path_or_id)


def _decided(pairs: Iterable[Any]) -> list[Any]:
    """Answered pairs with a strict preference (A or B better); ties and unanswered dropped."""
    return [p for p in pairs if p.preference in (A_BETTER, B_BETTER)]


def agreement_counts(policy_boxes_by_photo: Mapping[str, Sequence[int]], pairs: Iterable[Any]
                     ) -> tuple[float, int]:
    """(agreeing pairs, with halves for equal IoU; pairs counted) — see ``preference_agreement``."""
    boxes = {photo_key(k): v for k, v in policy_boxes_by_photo.items()}
    score, n = 0.0, 0
    for p in _decided(pairs):
        box = boxes.get(photo_key(p.image))
        if box is None:
            continue
        preferred, other = (p.crop_a, p.crop_b) if p.preference == A_BETTER else (p.crop_b, p.crop_a)
        near_pref, near_other = box_iou(box, preferred), box_iou(box, other)
        score += 1.0 if near_pref > near_other else 0.5 if near_pref == near_other else 0.0
        n += 1
    return score, n


def preference_agreement(policy_boxes_by_photo: Mapping[str, Sequence[int]], pairs: Iterable[Any]) -> float:
    """How often the policy's crop sides with the person's held-out answers.

    ``policy_boxes_by_photo``: photo id (absolute path) -> the policy's box on that photo.
    ``pairs``: ``rlhf.pairs.Pair`` objects (image = absolute path, preference 0/1/2/None).
    For each pair with preference 1 or 2 on a photo the policy cropped, the policy agrees when its
    box has a higher IoU with the preferred crop than with the other; equal IoUs count half.
    Returns the fraction in [0, 1], or NaN when no pair qualifies.
    """
    score, n = agreement_counts(policy_boxes_by_photo, pairs)
    return score / n if n else float("nan")


def _photos_for(pairs: Sequence[Any], photos: Mapping[str, Photo] | None) -> dict[str, Photo]:
    known = {photo_key(k): v for k, v in (photos or {}).items()}
    out: dict[str, Photo] = {}
    for p in pairs:
        key = photo_key(p.image)
        if key not in out:
            out[key] = known.get(key) or Photo(key, path=p.image, size=image_size(p.image))
    return out


def reward_model_accuracy(reward_model: Any, pairs: Iterable[Any],
                          photos: Mapping[str, Photo] | None = None) -> tuple[float, int]:
    """(held-out pair accuracy of the reward model, pairs counted); ties excluded, NaN if none.

    The model is right on a pair when it predicts the preferred crop: P(preferred better) > 1/2 by its
    ``preference`` (a PreferenceRewardModel's posterior predictive), else by the higher ``reward``; an even
    prediction counts half. Photos come from ``photos`` (id -> Photo) or are loaded from the pairs' paths.
    """
    decided = _decided(pairs)
    if not decided:
        return float("nan"), 0
    by_photo = _photos_for(decided, photos)
    grouped: dict[str, list[Any]] = {}
    for p in decided:
        grouped.setdefault(photo_key(p.image), []).append(p)
    score = 0.0
    for key, group in grouped.items():
        a, b = [p.crop_a for p in group], [p.crop_b for p in group]
        if hasattr(reward_model, "preference"):
            lead = np.asarray(reward_model.preference(by_photo[key], a, b), dtype=np.float64) - 0.5
        else:
            r = np.asarray(reward_model.reward(by_photo[key], [*a, *b]), dtype=np.float64)
            lead = r[:len(a)] - r[len(a):]
        for p, v in zip(group, lead, strict=True):
            v = v if p.preference == A_BETTER else -v
            score += 1.0 if v > 0 else 0.5 if v == 0 else 0.0
    return score / len(decided), len(decided)


def _no_reward(photo: Photo, boxes: Sequence[Box]) -> np.ndarray:
    return np.zeros(len(boxes))


# Env settings that shape training only: evaluation starts every episode from the whole photo.
TRAINING_ONLY_ENV_KEYS = ("images", "augment_variants", "random_start", "reward")


def policy_env(policy: Any, photos: Sequence[Photo]):
    """The crop env a policy was trained in (its grid, thumbnails, aspect lock) over ``photos``.

    It pays nothing (evaluation scores only the final crop), unless the policy observes what each
    move pays (``lookahead``): then it scores with the policy's own reward, in process.
    """
    from rlhf.env import CropEnv

    cfg = {k: v for k, v in policy.env_config.items() if k not in TRAINING_ONLY_ENV_KEYS}
    return CropEnv(cfg, reward_fn=policy_reward(policy) if cfg.get("lookahead") else _no_reward,
                   photos=list(photos))


def policy_reward(policy: Any):
    """The reward a policy was trained on, scored in this process (not through a scoring actor)."""
    from rlhf.reward import build_reward

    spec = getattr(policy, "reward", None)
    if not spec:
        raise ValueError(f"{policy.source}: a lookahead policy needs the reward it was trained on, but its run "
                         "folder's config.json names none")
    # Inference's photo cache, not training's: a bench holds 300+ photos, at ~20 MB of context each.
    return build_reward({**spec, "service": None})


def policy_boxes(policy: Any, photos: Sequence[Photo], deterministic: bool = True,
                 seed: int = 0) -> tuple[list[Box], float]:
    """The policy's final box for each photo, and the mean seconds per photo (after a warm-up)."""
    env = policy_env(policy, photos)
    rng = np.random.default_rng(seed)
    counts = policy.fallbacks, policy.backoffs
    policy.rollout(env, 0, deterministic, rng)  # the first forward pass is slow; keep it out of timing
    policy.fallbacks, policy.backoffs = counts  # and out of the counts: photo 0 is cropped again below
    t0 = time.perf_counter()
    boxes = [tuple(int(v) for v in policy.rollout(env, i, deterministic, rng)[-1]) for i in range(len(photos))]
    return boxes, (time.perf_counter() - t0) / max(1, len(photos))


def _mean(values: Iterable[float]) -> float:
    v = list(values)
    return float(np.mean(v)) if v else float("nan")


@dataclass
class PolicyEval:
    """One policy on one set of photos. Dicts are keyed by photo id, in the order of ``photo_ids``.

    ``human``/``human_mean`` are None without a reward model; ``agreement`` is None without
    held-out pairs on these photos; ``reward_model_accuracy`` is None unless both were given.
    """

    name: str
    source: str
    photo_ids: list[str]
    boxes: dict[str, Box]
    aesthetic: dict[str, float]
    whole_photo_aesthetic: dict[str, float]
    aesthetic_mean: float
    whole_photo_aesthetic_mean: float
    human: dict[str, float] | None = None
    human_mean: float | None = None
    agreement: float | None = None
    agreement_pairs: int = 0
    reward_model_accuracy: float | None = None
    reward_model_pairs: int = 0
    ms_per_photo: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["boxes"] = {k: list(v) for k, v in self.boxes.items()}
        return _finite(d)


def _finite(o: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(o, float):
        return None if math.isnan(o) else o
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def evaluate_policy(policy: Any, photos: Sequence[Photo], scorer: Any, reward_model: Any = None,
                    pairs: Sequence[Any] | None = None, name: str | None = None,
                    deterministic: bool = True, seed: int = 0,
                    boxes: Sequence[Box] | None = None) -> PolicyEval:
    """Crop every photo with the policy and score the crops.

    policy: a ``rlhf.policy.CropPolicy`` (or anything with ``env_config`` and ``rollout``).
    photos: the (unseen) photos; scorer: an ``AestheticScorer`` (``score_boxes`` on the 1-10 scale).
    reward_model: a ``PreferenceRewardModel`` for the human score (optional).
    pairs: held-out answered ``Pair`` objects for agreement (and the reward model's accuracy).
    boxes: the policy's boxes when already known (skips the rollouts).
    """
    if not photos:
        raise ValueError("evaluate_policy needs at least one photo")
    if boxes is None:
        boxes, sec = policy_boxes(policy, photos, deterministic, seed)
    else:
        if len(boxes) != len(photos):
            raise ValueError(f"got {len(boxes)} boxes for {len(photos)} photos")
        boxes, sec = [tuple(int(v) for v in b) for b in boxes], 0.0
    ids = [p.id for p in photos]
    by_id = dict(zip(ids, boxes, strict=True))
    aesthetic, whole = {}, {}
    for photo, box in zip(photos, boxes, strict=True):
        s = np.asarray(scorer.score_boxes(photo, [box, photo.full_box]), dtype=np.float64)
        aesthetic[photo.id], whole[photo.id] = float(s[0]), float(s[1])
    human = None
    if reward_model is not None:
        human = {p.id: float(reward_model.human_score(p, [b])[0]) for p, b in zip(photos, boxes, strict=True)}
    result = PolicyEval(
        name=name or str(getattr(policy, "source", "policy")), source=str(getattr(policy, "source", "")),
        photo_ids=ids, boxes=by_id, aesthetic=aesthetic, whole_photo_aesthetic=whole,
        aesthetic_mean=_mean(aesthetic.values()), whole_photo_aesthetic_mean=_mean(whole.values()),
        human=human, human_mean=_mean(human.values()) if human is not None else None,
        ms_per_photo=1000 * sec)
    if pairs:
        score, n = agreement_counts(by_id, pairs)
        result.agreement, result.agreement_pairs = (score / n if n else None), n
        if reward_model is not None:
            acc, m = reward_model_accuracy(reward_model, pairs, {p.id: p for p in photos})
            result.reward_model_accuracy, result.reward_model_pairs = (acc if m else None), m
    return result


def aesthetic_kept(policy: PolicyEval, reference: PolicyEval) -> float:
    """The share of `reference`'s aesthetic score `policy` keeps: the ratio of their mean aesthetic scores
    (1-10) on the same photos; 1.0 for the reference itself, NaN if its mean is not positive."""
    if policy.photo_ids != reference.photo_ids:
        raise ValueError(f"aesthetic kept compares crops of the same photos: {policy.name} and {reference.name} "
                         "were evaluated on different ones")
    return policy.aesthetic_mean / reference.aesthetic_mean if reference.aesthetic_mean > 0 else float("nan")
