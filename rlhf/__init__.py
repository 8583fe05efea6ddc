"""rlhf-photographer's library: photos, scorers, the crop env, the human reward model and the store.

The public API, importable from `rlhf` directly::

    from rlhf import CropEnv, CropEnvConfig, PreferenceStore, create_scorer, train_reward_model

Names resolve lazily (PEP 562), so `import rlhf.pairs` in an env runner or the annotator does not load
torch, timm or Ray through this file; each name lives in the module given below.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # photos
    "Photo": "rlhf.images", "load_image": "rlhf.images", "load_collection": "rlhf.images",
    "bundled_photos": "rlhf.images", "ImageLoadError": "rlhf.images",
    # aesthetic scorers (registry and factory)
    "AestheticScorer": "rlhf.scorers", "create_scorer": "rlhf.scorers", "list_scorers": "rlhf.scorers",
    "register_scorer": "rlhf.scorers",
    # the environment and its rewards
    "CropEnv": "rlhf.env", "CropEnvConfig": "rlhf.env", "Action": "rlhf.env",
    "RewardSpec": "rlhf.reward", "build_reward": "rlhf.reward",
    # the trained policy
    "CropPolicy": "rlhf.policy",
    # the human reward model and its trainer
    "PreferenceRewardModel": "rlhf.preference", "RewardTrainConfig": "rlhf.preference",
    "train_reward_model": "rlhf.preference", "examples_from_pairs": "rlhf.preference",
    # pairs and the preference store
    "Pair": "rlhf.pairs", "load_pairs": "rlhf.pairs", "save_pairs": "rlhf.pairs",
    "PreferenceStore": "rlhf.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
