"""What stage 3 could reach with its reward as it is: greedy search on stage 3's own objective, judged by the taste.

Stage 3's crops can fall short of the taste for two reasons: the reward (reward model + aesthetic
weight) points elsewhere, or PPO does not find what the reward pays for. This separates them. For
each bench taste folder it takes the unseen framings the bench judges (every --every th) and crops
each two ways, both starting from the whole photo as the policies do:

  stage3   the stage-3 policy of the folder (finetune/)
  greedy   hill-climbing in the same crop env (same grid, moves, size limits), each step taking the
           move that raises w_nima*(aesthetic-1)/9 + w_human*human the most, stopping when none does:
           a policy with a perfect one-step lookahead on stage 3's reward
and prints how often the taste (noiseless) prefers each over the bootstrap's crop (`preferred`, ties
half), and `rm_agrees`: on one-grid-step moves from the bootstrap's crop that the taste does not
call even, how often the reward model's human score moves the taste's way.

    python bench/personalization_ceiling.py --bootstrap results/boot --runs results/bench/warm

The objective is the one in the run's finetune/config.json (its weights and scorer), scored in this process.

The last line is `personalization_ceiling: runs=N worst_greedy=G worst_stage3=S` (over the runs).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlhf.config import parse_config  # noqa: E402


@dataclass
class CeilingConfig:
    """Greedy search on stage 3's objective against the stage-3 policy, judged by the simulated taste."""

    bootstrap: str = field(default="", metadata={"help": "the stage-1 run the bench runs started from"})
    runs: list[str] = field(default_factory=list, metadata={"help": "bench taste folders (<out>/<taste>)"})
    every: int = field(default=3, metadata={"help": "judge every n-th of the bench's unseen framings (1 = all 216)"})
    variants: int = field(default=23, metadata={"help": "framings per held-out photo, as the bench made them"})
    seed: int = field(default=0, metadata={"help": "seed of the framings (the bench's --seed)"})

    def __post_init__(self) -> None:
        if not self.bootstrap or not self.runs:
            raise ValueError("--bootstrap and --runs are required")
        if self.every < 1:
            raise ValueError(f"--every must be >= 1, got {self.every}")
        from personalization import check_taste_folders

        check_taste_folders(self.runs)


def greedy_box(env, index: int, objective) -> tuple[int, ...]:
    """Hill-climb from the env's start box on `objective(photo, boxes)`; the final box in pixels."""
    env.reset(options={"photo_index": index})
    current = float(objective(env.photo, [env.pixel_box()])[0])
    for _ in range(env.cfg.max_steps):
        moves = env.moves()
        if not moves:
            break
        values = objective(env.photo, [env.pixel_box(b) for b in moves.values()])
        best = int(np.argmax(values))
        if values[best] <= current:
            break
        env.step(list(moves)[best])
        current = float(values[best])
    return tuple(int(v) for v in env.pixel_box())


def one_step_agreement(env, index: int, start, taste, model) -> list[bool]:
    """Whether the reward model's human score moves the taste's way on each one-step move from `start`."""
    env.reset(options={"photo_index": index})
    w, h = env.photo.width, env.photo.height
    env.box = np.array([start[0] / w, start[1] / h, start[2] / w, start[3] / h])
    out = []
    for new in env.moves().values():
        a_box, b_box = env.pixel_box(new), env.pixel_box()
        choice = taste.true_choice(env.photo, a_box, b_box)
        if choice:
            h_new, h_old = model.human_score(env.photo, [a_box, b_box])
            out.append(bool((h_new > h_old) == (choice == 1)))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(CeilingConfig, argv, prog="bench/personalization_ceiling.py")
    from personalization import heldout_framings, preferred_by_photo

    from rlhf.env import CropEnv
    from rlhf.evaluation import TRAINING_ONLY_ENV_KEYS, policy_boxes
    from rlhf.images import Photo
    from rlhf.policy import CropPolicy
    from rlhf.reward import LocalReward, RewardSpec
    from rlhf.simulated import SimulatedAnnotator, preferred_rate

    photos = [Photo(name, framing.pixels) for name, framing in heldout_framings(cfg.variants, cfg.seed)][::cfg.every]
    boot = CropPolicy.load(cfg.bootstrap)
    boot_boxes = policy_boxes(boot, photos)[0]
    results = []
    for run in map(Path, cfg.runs):
        t = time.time()
        taste_name = run.name
        # Stage 3's own reward, as its run recorded it, scored in this process.
        spec = {**json.loads((run / "finetune" / "config.json").read_text())["reward"], "service": None,
                "human_reward_model": str(run / "reward" / "human_reward_model.pth")}
        objective = LocalReward(RewardSpec(**spec))
        model = objective.human
        taste = SimulatedAnnotator(taste_name, noise=0.0)
        stage3_boxes = policy_boxes(CropPolicy.load(run / "finetune"), photos)[0]
        env = CropEnv({k: v for k, v in boot.env_config.items() if k not in TRAINING_ONLY_ENV_KEYS},
                      reward_fn=objective, photos=photos)
        greedy_boxes = [greedy_box(env, i, objective) for i in range(len(photos))]
        agree: list[bool] = []
        for i in range(len(photos)):
            agree += one_step_agreement(env, i, boot_boxes[i], taste, model)
        before = {p.id: b for p, b in zip(photos, boot_boxes, strict=True)}
        ways = {"stage3": stage3_boxes, "greedy": greedy_boxes}
        after = {way: {p.id: b for p, b in zip(photos, boxes, strict=True)} for way, boxes in ways.items()}
        by_photo = {way: preferred_by_photo(taste, photos, before, a) for way, a in after.items()}
        r = {"run": str(run), "taste": taste_name, "framings": len(photos),
             **{way: preferred_rate(taste, photos, before, a) for way, a in after.items()},
             "rm_agrees": float(np.mean(agree)), "moves": len(agree),
             "by_photo": {k: {way: by_photo[way][k] for way in ways} for k in by_photo["stage3"]}}
        results.append(r)
        print(f"{run}: {taste_name} on {len(photos)} unseen framings: preferred over the bootstrap's crop: "
              f"stage3 {r['stage3']:.3f}, greedy on stage 3's objective {r['greedy']:.3f}; reward model moves the "
              f"taste's way on {r['rm_agrees']:.3f} of {len(agree)} one-step moves  ({time.time() - t:.0f}s)", flush=True)
        print(f"{run}: per held-out photo, stage3 / greedy: "
              + ", ".join(f"{k} {v['stage3']:.2f}/{v['greedy']:.2f}" for k, v in r["by_photo"].items()), flush=True)
    print(f"personalization_ceiling: runs={len(results)} worst_greedy={min(r['greedy'] for r in results):.3f} "
          f"worst_stage3={min(r['stage3'] for r in results):.3f}")
    return results


if __name__ == "__main__":
    main()
