"""The RL algorithms a training run can use (``--algo``), each as an RLlib config of the same crop env
and the same policy module (rlhf.policy), built from one PPOSettings.

- ppo (default): synchronous PPO. Each iteration waits for every env runner's batch.
- appo: asynchronous PPO (IMPALA's V-trace with PPO's clipped objective). The learner trains on
  whatever batches are ready, so a slow env runner never holds it up: the choice for many env runners.
- dqn: off-policy Q-learning from a replay buffer (double Q, target network), the policy head read as
  the moves' Q-values. RLlib's new API stack runs SAC for continuous actions only (its new-stack
  module and learner take a Box action space), and TD3 likewise, so DQN is the off-policy learner for
  this env's 14 discrete moves.

The settings map onto each algorithm where it has the same knob: --train_batch_size is the env steps
of one iteration for all three (PPO's batch, APPO's learner batch; DQN samples that many steps per
iteration), --minibatch_size is DQN's replay batch, and --num_epochs DQN's replay ratio (each sampled
step is trained on that many times on average, as PPO's epochs reuse it). gamma, lr (and its
schedules) and seed apply to all; the clip, entropy and value-loss settings to PPO and APPO; lambda_
to PPO only (APPO's V-trace has no GAE).

Stage 3's reference KL (--ref_kl) is a term of the policy's loss, so PPO and APPO have it and DQN
refuses it; --freeze works for all three (it only chooses which weights get an optimizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.appo import APPOConfig
from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rlhf.env import CropEnv
from rlhf.kept import KEPT, KeptCropEnv
from rlhf.policy import FROZEN_PARTS, MODULE_SUBDIR, CropPolicyModule, CropQModule, latest_checkpoint

if TYPE_CHECKING:
    from rayjobs.training import PPOSettings

ALGOS = ("ppo", "appo", "dqn")
POLICY_GRADIENT = ("ppo", "appo")  # the algorithms whose head holds action logits (DQN's: Q-values)


class CropMetrics(RLlibCallback):
    """Logs the score of each episode's final crop, the number that matters to a user."""

    def on_episode_end(self, *, episode, prev_episode_chunks=None, metrics_logger=None, **kwargs) -> None:
        infos = episode.get_infos()
        # An episode that spans sampling calls arrives in chunks: its first info is in the first chunk.
        first = prev_episode_chunks[0].get_infos()[0] if prev_episode_chunks else (infos[0] if len(infos) else None)
        if metrics_logger is None or first is None or first.get("random_start"):
            return  # exploring starts are training aids; report what inference sees (whole-photo starts)
        metrics_logger.log_value("final_score", float(infos[-1]["score"]), reduce="mean", window=100)
        metrics_logger.log_value("start_score", float(first["score"]), reduce="mean", window=100)


