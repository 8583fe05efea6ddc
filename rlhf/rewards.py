"""Reward functions: what the crop environment is paid, behind one seam.

A reward function maps (photo, boxes) to one float per box, about [0, 1]:

- ``aesthetic``: ``(s - 1) / 9`` where ``s`` is the aesthetic scorer's 1-10 mean score (stage 1).
- ``human``: ``sigmoid(r)`` of the person's preference reward model, centred so an average crop
  gets 0.5 (stage 3's personal term).
- ``combined``: ``w_nima * (s - 1) / 9 + w_human * sigmoid(r)`` (stage 3; default 0.7 / 0.3).

The env never knows which models sit behind it: ``build_reward(spec)`` builds one from a plain
dict (picklable, so RLlib env runners build their own), scoring in process or through the shared
scoring actor when ``spec["service"]`` names one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rlhf.images import Box, Photo


@dataclass
class RewardSpec:
    """What to pay the policy; a plain dict of this travels in RLlib's env_config."""

    kind: str = field(default="aesthetic", metadata={"help": "aesthetic | human | combined"})
    scorer: str = field(default="default", metadata={"help": "aesthetic scorer name (see rlhf.scorers)"})
    scorer_weights: str | None = field(default=None, metadata={"help": "local weights file for the scorer"})
    human_reward_model: str | None = field(default=None, metadata={"help": "human_reward_model.pth"})
    w_nima: float = field(default=0.7, metadata={"help": "weight of the aesthetic term"})
    w_human: float = field(default=0.3, metadata={"help": "weight of the human term"})
    service: str | None = field(default=None, metadata={"help": "name of the scoring actor; None = in process"})
    device: str = field(default="cpu", metadata={"help": "torch device for in-process scoring"})

    def __post_init__(self) -> None:
        if self.kind not in ("aesthetic", "human", "combined"):
            raise ValueError(f"reward kind must be aesthetic, human or combined, got {self.kind!r}")
        if self.kind in ("human", "combined") and not self.human_reward_model:
            raise ValueError(f"reward kind {self.kind!r} needs human_reward_model")
        if min(self.w_nima, self.w_human) < 0:
            raise ValueError(f"reward weights must be >= 0, got w_nima={self.w_nima}, w_human={self.w_human}")
        if self.kind == "combined" and self.w_nima + self.w_human <= 0:
            raise ValueError("w_nima + w_human must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rescale_aesthetic(scores: np.ndarray) -> np.ndarray:
    """NIMA's 1-10 scale to [0, 1]."""
    return (np.asarray(scores, dtype=np.float64) - 1.0) / 9.0


def combine(aesthetic: np.ndarray | None, human: np.ndarray | None, spec: RewardSpec) -> np.ndarray:
    """The reward from the two terms (aesthetic on the 1-10 scale, human in [0, 1])."""
    if spec.kind == "aesthetic":
        return rescale_aesthetic(aesthetic)
    if spec.kind == "human":
        return np.asarray(human, dtype=np.float64)
    return spec.w_nima * rescale_aesthetic(aesthetic) + spec.w_human * np.asarray(human, dtype=np.float64)


class LocalReward:
    """Scores in this process: the models are loaded here (unit tests, `photographer crop`).

    training: keep photo contexts for a training job's whole collection (see TRAINING_PHOTO_CONTEXTS);
    False keeps the scorer's default, smaller cache (inference goes through photos one at a time).
    """

    def __init__(self, spec: RewardSpec, training: bool = True):
        self.spec = spec
        self.scorer = None
        self.human = None
        if spec.kind in ("aesthetic", "combined"):
            from rlhf.scorers import create_scorer, training_scorer_kwargs

            self.scorer = create_scorer(spec.scorer, weights=spec.scorer_weights, device=spec.device,
                                        **(training_scorer_kwargs(spec.scorer) if training else {}))
        if spec.kind in ("human", "combined"):
            from rlhf.preference import PreferenceRewardModel

            self.human = PreferenceRewardModel.load(spec.human_reward_model, device=spec.device)

    def terms(self, photo: Photo, boxes: Sequence[Box]) -> dict[str, np.ndarray]:
        out = {}
        if self.scorer is not None:
            out["aesthetic"] = self.scorer.score_boxes(photo, boxes)
        if self.human is not None:
            out["human"] = self.human.human_score(photo, boxes)
        return out

    def __call__(self, photo: Photo, boxes: Sequence[Box]) -> np.ndarray:
        t = self.terms(photo, boxes)
        return combine(t.get("aesthetic"), t.get("human"), self.spec)


# One LocalReward per spec per process. An RLlib env runner steps several envs
# (num_envs_per_env_runner), and each builds its reward from the same spec: without sharing, each
# loaded its own models and kept its own photo contexts (~19 MB each for the proxy scorer), so 4 envs
# over 100 training framings held 7.6 GB in one runner and computed every context 4 times.
_LOCAL: dict[str, LocalReward] = {}
_LOCAL_LOCK = threading.Lock()


def build_reward(spec: dict[str, Any] | RewardSpec, training: bool = True):
    """A reward function from its spec: through the scoring actor if one is named, else local
    (shared by every env of this process that asks for the same spec; `training`: see LocalReward)."""
    spec = spec if isinstance(spec, RewardSpec) else RewardSpec(**spec)
    if spec.service:
        from rlhf.scoring_service import ServiceReward

        return ServiceReward(spec)
    key = json.dumps({**spec.to_dict(), "training": training}, sort_keys=True)
    with _LOCAL_LOCK:
        if key not in _LOCAL:
            _LOCAL[key] = LocalReward(spec, training)
        return _LOCAL[key]
