"""The product keeps the aesthetic score by itself: stage 3 by a Lagrange multiplier on "keep >= min_kept
of it", and each crop by a floor: the few-pairs path chooses only among candidate crops that keep
photo_min_kept of the unsteered crop's score (``CropPolicy.steered``), a fine-tuned policy's crop backs its
human weight off against its bootstrap's crop (``CropPolicy.floored``): stage 3's constraint holds on
average over its training photos, the floor on each photo the person crops.

A taste that pulls against the aesthetic score (a tight crop, a subject on the left third) can cost
more of it than the fixed weights w_nima / w_human foresee, and how much depends on the taste. So,
as constrained RL does (RCPO, Tessler et al. 2019; PPO-Lagrangian, Ray et al. 2019), stage 3 treats
"keep at least min_kept of the bootstrap's aesthetic score" as a constraint whose weight adapts:

    reward = (w_nima + lam) * a + w_human * h, rescaled to the weights' sum    (rlhf.reward.with_multiplier)
    kept   = sum of the final crops' aesthetic scores / sum of the bootstrap's  (one iteration's episodes)
    lam   <- max(0, lam + kept_lr * (min_kept - kept))                           after every iteration

lam stays 0 while stage 3 keeps enough, so then the reward is the plain weighted sum. Each checkpoint
writes the weights with its lam into the run's config.json ("reward"): a lookahead policy observes what
each move pays, so at inference it must be shown the reward it was trained on last.

- The reference is the bootstrap policy's greedy crop of each training photo and framing, scored
  once when stage 3 starts (``reference_scores``): the crops `photographer evaluate` compares
  against. A greedy rollout per photo is cheap (the photo contexts are computed for training anyway),
  whereas rolling the bootstrap beside every episode would double the sampling.
- Scores are on the scorer's 1-10 scale, as ``rlhf.evaluation.aesthetic_kept`` reports the kept share.
- Only episodes that start from the whole photo count: inference starts there, and an exploring start
  (random_start) begins wherever chance put it.
- Training episodes sample their actions while the reference is greedy; sampling loses a little of
  the score, so the constraint binds slightly before the greedy crops fall to min_kept: on the safe side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlhf.env import CropEnv, CropEnvConfig
from rlhf.reward import AESTHETIC, COMBINED, Recombined, RewardSpec, with_multiplier

# The share of the aesthetic score the product keeps by default: stage 3's constraint.
MIN_KEPT = 0.95
# The floor on each photo: a steered crop is chosen only among candidates keeping this share of the photo's
# unsteered crop's score (CropPolicy.steered); a fine-tuned policy's crop keeping less of its bootstrap's
# crop's score is cropped again at lower weights, down to the bootstrap's crop (CropPolicy.floored). At
# MIN_KEPT itself every crop keeps MIN_KEPT, so any collection does on average.
PHOTO_MIN_KEPT = MIN_KEPT

# The human score's weight when the loop fine-tunes (`round`, bench/pairs_curve): 1, the taste as stage 3's
# objective, with the aesthetic score kept by the multiplier alone (w_nima 0 until it rises); a lower weight
# held stage 3 below its constraint and left kept to spare (docs/experiments.md, 2026-12-05 afternoon).
FINETUNE_W_HUMAN = 1.0

# The env_config key of the constraint: {"reference": {photo id: the bootstrap's greedy crop's aesthetic
# score}, "min_kept": ..., "kept_lr": ...}. The envs read the reference, the training loop the rest.
KEPT = "aesthetic_kept"


def update_multiplier(multiplier: float, kept: float, min_kept: float, kept_lr: float) -> float:
    """The multiplier after an iteration that kept `kept` of the reference: dual gradient ascent on the
    constraint kept >= min_kept, projected on >= 0. NaN `kept` (no episode counted) leaves it."""
    if math.isnan(kept):
        return multiplier
    return max(0.0, multiplier + kept_lr * (min_kept - kept))


class MultiplierReward(Recombined):
    """A combined reward whose aesthetic weight carries the multiplier (``rlhf.reward.with_multiplier``);
    ``base_spec`` holds the weights without it."""

    def __init__(self, base: Any, spec: RewardSpec, multiplier: float = 0.0):
        if spec.kind != COMBINED:
            raise ValueError(f"keeping the aesthetic score needs the combined reward, got {spec.kind!r}")
        super().__init__(base, spec)
        self.base_spec = spec
        self.multiplier = multiplier

    @property
    def multiplier(self) -> float:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self._multiplier, self.spec = float(value), with_multiplier(self.base_spec, float(value))


class KeptCropEnv(CropEnv):
    """CropEnv paid ``MultiplierReward``, counting each whole-photo episode's final aesthetic score
    against the bootstrap's (``take_counts``); the multiplier is set between iterations (``set_multiplier``)."""

    def __init__(self, config: dict[str, Any] | None = None, reward_fn=None, photos=None):
        config = dict(config or {})
        self.reference: dict[str, float] = dict(config.pop(KEPT)["reference"])
        super().__init__(config, reward_fn=reward_fn, photos=photos)
        self.reward_fn = MultiplierReward(self.reward_fn, RewardSpec(**config["reward"]))
        self._counts = [0.0, 0.0, 0]  # sum of final aesthetic scores, of their references, episodes

    def set_multiplier(self, multiplier: float) -> None:
        self.reward_fn.multiplier = float(multiplier)
        if self._context is not None:
            # An episode that spans two iterations goes on under the new objective: its next reward is
            # a change of that objective, not a jump between the old and the new one.
            self._ahead = {}
            self.score = self._score(self.box)

    def take_counts(self) -> tuple[float, float, int]:
        """(final aesthetic sum, reference sum, episodes) since the last call."""
        counts, self._counts = tuple(self._counts), [0.0, 0.0, 0]
        return counts

    def step(self, action: int):
        obs, reward, terminated, truncated, info = super().step(action)
        ref = self.reference.get(self.photo.id)
        if (terminated or truncated) and not self.explored_start and ref is not None:
            final = float(self.reward_fn.terms(self.photo, [self.pixel_box()])[AESTHETIC][0])
            info.update(aesthetic=final, aesthetic_reference=ref)
            self._counts = [self._counts[0] + final, self._counts[1] + ref, self._counts[2] + 1]
        return obs, reward, terminated, truncated, info