class CropLearnerMixin:
    """What every algorithm's learner adds to RLlib's: --freeze, and (policy-gradient learners only)
    ``ref_kl * KL(pi || pi_ref)`` to a frozen reference policy (stage 3: the bootstrap).

    RLHF fine-tuning (InstructGPT, TRL) keeps the tuned policy near where it started, so it moves only
    where the learned reward pays for the move: a reward model fitted on 100 pairs is right near the
    crops it was shown and can be exploited far from them. The KL is exact over the discrete actions,
    averaged over the batch's states, and logged as ``ref_kl`` (progress.csv). RLlib's own
    ``use_kl_loss`` is a different term: a KL to the policy that sampled the batch.
    """

    def build(self) -> None:
        super().build()
        cfg = self.config.learner_config_dict
        self._ref_coeff = float(cfg.get("ref_kl", 0.0))
        self._ref = None
        if self._ref_coeff > 0:
            from ray.rllib.core.rl_module.rl_module import RLModule

            self._ref = RLModule.from_checkpoint(cfg["ref_module"]).to(self._device).eval()
            for p in self._ref.parameters():
                p.requires_grad_(False)

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        # --freeze: the frozen parts get no gradient and no optimizer slot; RLlib's default gives Adam all.
        frozen = FROZEN_PARTS[self.config.learner_config_dict.get("freeze", "none")]
        trainable = []
        for name, p in self._module[module_id].named_parameters():
            if name.split(".")[0] in frozen:
                p.requires_grad_(False)
            else:
                trainable.append(p)
        self.register_optimizer(module_id=module_id, optimizer=torch.optim.Adam(trainable), params=trainable,
                                lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        if self._ref is None:
            return loss
        with torch.no_grad():
            ref_logp = torch.log_softmax(self._ref._forward(batch)[Columns.ACTION_DIST_INPUTS], -1)
        logp = torch.log_softmax(fwd_out[Columns.ACTION_DIST_INPUTS], -1)
        kl = (logp.exp() * (logp - ref_logp)).sum(-1)
        kl = kl[batch[Columns.LOSS_MASK]].mean() if Columns.LOSS_MASK in batch else kl.mean()
        self.metrics.log_value((module_id, "ref_kl"), kl.detach(), window=1)
        return loss + self._ref_coeff * kl


class ReferenceKLLearner(CropLearnerMixin, PPOTorchLearner):
    """PPO's learner with --freeze and --ref_kl (CropLearnerMixin)."""


class APPOCropLearner(CropLearnerMixin, APPOTorchLearner):
    """APPO's learner with --freeze and --ref_kl (CropLearnerMixin)."""


class DQNCropLearner(CropLearnerMixin, DQNTorchLearner):
    """DQN's learner with --freeze (build_config refuses --ref_kl: DQN has no policy loss to add it to)."""


def _gpu_here() -> bool:
    """Whether a learner inside this process may use a GPU.

    An actor (a Tune trial) may use only the GPUs Ray assigned to it; a driver (laptop, workstation,
    a job submitted with --entrypoint-num-gpus) any GPU it sees.
    """
    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        return bool(ray.get_gpu_ids())
    return torch.cuda.is_available()


def check_algo(algo: str, ref_kl: float = 0.0) -> None:
    """Fail before any work on an unknown algorithm or one without the reference KL."""
    if algo not in ALGOS:
        raise ValueError(f"--algo must be one of {list(ALGOS)}, got {algo!r}")
    if ref_kl > 0 and algo not in POLICY_GRADIENT:
        raise ValueError(f"--ref_kl is a KL term of a policy loss, which {algo} has not: use --algo "
                         f"{' or '.join(POLICY_GRADIENT)}, or --ref_kl 0")


def check_init_policy(algo: str, policy: str | Path) -> None:
    """Stage 3 continues the bootstrap's head as it is: action logits (PPO, APPO) or Q-values (DQN) cannot
    be read as the other, so a start from a policy of the other kind fails here, with what to do."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    src = latest_checkpoint(policy) / MODULE_SUBDIR
    q_policy = isinstance(RLModule.from_checkpoint(str(src.resolve())), CropQModule)
    if q_policy != (algo == "dqn"):
        trained = "dqn" if q_policy else "ppo or appo"
        want = "dqn" if q_policy else "ppo or appo"
        raise ValueError(f"{policy}: this policy was trained with {trained} (its head holds "
                         f"{'Q-values' if q_policy else 'action logits'}), which --algo {algo} cannot continue: "
                         f"use --algo {want}, or bootstrap a policy with --algo {algo}")


def _base(algo: str, ppo: PPOSettings) -> tuple[AlgorithmConfig, type]:
    """The algorithm's own part of the config: its class, learner and the settings it reads."""
    lr = ppo.lr_schedule()
    if algo == "ppo":
        return PPOConfig().training(
            lr=lr, gamma=ppo.gamma, lambda_=ppo.lambda_, train_batch_size_per_learner=ppo.train_batch_size,
            minibatch_size=ppo.minibatch_size, num_epochs=ppo.num_epochs, clip_param=ppo.clip_param,
            entropy_coeff=ppo.schedule(ppo.entropy_coeff, ppo.entropy_coeff_final),
            vf_loss_coeff=ppo.vf_loss_coeff).env_runners(rollout_fragment_length="auto"), ReferenceKLLearner
    if algo == "appo":
        # One iteration samples --train_batch_size steps (RLlib's default is at least 10 s of them), and the
        # learner trains in this process unless a GPU is elsewhere (RLlib's default is one remote learner).
        return APPOConfig().training(
            lr=lr, gamma=ppo.gamma, train_batch_size_per_learner=ppo.train_batch_size, num_epochs=1,
            clip_param=ppo.clip_param, entropy_coeff=ppo.schedule(ppo.entropy_coeff, ppo.entropy_coeff_final),
            vf_loss_coeff=ppo.vf_loss_coeff).reporting(
            min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=ppo.train_batch_size), APPOCropLearner
    # DQN: epsilon from 1 to 0.05 over the first half of the run, learning from the second iteration on;
    # fragments of 32 steps per env (RLlib's default, n_step = 1, asks the env runners for every step).
    steps = max(1, ppo.timesteps // 2)
    return DQNConfig().env_runners(rollout_fragment_length=32).training(
        lr=lr, gamma=ppo.gamma, train_batch_size_per_learner=ppo.minibatch_size,
        training_intensity=float(ppo.num_epochs), num_steps_sampled_before_learning_starts=ppo.train_batch_size,
        target_network_update_freq=ppo.train_batch_size, double_q=True, dueling=False, n_step=1,
        epsilon=[[0, 1.0], [steps, 0.05]],
        replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 50000, "alpha": 0.6,
                              "beta": 0.4}).reporting(
        min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=ppo.train_batch_size), DQNCropLearner


def build_config(ppo: PPOSettings, env_config: dict[str, Any], ref_policy: str | Path | None = None,
                 ref_kl: float = 0.0, freeze: str = "none") -> AlgorithmConfig:
    """RLlib's config of ppo.algo; with ref_kl > 0, a KL penalty to the policy at ref_policy (CropLearnerMixin);
    `freeze` (a FROZEN_PARTS key) trains only the rest of the module."""
    check_algo(ppo.algo, ref_kl)
    gpus = ppo.num_gpus_per_learner
    if gpus < 0:
        gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    # The GPU is elsewhere (a job driver on a CPU head node): run the learner as one remote actor,
    # which Ray places on a GPU node. Otherwise it lives in this process, as on a laptop.
    learners = 1 if gpus > 0 and not _gpu_here() else 0
    if ref_kl < 0 or (ref_kl > 0 and ref_policy is None):
        raise ValueError(f"ref_kl must be >= 0 and needs a reference policy, got ref_kl={ref_kl}, ref_policy={ref_policy}")
    if freeze not in FROZEN_PARTS:
        raise ValueError(f"freeze must be one of {sorted(FROZEN_PARTS)}, got {freeze!r}")
    ref_module = str((latest_checkpoint(ref_policy) / MODULE_SUBDIR).resolve()) if ref_kl > 0 else None
    config, learner = _base(ppo.algo, ppo)
    module = CropQModule if ppo.algo == "dqn" else CropPolicyModule
    return (
        config
        .environment(KeptCropEnv if env_config.get(KEPT) else CropEnv, env_config=env_config)
        .env_runners(num_env_runners=ppo.num_env_runners, num_envs_per_env_runner=ppo.num_envs_per_env_runner,
                     sample_timeout_s=ppo.sample_timeout_s)
        .learners(num_learners=learners, num_gpus_per_learner=gpus, learner_class=learner,
                  learner_config_dict={"ref_kl": ref_kl, "ref_module": ref_module, "freeze": freeze})
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module,
                                               model_config={"lookahead": bool(env_config.get("lookahead"))}))
        .callbacks(CropMetrics)
        .debugging(seed=ppo.seed)
        .reporting(metrics_num_episodes_for_smoothing=100)
    )
