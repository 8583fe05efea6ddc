"""The reward scored in this process: the models are loaded here (unit tests, `photographer crop`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlhf.images import Box, Photo
from rlhf.reward.spec import AESTHETIC, HUMAN, RewardSpec, TermsReward, terms_of


class LocalReward(TermsReward):
    """`__call__(photo, boxes) -> rewards` with the spec's models loaded in this process."""

    def __init__(self, spec: RewardSpec):
        self.spec = spec
        self.scorer = None
        self.human = None
        terms = terms_of(spec.kind)
        if AESTHETIC in terms:
            from rlhf.scorers import create_scorer  # lazy: no torch at import

            self.scorer = create_scorer(spec.scorer, weights=spec.scorer_weights, device=spec.device)
        if HUMAN in terms:
            from rlhf.preference import PreferenceRewardModel

            self.human = PreferenceRewardModel.load(spec.human_reward_model, device=spec.device)

    def terms(self, photo: Photo, boxes: Sequence[Box]) -> dict[str, np.ndarray]:
        """{term: scores} for the boxes: aesthetic on 1-10, human in [0, 1]."""
        out = {}
        if self.scorer is not None:
            out[AESTHETIC] = self.scorer.score_boxes(photo, boxes)
        if self.human is not None:
            out[HUMAN] = self.human.human_score(photo, boxes)
        return out
