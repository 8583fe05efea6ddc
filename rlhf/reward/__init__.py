"""Rewards: what the crop environment is paid, behind one seam, `reward(photo, boxes) -> np.ndarray`.

spec (kinds, RewardSpec, combine, TermsReward) <- local (models in this process) | rlhf.serving.client
(the shared scoring actor) <- factory (`build_reward` picks one from the spec). The env never knows
which sits behind it.
"""

from rlhf.reward.factory import build_reward
from rlhf.reward.local import LocalReward
from rlhf.reward.spec import (
    AESTHETIC,
    COMBINED,
    HUMAN,
    KINDS,
    STEER_WEIGHTS,
    Recombined,
    RewardSpec,
    TermsReward,
    combine,
    rescale_aesthetic,
    terms_of,
    with_multiplier,
)

__all__ = [
    "AESTHETIC", "COMBINED", "HUMAN", "KINDS", "STEER_WEIGHTS", "LocalReward", "Recombined", "RewardSpec",
    "TermsReward", "build_reward", "combine", "rescale_aesthetic", "terms_of", "with_multiplier",
]
