"""The human reward model: a per-crop score r(x) learned from one person's crop comparisons.

features (what a crop is to the model) -> head (normaliser, head, Bradley-Terry loss) -> model (the
trained r and its file) ; data (answered pairs as examples) -> training (held-out figures, the final
head: by bayes, the evidence-weighted average of models on a few inputs each, or by L1) -> plots.
docs/design.md ("The reward model") gives the formulas and why.
"""

from rlhf.preference.config import CENTRINGS, L1_RULES, SELECTIONS, RewardTrainConfig
from rlhf.preference.data import PreferenceDataError, PreferenceExample, examples_from_pairs, jitter_box
from rlhf.preference.features import (
    HAND_FEATURES,
    SALIENCY_CUES,
    SALIENCY_FEATURES,
    CropFeaturizer,
    Saliency,
    colour_features,
    geometry_features,
    mirror_box,
)
from rlhf.preference.head import FeatureNormaliser, RewardHead, bradley_terry_loss
from rlhf.preference.model import FORMAT_VERSION, PreferenceRewardModel, reference_boxes
from rlhf.preference.plots import history_json, plot_history
from rlhf.preference.training import TrainHistory, train_reward_model

__all__ = [
    "CENTRINGS", "FORMAT_VERSION", "HAND_FEATURES", "L1_RULES", "SALIENCY_CUES", "SALIENCY_FEATURES",
    "CropFeaturizer", "FeatureNormaliser", "PreferenceDataError", "PreferenceExample", "PreferenceRewardModel",
    "RewardHead", "RewardTrainConfig", "SELECTIONS", "Saliency", "TrainHistory", "bradley_terry_loss", "colour_features",
    "examples_from_pairs", "geometry_features", "history_json", "jitter_box", "mirror_box", "plot_history",
    "reference_boxes", "train_reward_model",
]
