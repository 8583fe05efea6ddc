"""Stage 1: PPO learns to crop from the aesthetic scorer's reward, (score - 1) / 9.

    photographer bootstrap --image rlhf/data/photos --timesteps 20000 --out results/bootstrap
    python -m rayjobs.bootstrap ...            # what `ray job submit` runs

Writes into --out: config.json, checkpoints/ckpt_*/ (RLlib), progress.csv, curves.png.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rayjobs.training import CheckpointSettings, PPOSettings, train
from rlhf.config import parse_config, run_dir, save_config
from rlhf.env import CropEnvConfig
from rlhf.images import TRAIN_PHOTOS, bundled_photos, resolve_paths
from rlhf.reward import AESTHETIC, RewardSpec


def stage1_env() -> CropEnvConfig:
    """The env stage 1 trains in: the env's defaults, but for these choices.

    Exploring starts and augmented photos give PPO more framings to learn from; the box mask,
    Lite0's features and the lookahead cues give the policy what it needs to see (docs/ explains
    each); colour cues stay off (they did not help).
    """
    return CropEnvConfig(images=[str(p) for p in bundled_photos(TRAIN_PHOTOS)], augment_variants=4,
                         random_start=0.5, box_mask=True, features="lite0", lookahead=True)


def stage1_ppo() -> PPOSettings:
    """Stage 1 anneals the learning rate and the entropy bonus: with both constant the policy ends
    its training near uniform (high entropy) and its greedy crops drift from what it trained on."""
    return PPOSettings(anneal_lr=True, entropy_coeff_final=0.001)


@dataclass
class ScorerSettings:
    """The aesthetic scorer behind a stage's reward."""

    scorer: str = field(default="default", metadata={"help": "aesthetic scorer: default (offline proxy) | nima"})
    scorer_weights: str | None = field(default=None, metadata={"help": "local weights for the scorer (NIMA .pth)"})
    service: bool = field(default=False, metadata={"help": "score through one shared scoring actor (batched, "
                                                   "on a GPU when there is one: for a crop-based scorer "
                                                   "such as nima); by default each env runner scores its "
                                                   "own boxes from the photo contexts, which is faster "
                                                   "on CPUs"})


@dataclass
class BootstrapConfig:
    """Stage 1: train a crop policy with PPO on the aesthetic reward."""

    out: str | None = field(default=None, metadata={"help": "run folder (default: results/bootstrap-<time>)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})
    env: CropEnvConfig = field(default_factory=stage1_env,
                               metadata={"help_default": {"images": "the bundled training photos"}})
    ppo: PPOSettings = field(default_factory=stage1_ppo)
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)
    scoring: ScorerSettings = field(default_factory=ScorerSettings)

    def __post_init__(self) -> None:
        if self.resume and not self.out:
            raise ValueError("--resume needs --out: the run folder to continue")


def resolved_env(env: CropEnvConfig, seed: int) -> CropEnvConfig:
    """The env as run: its photos resolved to files, its seed the run's."""
    return dataclasses.replace(env, images=[str(p) for p in resolve_paths(env.images)], seed=seed)


def env_config(cfg: BootstrapConfig, reward: RewardSpec) -> dict:
    """RLlib's env_config: the env settings as run, and the reward."""
    return {**dataclasses.asdict(resolved_env(cfg.env, cfg.ppo.seed)), "reward": reward.to_dict()}


def reward_spec(scoring: ScorerSettings, **kw) -> RewardSpec:
    """The reward of these scorer settings; with --service, through the (started) scoring actor."""
    spec = RewardSpec(scorer=scoring.scorer, scorer_weights=scoring.scorer_weights, **kw)
    if scoring.service:
        from rlhf.serving import ensure_service

        spec.service = ensure_service(spec)
    return spec


def release(service: str | None) -> None:
    if service:
        from rlhf.serving import release_service

        release_service(service)


def save_run_config(cfg, env: dict, out: Path) -> None:
    """config.json: the stage's config, its env as run, and the reward (which CropPolicy.load reads)."""
    # The env's settings only: what else travels in env_config (the reward, stage 3's aesthetic reference
    # scores) is saved as the reward or made again from the stage's own settings.
    env_settings = {k: v for k, v in env.items() if k in CropEnvConfig.__dataclass_fields__}
    save_config(dataclasses.replace(cfg, env=CropEnvConfig(**env_settings)), out, reward=env["reward"])


def run(cfg: BootstrapConfig) -> Path:
    from rayjobs.training import init_ray

    out = run_dir(cfg.out, "bootstrap")
    init_ray()
    env = env_config(cfg, reward_spec(cfg.scoring, kind=AESTHETIC))
    save_run_config(cfg, env, out)
    print(f"stage 1 (bootstrap): {len(env['images'])} photos, scorer={cfg.scoring.scorer}, out={out}", flush=True)
    try:
        return train(cfg.ppo, env, out, checkpoints=cfg.checkpoints, resume=cfg.resume,
                     title="stage 1: aesthetic reward")
    finally:
        release(env["reward"].get("service"))


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(BootstrapConfig, argv, prog="photographer bootstrap"))


if __name__ == "__main__":
    main()
