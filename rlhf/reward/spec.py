"""What the crop environment is paid: the reward kinds, their specification and how terms combine.

A reward function maps (photo, boxes) to one float per box, about [0, 1]:

- ``aesthetic``: ``(s - 1) / 9`` where ``s`` is the aesthetic scorer's 1-10 mean score (stage 1).
- ``human``: ``sigmoid(r)`` of the person's preference reward model, centred so an average crop
  gets 0.5 (stage 3's personal term).
- ``combined``: ``w_nima * (s - 1) / 9 + w_human * sigmoid(r)`` (stage 3; default 0.7 / 0.3).

This module sits below both reward implementations (in process: `rlhf.reward.local`; through the
scoring actor: `rlhf.serving.client`), which compute the terms and combine them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

# The reward kinds. AESTHETIC and HUMAN also name the two terms a reward is made of.
AESTHETIC = "aesthetic"
HUMAN = "human"
COMBINED = "combined"
KINDS = (AESTHETIC, HUMAN, COMBINED)

_TERMS = {AESTHETIC: (AESTHETIC,), HUMAN: (HUMAN,), COMBINED: (AESTHETIC, HUMAN)}

# The human score's weights a fine-tuned policy's floor backs off through, photo by photo (CropPolicy.floored).
STEER_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def terms_of(kind: str) -> tuple[str, ...]:
    """The terms a reward of this kind needs: ("aesthetic",), ("human",) or both."""
    return _TERMS[kind]


@dataclass
class RewardSpec:
    """What to pay the policy; a plain dict of this travels in RLlib's env_config."""

    kind: str = field(default=AESTHETIC, metadata={"help": " | ".join(KINDS)})
    scorer: str = field(default="default", metadata={"help": "aesthetic scorer name (see rlhf.scorers)"})
    scorer_weights: str | None = field(default=None, metadata={"help": "local weights file for the scorer"})
    human_reward_model: str | None = field(default=None, metadata={"help": "human_reward_model.pth"})
    w_nima: float = field(default=0.7, metadata={"help": "weight of the aesthetic term"})
    w_human: float = field(default=0.3, metadata={"help": "weight of the human term"})
    service: str | None = field(default=None, metadata={"help": "name of the scoring actor; None = in process"})
    device: str = field(default="cpu", metadata={"help": "torch device for in-process scoring"})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"reward kind must be aesthetic, human or combined, got {self.kind!r}")
        if HUMAN in terms_of(self.kind) and not self.human_reward_model:
            raise ValueError(f"reward kind {self.kind!r} needs human_reward_model")
        if min(self.w_nima, self.w_human) < 0:
            raise ValueError(f"reward weights must be >= 0, got w_nima={self.w_nima}, w_human={self.w_human}")
        if self.kind == COMBINED and self.w_nima + self.w_human <= 0:
            raise ValueError("w_nima + w_human must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rescale_aesthetic(scores: np.ndarray) -> np.ndarray:
    """NIMA's 1-10 scale to [0, 1]."""
    return (np.asarray(scores, dtype=np.float64) - 1.0) / 9.0


def combine(aesthetic: np.ndarray | None, human: np.ndarray | None, spec: RewardSpec) -> np.ndarray:
    """The reward from the two terms (aesthetic on the 1-10 scale, human in [0, 1])."""
    if spec.kind == AESTHETIC:
        return rescale_aesthetic(aesthetic)
    if spec.kind == HUMAN:
        return np.asarray(human, dtype=np.float64)
    return spec.w_nima * rescale_aesthetic(aesthetic) + spec.w_human * np.asarray(human, dtype=np.float64)


def with_multiplier(spec: RewardSpec, multiplier: float) -> RewardSpec:
    """The combined reward with a Lagrange multiplier of "keep the aesthetic score" (rlhf.kept) added to
    its aesthetic weight, ``(w_nima + m) * a + w_human * h``, rescaled by ``(w_nima + w_human) / (w_nima +
    m + w_human)``: the mix moves towards the aesthetic term while the reward's scale, which PPO's learning
    rate, entropy bonus and value targets were set for, stays put. As weights, so a policy that observes
    what each move pays (lookahead) can be given the same reward at inference."""
    if not multiplier:
        return spec
    total = spec.w_nima + spec.w_human
    return replace(spec, w_nima=total * (spec.w_nima + multiplier) / (total + multiplier),
                   w_human=total * spec.w_human / (total + multiplier))


class TermsReward:
    """A reward function made of terms: ``terms(photo, boxes)`` gives {term: scores} (aesthetic on 1-10,
    human in [0, 1]) and calling it combines them under ``self.spec``. Every reward the env is paid with
    (in process, through the scoring actor, recombined) is one, so the terms combine in one place."""

    spec: RewardSpec

    def terms(self, photo: Any, boxes: Sequence[Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, photo: Any, boxes: Sequence[Any]) -> np.ndarray:
        t = self.terms(photo, boxes)
        return combine(t.get(AESTHETIC), t.get(HUMAN), self.spec)


class Recombined(TermsReward):
    """A reward's terms combined under other weights: ``base.terms`` (aesthetic, human) mixed by ``spec``.

    Why: trying a reward at several weights (the few-pairs path backing off on one photo, stage 3's
    multiplier) loads no model twice, and every weight shares the base's scoring caches."""

    def __init__(self, base: TermsReward, spec: RewardSpec):
        self.base, self.spec = base, spec

    def terms(self, photo: Any, boxes: Sequence[Any]) -> dict[str, np.ndarray]:
        return self.base.terms(photo, boxes)
