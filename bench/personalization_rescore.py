"""Judge finished stage-3 runs again, on a new set of unseen framings (bench/personalization.py's measures).

A bench's `preferred` rests on a finite set of framings, whose draw moves it by a few hundredths;
this re-judges existing runs on as many framings as asked (default 9 held-out photos x 24 = 216,
drawn with their own seed, so none is a framing the bench itself judged), without training anything.

    python bench/personalization_rescore.py --bootstrap results/boot --runs results/bench/tight results/x/warm

Each run is a bench taste folder (``<bench out>/<taste>``: its finetune/ and reward/ are used); the
taste is the folder's name. Per run it prints `preferred`, `score_kept`, stage 3's aim, and
`preferred` per held-out photo; the last line is
`personalization_rescore: runs=N worst_preferred=P mean_preferred=M photos=K`.
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
class RescoreConfig:
    """Re-judge bench stage-3 runs on fresh unseen framings."""

    bootstrap: str = field(default="", metadata={"help": "the stage-1 run the bench runs started from"})
    runs: list[str] = field(default_factory=list, metadata={"help": "bench taste folders (<out>/<taste>)"})
    variants: int = field(default=23, metadata={"help": "framings per held-out photo besides the photo itself"})
    seed: int = field(default=777, metadata={"help": "seed of the framings (the bench's own use --seed, 0)"})

    def __post_init__(self) -> None:
        if not self.bootstrap or not self.runs:
            raise ValueError("--bootstrap and --runs are required")
        from personalization import check_taste_folders

        check_taste_folders(self.runs)


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(RescoreConfig, argv, prog="bench/personalization_rescore.py")
    from personalization import heldout_framings, judge

    from rlhf.evaluation import evaluate_policy, policy_boxes
    from rlhf.images import Photo
    from rlhf.policy import CropPolicy
    from rlhf.preference import PreferenceRewardModel
    from rlhf.scorers import create_scorer
    from rlhf.simulated import SimulatedAnnotator

    # Named as the bench names its files, so results group by held-out photo alike.
    photos = [Photo(name, framing.pixels) for name, framing in heldout_framings(cfg.variants, cfg.seed)]
    boot = CropPolicy.load(cfg.bootstrap)
    scorer = create_scorer("default")
    boot_boxes = policy_boxes(boot, photos)[0]
    results = []
    for run in map(Path, cfg.runs):
        t = time.time()
        taste = run.name
        bench = json.loads((run.parent / "bench_config.json").read_text())
        w_nima, w_human = bench["w_nima"], bench["w_human"]
        model = PreferenceRewardModel.load(run / "reward" / "human_reward_model.pth")
        truth = SimulatedAnnotator(taste, noise=0.0)
        be = evaluate_policy(boot, photos, scorer, model, [], name="bootstrap", boxes=boot_boxes)
        ft = evaluate_policy(CropPolicy.load(run / "finetune"), photos, scorer, model, [], name="stage3")
        r = {"run": str(run), "taste": taste, **judge(truth, photos, be, ft, w_nima, w_human)}
        results.append(r)
        print(f"{run}: {taste} preferred={r['preferred']:.3f} score_kept={r['score_kept']:.3f} on {len(photos)} "
              f"framings; aim {r['objective_up']}/{r['moved']} moves raised the objective, taste follows "
              f"{r['preferred_where_up']:.2f} / {r['preferred_where_down']:.2f}; per photo: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["preferred_by_photo"].items()) + f"  ({time.time() - t:.0f}s)",
              flush=True)
    prefs = [r["preferred"] for r in results]
    print(f"personalization_rescore: runs={len(results)} worst_preferred={min(prefs):.3f} "
          f"mean_preferred={float(np.mean(prefs)):.3f} photos={len(photos)}")
    return results


if __name__ == "__main__":
    main()
