"""The training loop shared by stage 1 (bootstrap), stage 3 (fine-tune) and Tune's trials.

Read it top to bottom: build the RLlib config of --algo (rayjobs/algorithms.py: PPO, APPO or DQN on
the new API stack, our CNN module, the crop env), optionally start from a policy or resume from the
run's newest checkpoint, then train, printing one line per iteration, appending progress.csv,
checkpointing, and finally plotting curves. A caller that wants each iteration's numbers (a Tune
trial) passes ``on_iteration``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from rayjobs.algorithms import ALGOS, build_config, check_algo, check_init_policy
from rlhf.env import CropEnvConfig
from rlhf.kept import KeptConstraint
from rlhf.policy import MODULE_SUBDIR, latest_checkpoint

STATE_FILE = "photographer_state.json"  # in every checkpoint: its iteration, env steps and kept_lambda
CSV_FIELDS = ["iteration", "timesteps", "episode_return_mean", "final_score_mean", "start_score_mean",
              "episode_len_mean", "policy_entropy", "vf_explained_var", "lr", "entropy_coeff", "ref_kl", "kept",
              "kept_lambda", "trained", "seconds"]


def default_env_runners() -> int:
    """Fits the machine: leave a core for the learner (and the scoring actor), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class PPOSettings:
    """The RL algorithm and its hyperparameters (RLlib names); every training stage holds one."""

    algo: str = field(default="ppo", metadata={
        "help": "RL algorithm: ppo (synchronous) | appo (asynchronous: the learner never waits for a slow env "
                "runner, for many of them) | dqn (off-policy, replay buffer); rayjobs/algorithms.py says which "
                "settings each reads", "choices": list(ALGOS)})
    timesteps: int = field(default=20000, metadata={"help": "env steps to train for (in total, across resumes)"})
    num_env_runners: int = field(default_factory=default_env_runners,
                                 metadata={"help": "parallel env runner actors (0 = sample in the driver)"})
    num_envs_per_env_runner: int = field(default=4, metadata={"help": "envs stepped together in each runner "
                                                              "(one batched policy forward for all)"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate"})
    anneal_lr: bool = field(default=False, metadata={"help": "decay the learning rate linearly to 0 over "
                                                     "--timesteps (CleanRL's --anneal-lr)"})
    lr_warmup_steps: int = field(default=0, metadata={
        "help": "raise the learning rate linearly from 0 over this many env steps first. Adam starts with no "
                "estimate of each weight's gradient scale, so its first steps move every weight by about lr, "
                "whatever its gradient: fine-tuning a trained policy at full lr from the first step can "
                "flatten it at once"})
    gamma: float = field(default=0.99, metadata={"help": "discount; rewards are score changes, so ~1 keeps "
                                                 "the return equal to the final crop's improvement"})
    lambda_: float = field(default=0.9, metadata={"help": "GAE lambda (lower = less variance; the reward is "
                                                 "dense, so short credit assignment suffices)",
                                                 "aliases": ("gae_lambda",)})
    train_batch_size: int = field(default=512, metadata={"help": "env steps per iteration (DQN: sampled per iteration)"})
    minibatch_size: int = field(default=128, metadata={"help": "SGD minibatch size (DQN: replay batch)"})
    num_epochs: int = field(default=4, metadata={"help": "SGD passes over each batch (DQN: times each sampled "
                                                 "step is trained on, on average)"})
    clip_param: float = field(default=0.2, metadata={"help": "PPO ratio clip"})
    entropy_coeff: float = field(default=0.01, metadata={"help": "entropy bonus (exploration)"})
    entropy_coeff_final: float | None = field(default=None, metadata={
        "help": "anneal the entropy bonus linearly from --entropy_coeff to this over --timesteps (None = "
                "constant). Rewards are score changes of a few hundredths per episode, so a constant 0.01 "
                "x entropy (~0.02) rivals the return and keeps the policy near uniform"})
    vf_loss_coeff: float = field(default=0.5, metadata={"help": "value loss weight"})
    seed: int = field(default=0, metadata={"help": "random seed (RLlib, photo order and augmentation)"})
    sample_timeout_s: float = field(default=120.0, metadata={"help": "fail if env runners return nothing "
                                                             "for this long"})
    num_gpus_per_learner: float = field(default=-1, metadata={"help": "GPUs for the learner; -1 = 1 if the "
                                                              "cluster has one, else 0"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_algo(self.algo)
        if self.timesteps <= 0:
            raise ValueError(f"timesteps must be > 0, got {self.timesteps}")
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) > train_batch_size ({self.train_batch_size})")
        if not 0 < self.gamma <= 1 or not 0 <= self.lambda_ <= 1:
            raise ValueError("gamma must be in (0, 1] and lambda_ in [0, 1]")
        if self.num_env_runners < 0:
            raise ValueError("num_env_runners must be >= 0")
        if self.lr_warmup_steps < 0 or (self.anneal_lr and self.lr_warmup_steps >= self.timesteps):
            raise ValueError(f"lr_warmup_steps must be >= 0 (and below --timesteps with --anneal_lr), got "
                             f"{self.lr_warmup_steps} for {self.timesteps} steps")
        if self.lr <= 0 or self.entropy_coeff < 0 or (self.entropy_coeff_final or 0) < 0:
            raise ValueError(f"lr must be > 0 and the entropy coefficients >= 0, got lr={self.lr}, "
                             f"entropy_coeff={self.entropy_coeff}, entropy_coeff_final={self.entropy_coeff_final}")

    def lr_schedule(self) -> float | list[list[float]]:
        """The learning rate: constant, warmed up (--lr_warmup_steps) and/or annealed to 0 (--anneal_lr)."""
        points = [[0, 0.0], [self.lr_warmup_steps, self.lr]] if self.lr_warmup_steps else [[0, self.lr]]
        if self.anneal_lr:
            points.append([self.timesteps, 0.0])
        return points if len(points) > 1 else self.lr

    def schedule(self, start: float, end: float | None) -> float | list[list[float]]:
        """RLlib's piecewise-linear schedule from `start` to `end` over this run's --timesteps."""
        if end is None or end == start:
            return start
        return [[0, start], [self.timesteps, end]]


@dataclass
class CheckpointSettings:
    """How often a run saves its policy, and how many saves it keeps."""

    checkpoint_every: int = field(default=5, metadata={"help": "iterations between checkpoints"})
    keep_checkpoints: int = field(default=3, metadata={"help": "newest checkpoints kept on disk"})

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError(f"checkpoint_every and keep_checkpoints must be >= 1, got {self.checkpoint_every}, "
                             f"{self.keep_checkpoints}")


def _get(result: dict, *keys: str, default: float = float("nan")) -> float:
    for key in keys:
        node: Any = result
        for part in key.split("/"):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            try:
                return float(node)
            except (TypeError, ValueError):
                continue
    return default


# A healthy env runner that returns nothing within sample_timeout_s is slow, not dead (the first
# iteration computes every photo's features, which on a busy small machine can take minutes): it gets
# this many timeouts before the run gives up. A failed (restarted) runner gets one.
SLOW_SAMPLING_PATIENCE = 5


def _runner_failures(algo) -> int:
    group = getattr(algo, "env_runner_group", None)
    if group is None:
        return 0
    return group.num_remote_worker_restarts() + (group.num_remote_workers() - group.num_healthy_remote_workers())


def train_iteration(algo, sample_timeout_s: float) -> tuple[dict, int]:
    """One iteration that trained on samples: (RLlib's result, env steps sampled).

    An iteration that sampled nothing (an env runner died, e.g. killed for memory, and RLlib is
    restarting it; or a slow one returned nothing in time) is run again rather than counted: counted,
    a run could finish untrained and be taken for done. Gives up after sample_timeout_s without
    samples once an env runner failed, or after SLOW_SAMPLING_PATIENCE times that while they are all
    healthy. The loop counts its steps from this, not from RLlib's lifetime counter.
    """
    since = time.time()
    failures = _runner_failures(algo)
    while True:
        result = algo.train()
        sampled = _get(result, "env_runners/num_env_steps_sampled", default=0.0)
        if sampled > 0:
            return result, int(sampled)
        waited = time.time() - since
        failed = _runner_failures(algo) > failures
        if waited > sample_timeout_s * (1 if failed else SLOW_SAMPLING_PATIENCE):
            cause = "the env runners keep failing (out of memory? see the Ray worker logs)" if failed else (
                "the env runners are healthy but too slow (an overloaded machine? raise --sample_timeout_s)")
            raise RuntimeError(f"no env steps sampled for {waited:.0f} s: {cause}; --resume continues from the "
                               "last checkpoint")
        print("no samples: an env runner failed, RLlib is restarting it" if failed else
              f"no samples after {waited:.0f} s: the env runners are slow (a busy machine, or the first iteration "
              "computing photo features); waiting", flush=True)
        time.sleep(1.0)


def summarize(result: dict, iteration: int, seconds: float) -> dict[str, float]:
    """The progress.csv row of one iteration, less its timesteps (the loops count those)."""
    return {
        "iteration": iteration,
        "episode_return_mean": _get(result, "env_runners/episode_return_mean"),
        "final_score_mean": _get(result, "env_runners/final_score"),
        "start_score_mean": _get(result, "env_runners/start_score"),
        "episode_len_mean": _get(result, "env_runners/episode_len_mean"),
        "policy_entropy": _get(result, "learners/default_policy/entropy"),
        "vf_explained_var": _get(result, "learners/default_policy/vf_explained_var"),
        # What the schedules (--anneal_lr, --entropy_coeff_final) set for this iteration's update.
        "lr": _get(result, "learners/default_policy/default_optimizer_learning_rate"),
        "entropy_coeff": _get(result, "learners/default_policy/curr_entropy_coeff"),
        "ref_kl": _get(result, "learners/default_policy/ref_kl"),
        # Samples the learner trained on (an env step counts once per epoch or replay).
        "trained": _get(result, "learners/default_policy/num_module_steps_trained", default=0.0),
        "seconds": round(seconds, 2),
    }


def _read_progress(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: (int(float(v)) if k in ("iteration", "timesteps") else float(v))
                 for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def plot_curves(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    t = [r["timesteps"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(t, [r.get("episode_return_mean", np.nan) for r in rows])
    axes[0].set_title("mean episode return (score gain)")
    axes[1].plot(t, [r.get("final_score_mean", np.nan) for r in rows], label="final crop")
    axes[1].plot(t, [r.get("start_score_mean", np.nan) for r in rows], label="whole photo", ls="--")
    axes[1].set_title("mean reward of the crop")
    axes[1].legend()
    axes[2].plot(t, [r.get("policy_entropy", np.nan) for r in rows])
    axes[2].set_title("policy entropy")
    for ax in axes:
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def init_ray() -> None:
    """Local single-node Ray by default; joins a running cluster when RAY_ADDRESS is set."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})


def restore(algo, path: str | Path, component: str | None = None) -> None:
    """``algo.restore_from_path``, and then every env runner samples with the restored weights.

    RLlib 2.60's restore pushes the weights to the remote env runners fire-and-forget
    (``EnvRunnerGroup.sync_weights``, ``timeout_seconds=0``, through the async actor manager), which
    drops the push while the runner still has a request in flight (one is allowed). The first batch
    then comes from the randomly initialised module, and PPO's first update weighs the restored
    policy's actions by pi_restored / pi_random. So push them again, waiting for every env runner,
    and check one weight.
    """
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE

    algo.restore_from_path(str(path), **({"component": component} if component else {}))
    group = algo.env_runner_group
    if group is None:
        return
    state = algo.learner_group.get_state(components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}",
                                         inference_only=True)[COMPONENT_LEARNER]
    # Without a weights sequence number an env runner takes the state unconditionally.
    state_ref = ray.put({COMPONENT_RL_MODULE: state[COMPONENT_RL_MODULE]})
    group.foreach_env_runner(lambda runner: runner.set_state(ray.get(state_ref)), local_env_runner=True)
    want = np.asarray(next(iter(state[COMPONENT_RL_MODULE].values()))["pi.weight"])
    for got in group.foreach_env_runner(lambda runner: runner.module.get_state()["pi.weight"], local_env_runner=False):
        if not np.array_equal(np.asarray(got), want):
            raise RuntimeError(f"restoring {path}: an env runner still holds other weights than the learner")


OnIteration = Callable[[dict[str, float], "Path | None"], None]
"""Called after every iteration with its progress.csv row and the checkpoint saved then (else None)."""


def train(ppo: PPOSettings, env_config: dict[str, Any], out: Path, *,
          checkpoints: CheckpointSettings | None = None, resume: bool = False,
          init_policy: str | Path | None = None, ref_kl: float = 0.0, freeze: str = "none",
          title: str = "PPO", on_iteration: OnIteration | None = None) -> Path:
    """Train until ppo.timesteps env steps; returns the newest checkpoint folder.

    ref_kl > 0 adds a KL penalty to init_policy, frozen (ReferenceKLLearner); `freeze` keeps those parts
    of the module fixed (FROZEN_PARTS). `on_iteration` sees each iteration's row and checkpoint. An
    env_config that carries rlhf.kept's constraint gets its multiplier set after every iteration; the
    checkpoints keep it, so --resume goes on with it.
    """
    ppo.validate()
    check_algo(ppo.algo, ref_kl)
    if init_policy is not None:
        check_init_policy(ppo.algo, init_policy)
    checkpoints = checkpoints or CheckpointSettings()
    CropEnvConfig(**{k: v for k, v in env_config.items() if k in CropEnvConfig.__dataclass_fields__})
    init_ray()
    in_actor = ray.get_runtime_context().get_actor_id() is not None
    # The local learner runs in this process: give it the cores the env runners leave (in an actor,
    # a Tune trial, the cores Ray gave it), no more: oversubscribed torch threads make updates far slower.
    cores = ray.get_runtime_context().get_assigned_resources().get("CPU", 1) if in_actor else \
        (os.cpu_count() or 1) - ppo.num_env_runners
    torch.set_num_threads(max(1, int(cores)))
    free = ray.available_resources().get("CPU", 0)
    if not in_actor and ppo.num_env_runners > free + 1e-9:
        # RLlib would wait forever for env runners that cannot be placed: say so now.
        raise ValueError(f"num_env_runners={ppo.num_env_runners} needs {ppo.num_env_runners} free CPUs, the "
                         f"cluster has {free:g} free (the scoring actor holds one): lower --num_env_runners")
    ckpt_dir = out / "checkpoints"
    progress = out / "progress.csv"
    algo = build_config(ppo, env_config, ref_policy=init_policy, ref_kl=ref_kl, freeze=freeze).build_algo()
    kept = KeptConstraint.of(env_config)
    rows: list[dict[str, float]] = []
    start_steps = 0
    try:
        existing = sorted(ckpt_dir.glob("ckpt_*")) if ckpt_dir.is_dir() else []
        if resume and existing:
            ckpt = existing[-1]
            restore(algo, ckpt)
            state = json.loads((ckpt / STATE_FILE).read_text())
            rows = [r for r in _read_progress(progress) if r["iteration"] <= state["iteration"]]
            start_steps = int(state["timesteps"])
            if kept is not None:
                kept.multiplier = float(state.get("kept_lambda", 0.0))
            print(f"resumed from {ckpt} at iteration {state['iteration']}, {start_steps} steps", flush=True)
        elif resume:
            print(f"--resume: no checkpoint in {ckpt_dir}; starting fresh", flush=True)
        if not rows and init_policy is not None:
            src = latest_checkpoint(init_policy) / MODULE_SUBDIR
            restore(algo, src, component=MODULE_SUBDIR.as_posix())
            print(f"initial policy weights from {src}", flush=True)
        iteration = int(rows[-1]["iteration"]) if rows else 0
        steps = start_steps
        t_start = time.time()
        while steps < ppo.timesteps:
            t0 = time.time()
            if kept is not None:
                kept.push(algo)
            result, sampled = train_iteration(algo, ppo.sample_timeout_s)
            iteration += 1
            steps += sampled
            row = {"timesteps": steps, **summarize(result, iteration, time.time() - t0),
                   **(kept.update(algo) if kept is not None else {})}
            rows.append(row)
            _write_progress(progress, rows)
            print(f"iter {iteration:4d}  steps {steps:7d}/{ppo.timesteps}  return {row['episode_return_mean']:+.4f}"
                  f"  final {row['final_score_mean']:.4f} (photo {row['start_score_mean']:.4f})"
                  f"  len {row['episode_len_mean']:.1f}  entropy {row['policy_entropy']:.3f}"
                  + (f"  kept {row['kept']:.3f} lambda {row['kept_lambda']:.3f}" if kept is not None else "")
                  + f"  {row['seconds']:.1f}s", flush=True)
            saved = None
            if iteration % checkpoints.checkpoint_every == 0 or steps >= ppo.timesteps:
                saved = _checkpoint(algo, ckpt_dir, iteration, steps, checkpoints.keep_checkpoints,
                                    {"kept_lambda": kept.multiplier} if kept is not None else {})
                if kept is not None:
                    kept.record(out, env_config["reward"])
                plot_curves(rows, out / "curves.png", title)
            if on_iteration is not None:
                on_iteration(row, saved)
        print(f"trained {steps} steps in {time.time() - t_start:.0f}s; curves: {out / 'curves.png'}", flush=True)
    finally:
        algo.stop()
    return latest_checkpoint(out)


def _write_progress(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _checkpoint(algo, ckpt_dir: Path, iteration: int, steps: int, keep: int, state: dict | None = None) -> Path:
    """Write to a temp folder, then rename: a run killed mid-save never leaves a broken newest checkpoint."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"ckpt_{iteration:06d}"
    tmp = ckpt_dir / f".tmp_ckpt_{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    (tmp / STATE_FILE).write_text(json.dumps({"iteration": iteration, "timesteps": steps, **(state or {})}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(ckpt_dir.glob("ckpt_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final

