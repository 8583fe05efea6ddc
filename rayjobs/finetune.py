"""Stage 3: PPO continues from the bootstrap policy on the combined reward

    reward = w_nima * (nima - 1) / 9 + w_human * human_score      (default 0.7 / 0.3)

    photographer finetune --policy results/bootstrap-... --human_reward_model results/reward-.../human_reward_model.pth

The env settings (grid, thumbnails, aspect lock, ...) come from the bootstrap run so the policy's
observations keep their meaning; photos default to the bootstrap's. An env flag given on the command
line overrides the bootstrap's value (e.g. `--random_start 0` or `--max_steps 12`), except
`--obs_size`, `--grid`, `--saliency`, `--box_mask`, `--features`, `--colour_cues` and `--lookahead`, which would change what the policy's inputs mean: those must match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from rayjobs.bootstrap import ENV_FIELDS, BootstrapConfig, release, save_config_with_env
from rayjobs.ppo import PPOSettings, init_ray, train
from rlhf.config import parse_config, run_dir
from rlhf.env import CropEnvConfig
from rlhf.images import resolve_paths
from rlhf.policy import FROZEN_PARTS, latest_checkpoint, run_folder_of
from rlhf.rewards import RewardSpec


@dataclass
class FinetuneConfig(BootstrapConfig):
    """Stage 3: fine-tune the bootstrap policy on the aesthetic + human reward."""

    policy: str = field(default="", metadata={"help": "bootstrap policy: checkpoint or run folder"})
    human_reward_model: str = field(default="", metadata={"help": "human_reward_model.pth from train-reward"})
    w_nima: float = field(default=0.7, metadata={"help": "weight of (nima-1)/9"})
    w_human: float = field(default=0.3, metadata={"help": "weight of the human score"})
    timesteps: int = field(default=10000, metadata={"help": "env steps of fine-tuning"})
    # Stage 3 keeps a constant lr and entropy bonus (stage 1 anneals them). On the personalization bench
    # (tight taste, one reward model) both alternatives moved more crops and the taste preferred fewer:
    # constant bonus 0.001: 52 of 54 crops moved, preferred 0.556; lr and bonus annealed (0.01 -> 0.001):
    # 49 moved, 0.444; constant 0.01 (kept): 37 moved, 0.611.
    anneal_lr: bool = field(default=False, metadata=PPOSettings.__dataclass_fields__["anneal_lr"].metadata)
    entropy_coeff_final: float | None = field(
        default=None, metadata=PPOSettings.__dataclass_fields__["entropy_coeff_final"].metadata)
    ref_kl: float = field(default=0.0, metadata={
        "help": "KL penalty to the bootstrap policy: loss += ref_kl * KL(pi || pi_bootstrap), averaged over the "
                "batch's states (InstructGPT/TRL keep the tuned policy near the reference so it moves only where "
                "the learned reward pays for it); 0 = off. Logged as ref_kl in progress.csv"})
    freeze: str = field(default="none", metadata={
        "help": "parts of the bootstrap policy kept fixed in stage 3: none | features (the conv tower and the Lite0 "
                "projection: what it learned to see in stage 1 on the aesthetic reward) | trunk (all but the policy "
                "and value heads). Off by default: on the bench, freezing the features made unseen and training photos alike "
                "worse (warm 0.602 -> 0.530, tight 0.657 -> 0.627; bench/README.md)",
        "choices": list(FROZEN_PARTS)})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (lower than stage 1: keep what it "
                                              "learned)"})
    # Stage 3 starts a fresh Adam on a trained policy. At full lr from the first step, 7 of 21 bench stage 3s
    # at lr 3e-4 flattened the bootstrap within their first update (entropy 1.4 -> 2.2, return negative);
    # warmed up over 1536 steps one of them kept entropy 1.36-1.48 through full-lr updates.
    # (Those runs also sampled their first batch with the random policy, fixed since: rayjobs.ppo.restore.)
    lr_warmup_steps: int = field(default=2048, metadata=PPOSettings.__dataclass_fields__["lr_warmup_steps"].metadata)

    # Stage 3 is near-myopic. Its per-step reward is the change of the objective, and a one-step lookahead
    # already finds crops the taste likes: greedy hill-climbing on stage 3's own objective with g27's reward
    # models is preferred on 0.83 (warm) / 0.79 (tight) of 72 unseen framings. At gamma 0.99 each action's
    # advantage also carries the noise of the later, exploring actions, and 18432 steps were too few to
    # average it out: warm 0.544 (gamma 0.99), 0.655 (0.5), 0.690 (0.1) on the same reward model.
    gamma: float = field(default=0.1, metadata={
        "help": "discount (stage 1: 0.99). Rewards are changes of the objective, so a low gamma pays each move for "
                "what it changes itself: less variance, and on the bench the taste preferred stage 3's crops more "
                "often the lower it was (bench/README.md)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.policy:
            raise ValueError("--policy is required: the bootstrap checkpoint or run folder")
        if not self.human_reward_model or not Path(self.human_reward_model).is_file():
            raise ValueError(f"--human_reward_model must be an existing file, got {self.human_reward_model!r}")
        if self.freeze not in FROZEN_PARTS:
            raise ValueError(f"--freeze must be one of {list(FROZEN_PARTS)}, got {self.freeze!r}")
        if self.ref_kl < 0:
            raise ValueError(f"--ref_kl must be >= 0, got {self.ref_kl}")
        RewardSpec(kind="combined", human_reward_model=self.human_reward_model,
                   w_nima=self.w_nima, w_human=self.w_human)


ENV_DEFAULTS = {f.name: f.default for f in fields(CropEnvConfig) if f.name in ENV_FIELDS}
# Changing these would change what the policy's observations mean (thumbnail size, grid step, map).
FIXED_BY_POLICY = ("obs_size", "grid", "saliency", "box_mask", "features", "colour_cues", "lookahead")


def given_flags(argv: list[str]) -> set[str]:
    """The config fields named on a command line (``--grid 10``, ``--grid=10``, ``--no-box_mask``)."""
    names = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    return names | {n[3:] for n in names if n.startswith("no_")}


def finetune_env(cfg: FinetuneConfig, reward: RewardSpec, given: set[str] | frozenset[str] = frozenset()) -> dict:
    """The bootstrap run's env settings, with the env flags in `given` (named on the CLI) applied."""
    ckpt = latest_checkpoint(cfg.policy)
    run = run_folder_of(ckpt)
    base = json.loads((run / "config.json").read_text()).get("env", {}) if run else {}
    # A run from before an env field existed ran with the env's default for it (e.g. no box mask).
    env = {**ENV_DEFAULTS, **base} if base else {}
    if "image" in given or "images" not in env:
        env["images"] = [str(p) for p in resolve_paths(cfg.image)]
    for key in ENV_FIELDS:
        value = getattr(cfg, key)
        if key not in env:
            env[key] = value
        elif key in given and value != env[key]:
            if key in FIXED_BY_POLICY:
                raise ValueError(f"--{key} {value}: the policy {ckpt} was trained with {key}={env[key]}; "
                                 f"stage 3 must keep it (it changes what the policy observes)")
            print(f"stage 3: --{key} {value} overrides the bootstrap's {env[key]}", flush=True)
            env[key] = value
    env["seed"] = cfg.seed
    env["reward"] = reward.to_dict()
    return env


