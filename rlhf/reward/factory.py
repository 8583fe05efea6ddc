"""`build_reward`: a reward function from its spec, in process or through the scoring actor."""

from __future__ import annotations

import json
import threading
from typing import Any

from rlhf.reward.local import LocalReward
from rlhf.reward.spec import RewardSpec

# One LocalReward per spec per process. An RLlib env runner steps several envs
# (num_envs_per_env_runner), each building its reward from the same spec: sharing loads the models
# once and keeps one set of photo contexts (about 20 MB each for the proxy scorer) instead of one per env.
_LOCAL: dict[str, LocalReward] = {}
_LOCAL_LOCK = threading.Lock()


def build_reward(spec: dict[str, Any] | RewardSpec, training: bool = True):
    """A reward function from its spec (a RewardSpec or its dict, so RLlib env runners build their own).

    Through the scoring actor when ``spec.service`` names one (rlhf.serving.client.ServiceReward),
    else a LocalReward shared by every env of this process that asks for the same spec and `training`
    (see LocalReward; default True).
    """
    spec = spec if isinstance(spec, RewardSpec) else RewardSpec(**spec)
    if spec.service:
        from rlhf.serving.client import ServiceReward  # lazy: Ray only when a service is named

        return ServiceReward(spec)
    key = json.dumps({**spec.to_dict(), "training": training}, sort_keys=True)
    with _LOCAL_LOCK:
        if key not in _LOCAL:
            _LOCAL[key] = LocalReward(spec, training)
        return _LOCAL[key]
