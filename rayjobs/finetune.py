"""Stage 3: PPO continues from the bootstrap policy on the combined reward

    reward = w_nima * (nima - 1) / 9 + w_human * human_score      (default 0.7 / 0.3)

    photographer finetune --policy results/bootstrap-... --human_reward_model results/reward-.../human_reward_model.pth

The env settings (grid, thumbnails, aspect lock, photos, ...) come from the policy's run config so
its observations keep their meaning. An env flag given on the command line overrides the run's value
(e.g. `--random_start 0` or `--max_steps 12`), except the settings the policy is tied to
(CropEnvConfig.fixed_by_policy: obs_size, grid, saliency, box_mask, features, colour_cues, lookahead),
which must match.

With --min_kept (default 0.95) stage 3 keeps that share of the bootstrap's aesthetic score by itself:
the aesthetic weight rises by a Lagrange multiplier while its crops keep less (rlhf/kept.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path

from rayjobs.bootstrap import ScorerSettings, release, reward_spec, save_run_config
from rayjobs.training import CheckpointSettings, PPOSettings, init_ray, train
from rlhf.config import load_run_config, parse_config_given, run_dir
from rlhf.env import CropEnvConfig
from rlhf.images import resolve_paths
from rlhf.kept import KEPT, MIN_KEPT, reference_scores
from rlhf.policy import FROZEN_PARTS, latest_checkpoint, run_folder_of
from rlhf.reward import COMBINED, RewardSpec

REFERENCE_FILE = "aesthetic_reference.json"  # in the run folder: the bootstrap's aesthetic score per photo

# The env flags of a stage-3 run print this as their default: unless given, the policy's run decides.
FROM_POLICY = "the policy's run config"


def stage3_ppo() -> PPOSettings:
    """PPO for stage 3, which starts a fresh Adam on a trained policy.

    - A constant lr and entropy bonus (stage 1 anneals them): annealed or with a smaller bonus, stage 3
      moved more crops and the person's taste preferred fewer of them.
    - A lower lr warmed up over the first 2048 steps: at full lr from the first step Adam moves every
      weight by about lr, and stage 3 could flatten the bootstrap within its first update.
    - gamma 0.1: the per-step reward is the change of the objective and a one-step lookahead already
      finds crops the taste likes; a high gamma adds the noise of the later, exploring moves to each
      move's advantage.
    """
    return PPOSettings(timesteps=10000, lr=1e-4, lr_warmup_steps=2048, gamma=0.1)


@dataclass
class Stage3Settings:
    """Where stage 3 starts and how it stays near it; shared by finetune and the Tune sweep's trials."""

    policy: str = field(default="", metadata={"help": "bootstrap policy: checkpoint or run folder (required)"})
    human_reward_model: str = field(default="", metadata={
        "help": "human_reward_model.pth from train-reward (required)"})
    ref_kl: float = field(default=0.0, metadata={
        "help": "KL penalty to the bootstrap policy: loss += ref_kl * KL(pi || pi_bootstrap), averaged over the "
                "batch's states (InstructGPT/TRL keep the tuned policy near the reference so it moves only where "
                "the learned reward pays for it); 0 = off. Logged as ref_kl in progress.csv"})
    freeze: str = field(default="none", metadata={
        "help": "parts of the bootstrap policy kept fixed in stage 3: none | features (the conv tower and the Lite0 "
                "projection: what it learned to see in stage 1) | trunk (all but the policy and value heads)",
        "choices": list(FROZEN_PARTS)})
    min_kept: float = field(default=MIN_KEPT, metadata={
        "help": "share of the bootstrap's aesthetic score (1-10, its greedy crops of the training photos) stage 3 "
                "keeps: a Lagrange multiplier added to w_nima rises while the crops keep less (rlhf/kept.py); "
                "0 = off, the fixed weights alone. Logged as kept and kept_lambda in progress.csv"})
    kept_lr: float = field(default=10.0, metadata={
        "help": "step of the multiplier per PPO iteration per unit of kept share below --min_kept: at 10, an "
                "iteration that keeps 0.92 of 0.95 raises it by 0.3"})

    def validate(self) -> None:
        """The stage's own __post_init__ calls it: a part's default instance has no policy yet."""
        if not self.policy:
            raise ValueError("--policy is required: the bootstrap checkpoint or run folder")
        if not self.human_reward_model or not Path(self.human_reward_model).is_file():
            raise ValueError(f"--human_reward_model must be an existing file, got {self.human_reward_model!r}")
        if self.freeze not in FROZEN_PARTS:
            raise ValueError(f"--freeze must be one of {list(FROZEN_PARTS)}, got {self.freeze!r}")
        if self.ref_kl < 0:
            raise ValueError(f"--ref_kl must be >= 0, got {self.ref_kl}")
        if not 0.0 <= self.min_kept <= 1.0 or self.kept_lr <= 0:
            raise ValueError(f"--min_kept must be in [0, 1] and --kept_lr > 0, got {self.min_kept}, {self.kept_lr}")

    def keep_aesthetic(self, env: dict, out: Path, resume: bool = False) -> None:
        """With --min_kept, `env` (RLlib's env_config, with its reward) carries the constraint (rlhf.kept): its
        settings and the bootstrap's aesthetic scores to keep, written to `out`/aesthetic_reference.json,
        which a resumed run reuses."""
        if not self.min_kept:
            return
        path = out / REFERENCE_FILE
        if resume and path.is_file():
            reference = json.loads(path.read_text())
        else:
            t = time.time()
            reference = reference_scores(latest_checkpoint(self.policy), env)
            path.write_text(json.dumps(reference, indent=1) + "\n")
            print(f"stage 3 keeps >= {self.min_kept} of the bootstrap's aesthetic score: its greedy crops of "
                  f"{len(reference)} training photos and framings scored in {time.time() - t:.0f}s", flush=True)
        env[KEPT] = {"reference": reference, "min_kept": self.min_kept, "kept_lr": self.kept_lr}