def run(cfg: FinetuneConfig, given: set[str] | frozenset[str] = frozenset()) -> Path:
    """`given`: the config fields named on the command line (see `finetune_env`)."""
    out = run_dir(cfg.out, "finetune")
    init_ray()
    spec = RewardSpec(kind="combined", scorer=cfg.scorer, scorer_weights=cfg.scorer_weights,
                      human_reward_model=str(Path(cfg.human_reward_model).resolve()),
                      w_nima=cfg.w_nima, w_human=cfg.w_human)
    if cfg.service:
        from rlhf.scoring_service import ensure_service

        spec.service = ensure_service(spec)
    env = finetune_env(cfg, spec, given)
    save_config_with_env(cfg, env, out)
    print(f"stage 3 (finetune): from {latest_checkpoint(cfg.policy)}, reward = {cfg.w_nima}*(nima-1)/9 + "
          f"{cfg.w_human}*human, out={out}", flush=True)
    try:
        return train(cfg, env, out, resume=cfg.resume, init_policy=cfg.policy, ref_kl=cfg.ref_kl, freeze=cfg.freeze,
                     title=f"stage 3: {cfg.w_nima} aesthetic + {cfg.w_human} human")
    finally:
        release(spec.service)


def main(argv: list[str] | None = None) -> Path:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(FinetuneConfig, argv, prog="photographer finetune")
    return run(cfg, given=given_flags(argv))


if __name__ == "__main__":
    main()
