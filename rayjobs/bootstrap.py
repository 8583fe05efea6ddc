"""Stage 1: PPO learns to crop from the aesthetic scorer's reward, (score - 1) / 9.

    photographer bootstrap --image rlhf/data/photos --timesteps 20000 --out results/bootstrap
    python -m rayjobs.bootstrap ...            # what `ray job submit` runs

Writes into --out: config.json, checkpoints/ckpt_*/ (RLlib), progress.csv, curves.png.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rayjobs.ppo import PPOSettings, train
from rlhf.config import parse_config, run_dir, save_config
from rlhf.env import ASPECTS, FEATURES, SALIENCY_MAPS
from rlhf.images import TRAIN_PHOTOS, bundled_photos, resolve_paths
from rlhf.rewards import RewardSpec


def _default_images() -> list[str]:
    return [str(p) for p in bundled_photos(TRAIN_PHOTOS)]


@dataclass
class BootstrapConfig(PPOSettings):
    """Stage 1: train a crop policy with PPO on the aesthetic reward."""

    # Annealed by default in stage 1: with a constant lr and entropy bonus 0.01 the policy ended 100k
    # steps at entropy ~2.0 of ln 14 = 2.64, its greedy crops far from what it trained on; annealed,
    # 1.4, and held-out vs_random 1.104 / 1.109 / 1.128 against 1.114 / 1.099 / 1.105 (seeds 0/1/2).
    anneal_lr: bool = field(default=True, metadata=PPOSettings.__dataclass_fields__["anneal_lr"].metadata)
    entropy_coeff_final: float | None = field(
        default=0.001, metadata=PPOSettings.__dataclass_fields__["entropy_coeff_final"].metadata)
    image: list[str] = field(default_factory=_default_images,
                             metadata={"help": "photos: files, folders or globs (default: bundled training photos)"})
    out: str | None = field(default=None, metadata={"help": "run folder (default results/bootstrap-<time>)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})
    scorer: str = field(default="default", metadata={"help": "aesthetic scorer: default (offline proxy) | nima"})
    scorer_weights: str | None = field(default=None, metadata={"help": "local weights for the scorer (NIMA .pth)"})
    service: bool = field(default=True, metadata={"help": "score through the shared scoring actor "
                                                  "(False: every env runner loads its own models)"})
    grid: int = field(default=10, metadata={"help": "grid steps per side (10: each action moves a side by "
                                                     "a tenth; coarser steps learn faster, see bench/README.md)"})
    max_steps: int = field(default=10, metadata={"help": "step cap per episode"})
    min_area: float = field(default=0.25, metadata={"help": "smallest crop as a fraction of the photo"})
    aspect: str = field(default="free", metadata={"help": "aspect lock", "choices": list(ASPECTS)})
    obs_size: int = field(default=64, metadata={"help": "thumbnail side the policy sees"})
    augment_variants: int = field(default=4, metadata={"help": "fixed sub-photo/mirror variants per photo"})
    random_start: float = field(default=0.5, metadata={"help": "share of training episodes that start from a "
                                                       "random box (exploring starts)"})
    saliency: str = field(default="spectral", metadata={"help": "saliency the policy sees: spectral (no network) | "
                                                        "subject (Lite0 class activation + saliency + heads)",
                                                       "choices": list(SALIENCY_MAPS)})
    box_mask: bool = field(default=True, metadata={"help": "mark the box on the photo thumbnail the policy "
                                                   "sees (a fifth channel; see bench/README.md for what it did)"})
    features: str = field(default="lite0", metadata={"help": "pretrained features the policy also sees: lite0 (the "
                                                     "frozen EfficientNet-Lite0's, of the crop and the photo; better "
                                                     "held-out crops in both seeds compared, bench/README.md) | none",
                                                     "choices": list(FEATURES)})
    colour_cues: bool = field(default=False, metadata={"help": "colour cues in the box vector (the crop's colour and "
                                                       "what lies beyond and inside each edge; see CropEnvConfig). Off "
                                                       "by default: same held-out crops, and no surer a warm taste in "
                                                       "stage 3 (bench/README.md)"})
    lookahead: bool = field(default=True, metadata={"help": "the policy sees the change of its objective each move "
                                                    "would bring (see CropEnvConfig), so stage 3 carries a person's "
                                                    "taste to photos it never trained on (without it, stage 3 was "
                                                    "preferred on 0.68-0.73 of unseen framings; with it 0.69-0.93, "
                                                    "bench/README.md). Its crops then need the reward's models at "
                                                    "inference too, and a stage-3 step costs about 3x as much"})

    def __post_init__(self) -> None:
        self.validate()
        if self.resume and not self.out:
            raise ValueError("--resume needs --out: the run folder to continue")


# The BootstrapConfig fields that are CropEnv settings of the same name (besides image -> images).
ENV_FIELDS = ("grid", "max_steps", "min_area", "aspect", "obs_size", "augment_variants", "random_start", "saliency",
              "box_mask", "features", "colour_cues", "lookahead")


def env_config(cfg: BootstrapConfig, reward: RewardSpec) -> dict:
    return {"images": [str(p) for p in resolve_paths(cfg.image)], **{f: getattr(cfg, f) for f in ENV_FIELDS},
            "seed": cfg.seed, "reward": reward.to_dict()}


def reward_spec(cfg: BootstrapConfig, **kw) -> RewardSpec:
    spec = RewardSpec(scorer=cfg.scorer, scorer_weights=cfg.scorer_weights, **kw)
    if cfg.service:
        from rlhf.scoring_service import ensure_service

        spec.service = ensure_service(spec)
    return spec


def run(cfg: BootstrapConfig) -> Path:
    from rayjobs.ppo import init_ray

    out = run_dir(cfg.out, "bootstrap")
    init_ray()
    env = env_config(cfg, reward_spec(cfg, kind="aesthetic"))
    save_config_with_env(cfg, env, out)
    print(f"stage 1 (bootstrap): {len(env['images'])} photos, scorer={cfg.scorer}, out={out}", flush=True)
    try:
        return train(cfg, env, out, resume=cfg.resume, title="stage 1: aesthetic reward")
    finally:
        release(env["reward"].get("service"))


def release(service: str | None) -> None:
    if service:
        from rlhf.scoring_service import release_service

        release_service(service)


def save_config_with_env(cfg, env: dict, out: Path) -> None:
    import json

    path = save_config(cfg, out)
    data = json.loads(path.read_text())
    data["env"] = {k: v for k, v in env.items() if k != "reward"}
    data["reward"] = env["reward"]
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(BootstrapConfig, argv, prog="photographer bootstrap"))


if __name__ == "__main__":
    main()
