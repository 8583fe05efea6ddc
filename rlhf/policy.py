"""The crop policy: a small two-tower CNN RLModule for RLlib (PPO, APPO, DQN), and loading it for inference.

The photo thumbnail and the crop thumbnail go through one shared conv tower (the same features
for "what is in the scene" and "what is in my crop"), are concatenated with the box (and, when the
env gives them, the frozen Lite0 features of crop and photo through one shared projection), and feed
a policy head (14 action logits) and a value head. uint8 observations are cast inside the module
(RLlib's catalog CNN fails on uint8, see NOTES), which keeps sample batches 4x smaller.

APPO also needs a target copy of the policy path (TargetNetworkAPI: its "old policy"), made only in
its learner. DQN reads the same head as Q-values (CropQModule), so every checkpoint holds the same
parameters under the same names and ``CropPolicy`` acts greedily on any of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import (
    TARGET_NETWORK_ACTION_DIST_INPUTS,
    InferenceOnlyAPI,
    QNetAPI,
    TargetNetworkAPI,
    ValueFunctionAPI,
)
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from rlhf.candidates import PERTURB, ROLLOUTS, candidate_boxes
from rlhf.env import LOOKAHEAD

MODULE_SUBDIR = Path("learner_group") / "learner" / "rl_module" / "default_policy"
# What stage 3's --freeze keeps fixed, as CropPolicyModule's top-level parts: "features" the observation
# encoders (conv tower, Lite0 projection), "trunk" everything but the policy and value heads.
FROZEN_PARTS: dict[str, tuple[str, ...]] = {"none": (), "features": ("tower", "feat_proj"),
                                            "trunk": ("tower", "feat_proj", "trunk")}


def _conv_tower(in_size: int, in_channels: int, channels: list[int]) -> tuple[nn.Sequential, int]:
    # A 4x4 stride-4 "patchify" first layer: a thumbnail needs no full-resolution features, and it
    # makes the tower ~6x cheaper, which is most of a PPO update's cost on a CPU.
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 4, stride=4), nn.ReLU()]
    c_in, size = channels[0], in_size // 4
    for c in channels[1:]:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
        c_in, size = c, (size + 1) // 2
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
    return nn.Sequential(*layers), c_in * 16


class CropPolicyModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """model_config keys: channels (conv widths, default [32, 64, 64]), embed (128), hidden (256),
    lookahead (False; True when the env shows each move's change of the objective: see below),
    lookahead_gain (10.0, its starting value)."""

    def setup(self) -> None:
        obs = self.observation_space
        size, _, in_channels = obs["photo"].shape
        channels = list(self.model_config.get("channels", [32, 64, 64]))
        embed = int(self.model_config.get("embed", 128))
        hidden = int(self.model_config.get("hidden", 256))
        tower, flat = _conv_tower(size, in_channels, channels)
        self.tower = nn.Sequential(tower, nn.Linear(flat, embed), nn.ReLU())
        box_dim = obs["box"].shape[0]
        feat_dim = 0
        if "feat" in obs.spaces:
            # Pretrained features of the crop and of the photo (CropEnv features="lite0"): one shared
            # projection for both halves, as the conv tower is shared by both thumbnails.
            self.feat_proj = nn.Sequential(nn.Linear(obs["feat"].shape[0] // 2, embed), nn.ReLU())
            feat_dim = 2 * embed
        self.trunk = nn.Sequential(nn.Linear(2 * embed + box_dim + feat_dim, hidden), nn.ReLU())
        self.pi = nn.Linear(hidden, self.action_space.n)
        self.vf = nn.Linear(hidden, 1)
        # Small initial logits: a near-uniform first policy explores every action.
        nn.init.orthogonal_(self.pi.weight, 0.01)
        nn.init.zeros_(self.pi.bias)
        if self.model_config.get("lookahead", False):
            # Each move's logit also gets gain x the change of the objective the env shows for it
            # (CropEnv lookahead): a policy that starts near greedy on its objective and learns, through
            # the gain and the trunk, when not to be. The same gain carries to stage 3, where the shown
            # change includes the person's reward model: taste moves the policy on photos it never saw.
            self.ahead_gain = nn.Parameter(torch.tensor(float(self.model_config.get("lookahead_gain", 10.0))))

    def _policy_path(self) -> nn.ModuleDict:
        """The layers the action logits come from, in a fresh container (not a submodule of this one, so
        the state dict keeps its names); the lookahead gain in a holder a target copy can carry."""
        parts = nn.ModuleDict({name: getattr(self, name) for name in ("tower", "feat_proj", "trunk", "pi")
                               if hasattr(self, name)})
        if hasattr(self, "ahead_gain"):
            holder = nn.Module()
            holder.register_parameter("value", self.ahead_gain)
            parts["ahead_gain"] = holder
        return parts

    def _embed(self, batch: dict[str, Any], net: nn.Module | None = None) -> torch.Tensor:
        net = self if net is None else net
        obs = batch[Columns.OBS]
        photo, crop = obs["photo"], obs["crop"]
        n = photo.shape[0]
        images = torch.cat([photo, crop], 0).permute(0, 3, 1, 2).float().div_(255.0)
        feats = net.tower(images)
        parts = [feats[:n], feats[n:], obs["box"].float()]
        if "feat" in obs:
            f = obs["feat"].float()
            half = f.shape[1] // 2
            parts += [net.feat_proj(f[:, :half]), net.feat_proj(f[:, half:])]
        return net.trunk(torch.cat(parts, 1))

    def _logits(self, batch: dict[str, Any], h: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        logits = (self if net is None else net).pi(h)
        if hasattr(self, "ahead_gain"):
            gain = self.ahead_gain if net is None else net["ahead_gain"].value
            # The lookahead cues end the box vector, one per move (every action but STOP, action 0).
            ahead = batch[Columns.OBS]["box"][:, -LOOKAHEAD:].float() - 0.5
            logits = logits + torch.cat([torch.zeros_like(ahead[:, :1]), gain * ahead], 1)
        return logits

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self._logits(batch, self._embed(batch))}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        h = self._embed(batch)
        return {Columns.ACTION_DIST_INPUTS: self._logits(batch, h), Columns.EMBEDDINGS: h}

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self._embed(batch)
        return self.vf(embeddings).squeeze(-1)

    def make_target_networks(self) -> None:
        # Called by the learners of APPO and DQN only, so a PPO module and every env runner's have none.
        self._target = make_target_network(self._policy_path())

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self._policy_path(), self._target)]

    def _target_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._logits(batch, self._embed(batch, self._target), self._target)

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._target_logits(batch)}

    def get_non_inference_attributes(self) -> list[str]:
        return ["_target"]  # env runners act without it, and the weights pushed to them leave it out


class CropQModule(CropPolicyModule, QNetAPI):
    """CropPolicyModule for DQN: the policy head's outputs (lookahead included) are the moves' Q-values.

    The same parameters as CropPolicyModule (the value head unused), so acting greedily on the outputs
    (``CropPolicy``) takes the best move either way. Explores epsilon-greedily with model_config's
    ``epsilon`` (RLlib's schedule: a value or [[step, value], ...]).
    """

    def setup(self) -> None:
        from ray.rllib.utils.schedules.scheduler import Scheduler

        super().setup()
        self.uses_double_q = bool(self.model_config.get("double_q", True))
        self.epsilon_schedule = Scheduler(fixed_value_or_schedule=self.model_config.get("epsilon", 0.05),
                                          framework="torch")

    def compute_q_values(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {QF_PREDS: self._logits(batch, self._embed(batch))}

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {QF_PREDS: self._target_logits(batch)}

    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        q = self._logits(batch, self._embed(batch))
        return {Columns.ACTION_DIST_INPUTS: q, Columns.ACTIONS: torch.argmax(q, -1)}

    def _forward_exploration(self, batch: dict[str, Any], t: int = 0, **kwargs) -> dict[str, Any]:
        out = self._forward_inference(batch)
        greedy = out[Columns.ACTIONS]
        self.epsilon_schedule.update(t)
        explore = torch.rand(greedy.shape, device=greedy.device) < self.epsilon_schedule.get_current_value()
        random = torch.randint_like(greedy, self.action_space.n)
        return {Columns.ACTIONS: torch.where(explore, random, greedy)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        obs, next_obs = batch[Columns.OBS], batch[Columns.NEXT_OBS]
        out = {}
        if self.uses_double_q:
            # One pass over this and the next observations: double Q picks the next move with the online net.
            both = {Columns.OBS: {k: torch.cat([obs[k], next_obs[k]], 0) for k in obs}}
            out[QF_PREDS], out[QF_NEXT_PREDS] = torch.chunk(self.compute_q_values(both)[QF_PREDS], 2, 0)
        else:
            out[QF_PREDS] = self.compute_q_values(batch)[QF_PREDS]
        out[QF_TARGET_NEXT_PREDS] = self.forward_target({Columns.OBS: next_obs})[QF_PREDS]
        return out


def latest_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its newest checkpoint) or a checkpoint folder itself."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such policy checkpoint or run folder")
    if (p / MODULE_SUBDIR).exists() or (p / "module_state.pt").exists() or (p / "module_state.pkl").exists():
        return p
    candidates = sorted((p / "checkpoints").glob("ckpt_*")) if (p / "checkpoints").is_dir() else []
    candidates = [c for c in candidates if (c / MODULE_SUBDIR).exists()]
    if not candidates:
        raise FileNotFoundError(f"{path}: holds no RLlib checkpoint (expected checkpoints/ckpt_*/ or a checkpoint)")
    return candidates[-1]


def run_folder_of(ckpt: Path) -> Path | None:
    """The run folder that holds a checkpoint (for its config.json), if any."""
    for parent in (ckpt, *ckpt.parents):
        if (parent / "config.json").is_file():
            return parent
    return None


class PolicyMismatchError(ValueError):
    """A checkpoint whose observations differ from what this version's CropEnv produces."""


def _shapes(space) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in getattr(space, "spaces", {}).items()}


def check_observation_space(module: TorchRLModule, env_config: dict[str, Any], source: Path) -> None:
    """Fail with a clear message, not a matrix-shape error mid-rollout, on a policy from another version."""
    from rlhf.env import observation_space

    want = _shapes(observation_space(env_config.get("obs_size", 64), bool(env_config.get("box_mask", False)),
                                     env_config.get("features", "none"), bool(env_config.get("colour_cues", False)),
                                     bool(env_config.get("lookahead", False))))
    got = _shapes(module.observation_space)
    if got != want:
        raise PolicyMismatchError(
            f"{source}: this policy observes {got}, but this version's crop environment gives {want} "
            f"(a checkpoint from an older version of rlhf-photographer?): train it again with stage 1")


@dataclass(frozen=True)
class KeptFloor:
    """A floor under a fine-tuned policy's greedy crops: each keeps ``share`` of the aesthetic score of
    ``reference``'s (its bootstrap's) greedy crop of the same photo, cropped while the env pays ``reward_fn``
    (the reward the reference was trained on)."""

    reference: CropPolicy
    share: float

    @cached_property
    def reward_fn(self) -> Any:
        """The reference's own reward, built at the first crop (its scorer takes a second or two to build,
        which a command that only checks the policy at start-up need not pay)."""
        return _own_reward(self.reference)


@dataclass
class Steering:
    """How a steered policy (``CropPolicy.steered``) crops: the best of ``reference``'s candidate crops
    (rlhf.candidates, ``rollouts`` samples) by the steering reward, among those whose aesthetic score keeps
    ``photo_min_kept`` of the floor crop's: ``anchor``'s greedy crop (a fine-tuned policy's bootstrap), else
    ``reference``'s own; the floor crop is always a candidate. ``indifferent``: the reward model found no
    taste, so the floor crop stays."""

    reference: CropPolicy
    anchor: CropPolicy | None
    photo_min_kept: float
    rollouts: int
    indifferent: bool

    @cached_property
    def reward_fn(self) -> Any:
        """The reference's own reward, which its lookahead observes while it samples the candidates."""
        return _own_reward(self.reference)

    @cached_property
    def anchor_reward_fn(self) -> Any:
        return _own_reward(self.anchor)


def _own_reward(policy: CropPolicy | None) -> Any:
    """The reward a policy was trained on, built in this process: a lookahead policy crops as it was trained
    only while it observes that reward."""
    from rlhf.reward import build_reward

    return build_reward({**((policy.reward if policy else None) or {}), "service": None})


class CropPolicy:
    """A trained policy, loaded without Ray, that crops photos greedily (or by sampling)."""

    def __init__(self, module: TorchRLModule, env_config: dict[str, Any], source: Path,
                 reward: dict[str, Any] | None = None, floor: KeptFloor | None = None,
                 bootstrap: str | None = None, steering: Steering | None = None):
        self.module = module.eval()
        self.env_config = env_config
        self.source = source
        self.reward = reward  # the RewardSpec it was trained on (a lookahead policy observes it)
        self.bootstrap = bootstrap  # the policy stage 3 fine-tuned this one from (None: not fine-tuned)
        self.floor = floor  # the per-photo floor on a fine-tuned policy's greedy crops (floored())
        self.steering = steering  # a reward model's choice among its candidate crops (steered())
        self.fallbacks = 0  # greedy crops that are the reference policy's own (a floor's, or the steering's)
        self.backoffs = 0  # greedy crops the floor cropped again at a lower weight
        self.last_weight = 0.0  # the human score's weight in the last greedy crop (0: the reference's crop)

    @property
    def fallback(self) -> str:
        """What a crop counted in ``fallbacks`` is: "bootstrap_crop" (a fine-tuned policy's bootstrap's crop) or
        "unsteered" (a steered bootstrap's own greedy crop); the crop journal's key for it."""
        return "unsteered" if self.steering is not None and self.steering.anchor is None else "bootstrap_crop"

    @classmethod
    def load(cls, path: str | Path) -> CropPolicy:
        from ray.rllib.core.rl_module.rl_module import RLModule

        ckpt = latest_checkpoint(path)
        module_dir = ckpt / MODULE_SUBDIR if (ckpt / MODULE_SUBDIR).exists() else ckpt
        module = RLModule.from_checkpoint(str(module_dir.resolve()))
        run = run_folder_of(ckpt)
        config: dict[str, Any] = json.loads((run / "config.json").read_text()) if run is not None else {}
        env_config = config.get("env", {})
        check_observation_space(module, env_config, ckpt)
        return cls(module, env_config, ckpt, config.get("reward"), bootstrap=(config.get("stage3") or {}).get("policy"))

    def steered(self, human_reward_model: str | Path, w_human: float = 1.0, photo_min_kept: float = 0.0,
                rollouts: int = ROLLOUTS) -> CropPolicy:
        """This policy with a person's reward model choosing its crops: the few-pairs path on the bootstrap,
        and how a fine-tuned policy crops for the person whose reward model it was fine-tuned on.

        Each photo's crop is the best of this policy's candidate crops (rlhf.candidates: its greedy crop,
        ``rollouts`` sampled episodes, perturbations of them) by ``(1 - w_human) * (score - 1) / 9 + w_human *
        P(preferred to the floor crop)`` (the reward model's prediction of the person's choice,
        ``PreferenceRewardModel.preference``; the aesthetic score by this policy's own scorer), among the
        candidates whose aesthetic score keeps ``photo_min_kept`` of the floor crop's: the greedy crop of the
        bootstrap a fine-tuned policy started from, else this policy's own. The floor crop is a candidate too,
        so no crop keeps less. Why choose among samples rather than steer the lookahead: a policy's samples
        already hold crops a taste prefers on almost every photo, and picking among them lets the reward model
        decide outright, where a lookahead steered by a reward model learnt from a few dozen answers moved too
        little; stage 3 moves the samples towards the taste, and choosing among them adds to it
        (docs/experiments.md). The candidates are drawn from a seed of the photo's content, so a photo always
        gets the same crop. Sampled episodes (``deterministic=False``) are this policy's own: the reward model
        chooses among crops, not how they are sampled.
        """
        from rlhf.reward import COMBINED, RewardSpec, build_reward

        if not self.reward:
            raise ValueError(f"{self.source}: its run folder's config.json names no reward, so the reward model's "
                             "score cannot be weighed against its aesthetic score")
        if not 0.0 <= w_human <= 1.0:
            raise ValueError(f"--w_human must be in [0, 1], got {w_human}")
        if not 0.0 <= photo_min_kept <= 1.0:
            raise ValueError(f"--photo_min_kept must be in [0, 1], got {photo_min_kept}")
        if rollouts < 1:
            raise ValueError(f"rollouts must be >= 1, got {rollouts}")
        spec = RewardSpec(**{**self.reward, "kind": COMBINED, "service": None,
                             "human_reward_model": str(Path(human_reward_model).expanduser().resolve()),
                             "w_nima": 1.0 - w_human, "w_human": w_human})
        # Loads the reward model now: a bad file fails here, with its reason, not mid-crop.
        indifferent = bool(build_reward(spec).human.indifferent)
        reference = CropPolicy(self.module, self.env_config, self.source, self.reward, None, self.bootstrap)
        anchor = self._bootstrap_policy() if self.bootstrap and photo_min_kept > 0 else None
        steering = Steering(reference, anchor, float(photo_min_kept), int(rollouts), indifferent)
        return CropPolicy(self.module, self.env_config, self.source, spec.to_dict(), None, self.bootstrap, steering)

    def floored(self, photo_min_kept: float) -> CropPolicy:
        """This fine-tuned policy with a floor on each greedy crop: its bootstrap crops the photo too, and where
        this policy's crop scores below ``photo_min_kept`` of that crop's aesthetic score, the photo is cropped
        again with its lookahead shown the human score at the next lower weight of
        ``rlhf.reward.STEER_WEIGHTS`` (``backoffs``), down to the bootstrap's crop (``fallbacks``). So every
        crop keeps that share of its own photo's score, which stage 3's constraint holds only on average over
        its training photos, and a photo where the taste costs too much keeps as much of it as the floor
        allows. One bootstrap episode more per photo, one per step backed off. A policy that was not
        fine-tuned (no bootstrap in its run's config), or ``photo_min_kept`` 0, is returned as it is.
        """
        if not 0.0 <= photo_min_kept <= 1.0:
            raise ValueError(f"--photo_min_kept must be in [0, 1], got {photo_min_kept}")
        if not self.bootstrap or photo_min_kept == 0:
            return self
        floor = KeptFloor(self._bootstrap_policy(), float(photo_min_kept))
        return CropPolicy(self.module, self.env_config, self.source, self.reward, floor, self.bootstrap)

    def _bootstrap_policy(self) -> CropPolicy:
        """The policy stage 3 fine-tuned this one from, whose crops the per-photo floor compares with."""
        try:
            bootstrap = CropPolicy.load(self.bootstrap)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.source} was fine-tuned from {self.bootstrap}, whose crops its per-photo "
                                    f"floor needs ({e}); give --photo_min_kept 0 to crop without the floor") from e
        if _shapes(bootstrap.module.observation_space) != _shapes(self.module.observation_space):
            raise PolicyMismatchError(f"{self.source}: its bootstrap {self.bootstrap} observes other inputs, so it "
                                      "cannot crop beside it; give --photo_min_kept 0 to crop without the floor")
        return bootstrap

    @torch.inference_mode()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True,
            rng: np.random.Generator | None = None) -> int:
        batch = {Columns.OBS: {k: torch.from_numpy(np.asarray(v)[None]) for k, v in obs.items()}}
        logits = self.module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS][0]
        if deterministic:
            return int(torch.argmax(logits))
        p = torch.softmax(logits.double(), 0).numpy()
        return int((rng or np.random.default_rng()).choice(len(p), p=p / p.sum()))

    def rollout(self, env, photo_index: int, deterministic: bool = True,
                rng: np.random.Generator | None = None) -> list[tuple[int, int, int, int]]:
        """Run one episode on env.photos[photo_index]; the boxes visited, first to last.

        A steered policy's greedy episode is the whole photo, then its chosen candidate (``steered``). A policy
        with a floor (``floored(photo_min_kept)``) holds each greedy crop to photo_min_kept of its bootstrap's
        greedy crop's aesthetic score: below it, the episode of the highest lower human weight whose crop keeps
        it, else the bootstrap's episode.
        """
        from rlhf.reward import AESTHETIC, COMBINED, STEER_WEIGHTS, Recombined, RewardSpec

        if self.steering is not None:
            return self._chosen(env, photo_index, deterministic, rng)
        boxes = self._episode(env, photo_index, deterministic, rng)
        self.last_weight = float(self.reward["w_human"]) if (self.reward or {}).get("kind") == COMBINED else 0.0
        if self.floor is None or not deterministic:
            return boxes

        own_fn, photo, floor = env.reward_fn, env.photos[photo_index], self.floor

        def aesthetic(episode: list) -> float:  # 1-10, by the scorer the reference observes
            return float(floor.reward_fn.terms(photo, [episode[-1]])[AESTHETIC][0])

        try:
            # The reference observing the reward it was trained on: its own greedy crop.
            env.reward_fn = floor.reward_fn
            base = floor.reference._episode(env, photo_index, deterministic, rng)
            need = floor.share * aesthetic(base)
            top = self.last_weight
            for w in [top] + sorted((v for v in STEER_WEIGHTS if v < top), reverse=True):
                if w < top:  # backing off: the same terms, scored once, mixed at the lower weight
                    env.reward_fn = Recombined(own_fn, replace(RewardSpec(**self.reward), w_nima=1.0 - w, w_human=w))
                    boxes = self._episode(env, photo_index, deterministic, rng)
                if aesthetic(boxes) >= need:
                    self.last_weight, self.backoffs = w, self.backoffs + (w < top)
                    return boxes
        finally:
            env.reward_fn = own_fn
        self.fallbacks += 1
        self.last_weight = 0.0
        return base

    def _chosen(self, env, photo_index: int, deterministic: bool,
                rng: np.random.Generator | None) -> list[tuple[int, int, int, int]]:
        """A steered policy's episode: the whole photo, then the chosen candidate (see ``steered``)."""
        from rlhf.reward import AESTHETIC, HUMAN, RewardSpec, combine

        steering, own_fn, photo = self.steering, env.reward_fn, env.photos[photo_index]
        try:
            env.reward_fn = steering.reward_fn  # each policy observes the reward it was trained on
            if not deterministic:
                return steering.reference._episode(env, photo_index, False, rng)
            floor_crop = []  # a fine-tuned policy's floor: its bootstrap's greedy crop, itself a candidate
            if steering.anchor is not None:
                env.reward_fn = steering.anchor_reward_fn
                floor_crop = [tuple(steering.anchor._episode(env, photo_index, True, rng)[-1])]
                env.reward_fn = steering.reward_fn
            if steering.indifferent:  # no taste to choose by: the floor crop, else the policy's own
                boxes = floor_crop or [tuple(steering.reference._episode(env, photo_index, True, rng)[-1])]
            else:
                seeded = np.random.default_rng(int(photo.digest(), 16))
                found = candidate_boxes(steering.reference, env, photo_index, steering.rollouts, PERTURB, seeded,
                                        float(env.cfg.min_area))
                boxes = floor_crop + [c.box for c in found if c.box not in floor_crop]
        finally:
            env.reward_fn = own_fn
        pick = 0
        if len(boxes) > 1:
            model = getattr(own_fn, "human", None)
            if model is None:
                terms = own_fn.terms(photo, boxes)
                aesthetic, human = np.asarray(terms[AESTHETIC], dtype=np.float64), terms[HUMAN]
            else:  # the human term: the chance the person prefers each candidate to the floor crop
                aesthetic = np.asarray(own_fn.scorer.score_boxes(photo, boxes), dtype=np.float64)
                human = model.preference(photo, boxes, [boxes[0]] * len(boxes))
            value = combine(aesthetic, human, RewardSpec(**self.reward))
            keeps = aesthetic >= steering.photo_min_kept * aesthetic[0]
            pick = int(np.argmax(np.where(keeps, value, -np.inf)))  # the floor crop (0) on a tie
        self.fallbacks += pick == 0
        self.last_weight = float(self.reward["w_human"]) if pick else 0.0
        return [photo.full_box, boxes[pick]]

    def _episode(self, env, photo_index: int, deterministic: bool,
                 rng: np.random.Generator | None) -> list[tuple[int, int, int, int]]:
        obs, info = env.reset(options={"photo_index": photo_index})
        boxes = [tuple(info["box"])]
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(self.act(obs, deterministic, rng))
            boxes.append(tuple(info["box"]))
            done = term or trunc
        return boxes