@dataclass
class FinetuneConfig:
    """Stage 3: fine-tune the bootstrap policy on the aesthetic + human reward."""

    stage3: Stage3Settings = field(default_factory=Stage3Settings)
    w_nima: float = field(default=0.7, metadata={"help": "weight of (nima-1)/9"})
    w_human: float = field(default=0.3, metadata={"help": "weight of the human score"})
    out: str | None = field(default=None, metadata={"help": "run folder (default: results/finetune-<time>)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})
    env: CropEnvConfig = field(default_factory=CropEnvConfig, metadata={"help_default": FROM_POLICY})
    ppo: PPOSettings = field(default_factory=stage3_ppo)
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)
    scoring: ScorerSettings = field(default_factory=ScorerSettings)

    def __post_init__(self) -> None:
        if self.resume and not self.out:
            raise ValueError("--resume needs --out: the run folder to continue")
        self.stage3.validate()
        RewardSpec(kind=COMBINED, human_reward_model=self.stage3.human_reward_model,
                   w_nima=self.w_nima, w_human=self.w_human)


def finetune_env(policy: str, env: CropEnvConfig, seed: int, given: Set[str], reward: RewardSpec) -> dict:
    """RLlib's env_config for a stage from `policy`: its run's env settings, the ones in `given` (leaf
    field names set on the command line) taken from `env` instead."""
    ckpt = latest_checkpoint(policy)
    run = run_folder_of(ckpt)
    base = load_run_config(run)["env"] if run else dataclasses.asdict(CropEnvConfig())
    settings = {}
    for f in dataclasses.fields(CropEnvConfig):
        value, theirs = getattr(env, f.name), base.get(f.name, f.default)
        if f.name not in given or value == theirs:
            settings[f.name] = theirs
        elif f.name in CropEnvConfig.fixed_by_policy():
            raise ValueError(f"--{f.name} {value}: the policy {ckpt} was trained with {f.name}={theirs}; "
                             f"stage 3 must keep it (it changes what the policy observes)")
        else:
            if f.name != "images":
                print(f"stage 3: --{f.name} {value} overrides the bootstrap's {theirs}", flush=True)
            settings[f.name] = value
    settings["images"] = [str(p) for p in resolve_paths(settings["images"])]
    settings["seed"] = seed
    return {**dataclasses.asdict(CropEnvConfig(**settings)), "reward": reward.to_dict()}


def combined_reward(scoring: ScorerSettings, human_reward_model: str, w_nima: float = 0.7,
                    w_human: float = 0.3) -> RewardSpec:
    """Stage 3's reward spec, its scoring actor started with --service."""
    return reward_spec(scoring, kind=COMBINED, human_reward_model=str(Path(human_reward_model).resolve()),
                       w_nima=w_nima, w_human=w_human)


def run(cfg: FinetuneConfig, given: Set[str] = frozenset()) -> Path:
    """`given`: the leaf field names set on the command line (see `finetune_env`)."""
    out = run_dir(cfg.out, "finetune")
    init_ray()
    spec = combined_reward(cfg.scoring, cfg.stage3.human_reward_model, cfg.w_nima, cfg.w_human)
    try:
        env = finetune_env(cfg.stage3.policy, cfg.env, cfg.ppo.seed, given, spec)
        save_run_config(cfg, env, out)
        print(f"stage 3 (finetune): from {latest_checkpoint(cfg.stage3.policy)}, reward = {cfg.w_nima}*(nima-1)/9 + "
              f"{cfg.w_human}*human, out={out}", flush=True)
        cfg.stage3.keep_aesthetic(env, out, cfg.resume)
        return train(cfg.ppo, env, out, checkpoints=cfg.checkpoints, resume=cfg.resume,
                     init_policy=cfg.stage3.policy, ref_kl=cfg.stage3.ref_kl, freeze=cfg.stage3.freeze,
                     title=f"stage 3: {cfg.w_nima} aesthetic + {cfg.w_human} human")
    finally:
        release(spec.service)


def main(argv: list[str] | None = None) -> Path:
    return run(*parse_config_given(FinetuneConfig, argv, prog="photographer finetune"))


if __name__ == "__main__":
    main()
