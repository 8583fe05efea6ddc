"""`build_reward`: a reward function from its spec, in process or through the scoring actor."""

from __future__ import annotations

import json
import threading
from typing import Any

from rlhf.reward.local import LocalReward
from rlhf.reward.spec import RewardSpec

# One LocalReward per spec per process. An RLlib env runner steps several envs
# (num_envs_per_env_runner), each building its reward from the same spec: sharing loads the models
# once and derives the per-photo tables once (they are kept with the photo's context, rlhf.context).
_LOCAL: dict[str, LocalReward] = {}
_LOCAL_LOCK = threading.Lock()


def build_reward(spec: dict[str, Any] | RewardSpec):
    """A reward function from its spec (a RewardSpec or its dict, so RLlib env runners build their own).

    Through the scoring actor when ``spec.service`` names one (rlhf.serving.client.ServiceReward),
    else a LocalReward shared by every env of this process that asks for the same spec.
    """
    spec = spec if isinstance(spec, RewardSpec) else RewardSpec(**spec)
    if spec.service:
        from rlhf.serving.client import ServiceReward  # lazy: Ray only when a service is named

        return ServiceReward(spec)
    key = json.dumps(spec.to_dict(), sort_keys=True)
    with _LOCAL_LOCK:
        if key not in _LOCAL:
            _LOCAL[key] = LocalReward(spec)
        return _LOCAL[key]