def _sub_envs(runner: Any) -> list[KeptCropEnv]:
    """The KeptCropEnvs of an RLlib env runner (a runner that samples nothing has none)."""
    vector = getattr(runner, "env", None)
    if vector is None:
        return []
    return [e.unwrapped for e in getattr(vector.unwrapped, "envs", []) if isinstance(e.unwrapped, KeptCropEnv)]


class KeptConstraint:
    """The training loop's side: counts each iteration's kept share from the env runners and sets the
    multiplier (``of`` an env_config that carries the constraint)."""

    def __init__(self, min_kept: float, kept_lr: float, multiplier: float = 0.0):
        if not 0.0 < min_kept <= 1.0 or kept_lr <= 0 or multiplier < 0:
            raise ValueError(f"need 0 < min_kept <= 1, kept_lr > 0 and multiplier >= 0, got {min_kept}, {kept_lr}, "
                             f"{multiplier}")
        self.min_kept, self.kept_lr, self.multiplier = min_kept, kept_lr, float(multiplier)
        self.kept = float("nan")

    @classmethod
    def of(cls, env_config: dict[str, Any]) -> KeptConstraint | None:
        """The constraint an env_config carries (``KEPT``), or None."""
        kept = env_config.get(KEPT)
        return cls(kept["min_kept"], kept["kept_lr"]) if kept else None

    def push(self, algo: Any) -> None:
        """Every env samples the next iteration with the current multiplier (a restarted runner too)."""
        m = self.multiplier
        algo.env_runner_group.foreach_env_runner(lambda r: [e.set_multiplier(m) for e in _sub_envs(r)],
                                                 local_env_runner=True)

    def update(self, algo: Any) -> dict[str, float]:
        """After an iteration: its kept share and the new multiplier, as progress.csv's columns."""
        counts = algo.env_runner_group.foreach_env_runner(lambda r: [e.take_counts() for e in _sub_envs(r)],
                                                          local_env_runner=True)
        final, ref, n = (sum(c[i] for runner in counts for c in runner) for i in range(3))
        self.kept = final / ref if n and ref > 0 else float("nan")
        self.multiplier = update_multiplier(self.multiplier, self.kept, self.min_kept, self.kept_lr)
        return {"kept": self.kept, "kept_lambda": self.multiplier}

    def record(self, run: Path, reward: dict[str, Any]) -> None:
        """The run's config.json gets `reward` (the spec the run was asked for) weighted with the current
        multiplier, the reward a policy saved now was trained on."""
        path = run / "config.json"
        if path.is_file():
            config = json.loads(path.read_text())
            config["reward"] = with_multiplier(RewardSpec(**reward), self.multiplier).to_dict()
            config["kept_lambda"] = self.multiplier
            path.write_text(json.dumps(config, indent=2, default=str) + "\n")


def reference_scores(policy: str | Path, env_config: dict[str, Any]) -> dict[str, float]:
    """{photo id: aesthetic score (1-10) of the policy's greedy crop} over the photos and framings an env
    of `env_config` trains on, scored by the aesthetic term of env_config's reward."""
    from rlhf.evaluation import policy_boxes
    from rlhf.policy import CropPolicy
    from rlhf.scorers import create_scorer

    settings = {k: v for k, v in env_config.items() if k in CropEnvConfig.__dataclass_fields__}
    photos = CropEnv(settings, reward_fn=lambda p, b: np.zeros(len(b))).photos
    boxes, _ = policy_boxes(CropPolicy.load(policy), photos)
    spec = RewardSpec(**env_config["reward"])
    scorer = create_scorer(spec.scorer, weights=spec.scorer_weights, device=spec.device)
    return {p.id: float(scorer.score_boxes(p, [b])[0]) for p, b in zip(photos, boxes, strict=True)}


@dataclass
class SteeringSettings:
    """How the few-pairs path's reward model chooses crops; every command that steers holds one."""

    w_human: float = field(default=1.0, metadata={
        "help": "the human term's weight when the reward model chooses among the policy's candidate crops (the "
                "aesthetic score's is 1 - w_human; the human term is the reward model's predicted chance that the "
                "person prefers the crop to the policy's own crop, a fine-tuned policy's: its bootstrap's): at 1 "
                "the person's taste alone decides among the crops that keep --photo_min_kept"})
    photo_min_kept: float = field(default=PHOTO_MIN_KEPT, metadata={
        "help": "the share of the aesthetic score of the policy's own crop (of a fine-tuned policy: its bootstrap's "
                "crop) a crop chosen by a reward model must keep: only candidates that keep it are chosen among; "
                "without a reward model a fine-tuned policy's crop keeping less is cropped again at lower human "
                "weights (0.1 steps), down to the bootstrap's crop (an episode more per photo, one per step; "
                "0 = no floor)"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 <= self.w_human <= 1.0:
            raise ValueError(f"--w_human must be in [0, 1], got {self.w_human}")
        if not 0.0 <= self.photo_min_kept <= 1.0:
            raise ValueError(f"--photo_min_kept must be in [0, 1], got {self.photo_min_kept}")
