"""The whole loop on the bundled photos, as `make demo` runs it (about 11 minutes on 2 cores):

  1. stage 1   bootstrap a crop policy on the default (proxy) aesthetic scorer
  2. crop      crop the held-out photos, contact sheet
  3. pairs     crop pairs proposed by the policy, into a preference store
  4. annotate  a SIMULATED annotator answers them (a person would use `photographer annotate`)
  5. reward    train the human reward model on the answers
  6. stage 3   fine-tune the policy on 0.7 * aesthetic + 0.3 * human, keeping >= 0.95 of the
               bootstrap's aesthetic score (finetune --min_kept)
  7. evaluate  bootstrap vs fine-tuned vs the few-pairs path (the bootstrap steered by the reward model,
               no fine-tuning) on held-out photos: the reward model's score of each, how often the
               simulated annotator's taste prefers its crop, the aesthetic score kept; report, contact
               sheet, plots

Each step calls the same command line a user would type; the folder of each is printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.config import parse_config, run_dir, save_config
from rlhf.images import HELDOUT_PHOTOS, TRAIN_PHOTOS, bundled_photos


@dataclass
class DemoConfig:
    """The whole photographer loop on the bundled photos."""

    out: str | None = field(default=None, metadata={"help": "demo folder (default results/demo-<time>)"})
    timesteps: int = field(default=10000, metadata={
        "help": "stage 1 env steps; enough for the bootstrap policy to level off"})
    finetune_timesteps: int = field(default=4096, metadata={
        "help": "stage 3 env steps (8 PPO iterations): enough to show the loop, not a tuned stage 3, since a "
                "stage-3 step costs about 3x a stage-1 step"})
    num_pairs: int = field(default=100, metadata={"help": "pairs to annotate"})
    taste: str = field(default="tight", metadata={"help": "the simulated annotator's taste"})
    noise: float = field(default=0.1, metadata={"help": "the simulated annotator's label noise"})
    num_env_runners: int = field(default=1, metadata={"help": "env runners for PPO"})
    stage1_only: bool = field(default=False, metadata={"help": "stop after stage 1 and the crops"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def run(cfg: DemoConfig) -> Path:
    out = run_dir(cfg.out, "demo")
    save_config(cfg, out)
    t0 = time.time()
    train = [str(p) for p in bundled_photos(TRAIN_PHOTOS)]
    heldout = [str(p) for p in bundled_photos(HELDOUT_PHOTOS)]
    common = ["--num_env_runners", str(cfg.num_env_runners), "--seed", str(cfg.seed)]

    from rayjobs import bootstrap, crop

    t = _step(f"1. stage 1: bootstrap on {len(train)} photos, {cfg.timesteps} steps")
    bootstrap.main(["--image", *train, "--timesteps", str(cfg.timesteps), "--out", str(out / "bootstrap"), *common])
    print(f"stage 1 took {time.time() - t:.0f}s", flush=True)

    _step("2. crop the held-out photos with the bootstrap policy")
    crop.main(["--policy", str(out / "bootstrap"), "--image", *heldout, "--out", str(out / "crops")])
    if cfg.stage1_only:
        print(f"\ndemo (stage 1) done in {time.time() - t0:.0f}s: {out}/crops/contact_sheet_001.png", flush=True)
        return out

    from rayjobs import evaluate, finetune, pairs, train_reward
    from rlhf.images import load_collection
    from rlhf.simulated import SimulatedAnnotator
    from rlhf.store import PreferenceStore

    _step(f"3. {cfg.num_pairs} crop pairs from the policy")
    pairs.main(["--policy", str(out / "bootstrap"), "--image", *train, "--num_pairs", str(cfg.num_pairs),
                "--out", str(out / "pairs"), "--seed", str(cfg.seed)])

    _step(f"4. SIMULATED annotator (taste={cfg.taste}, noise={cfg.noise}) answers them")
    store = PreferenceStore(out / "pairs" / "preferences.sqlite")
    annotator = SimulatedAnnotator(cfg.taste, noise=cfg.noise, seed=cfg.seed)
    n = annotator.annotate_store(store, load_collection(train))
    store.export_json(out / "pairs" / "annotated_pairs.json")
    print(f"{n} answers from simulated:{cfg.taste}; exported {out / 'pairs' / 'annotated_pairs.json'}", flush=True)

    _step("5. human reward model")
    train_reward.main(["--preference_data", str(out / "pairs" / "preferences.sqlite"), "--out", str(out / "reward")])

    _step(f"6. stage 3: fine-tune on 0.7*aesthetic + 0.3*human, {cfg.finetune_timesteps} steps")
    finetune.main(["--policy", str(out / "bootstrap"), "--human_reward_model", str(out / "reward" /
                   "human_reward_model.pth"), "--timesteps", str(cfg.finetune_timesteps),
                   "--out", str(out / "finetune"), *common])

    _step("7. evaluate bootstrap vs fine-tuned vs steered (the few-pairs path) on held-out photos")
    evaluate.main(["--policies", str(out / "bootstrap"), str(out / "finetune"), "--names", "bootstrap",
                   "finetuned", "--steer", "--image", *heldout, "--human_reward_model",
                   str(out / "reward" / "human_reward_model.pth"), "--taste", cfg.taste, "--out", str(out / "eval")])
    for p in json.loads((out / "eval" / "eval.json").read_text())["policies"][1:]:
        print(f"{p['name']}: aesthetic kept on the held-out photos {p['extra']['aesthetic_kept']:.3f} of the "
              "bootstrap's (each crop held to >= 0.95 of the bootstrap's crop)", flush=True)
    print(f"\ndemo done in {time.time() - t0:.0f}s. Look at:\n  {out}/crops/contact_sheet_001.png\n"
          f"  {out}/eval/\n  {out}/bootstrap/curves.png  {out}/finetune/curves.png", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(DemoConfig, argv, prog="photographer demo"))


if __name__ == "__main__":
    main()
