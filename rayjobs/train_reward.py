"""Stage 2: train the human reward model on one person's answered crop pairs.

    photographer train-reward --preference_data prefs.sqlite --epochs 50 --out results/reward
    photographer train-reward --preference_data pairs.json --annotator alice
    python -m rayjobs.train_reward ...            # what `ray job submit` runs

Writes into --out (default results/reward-<time>/): config.json, human_reward_model.pth (head,
feature normaliser, centring offset, backbone name + weights, config), reward_training.png (loss
and held-out accuracy per epoch), metrics.json (final held-out accuracy and log-loss, pair
counts, timings), history.json (every epoch) and features_cache.pt (crop embeddings, reused when
the same --out is trained again, e.g. after more pairs were answered).

Training is a few seconds of one process once the crops are embedded, so it needs no Ray cluster;
as a script it can still be submitted as a Ray job like the other stages.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rlhf.config import parse_config, run_dir, save_config
from rlhf.preference import (
    CropFeaturizer,
    PreferenceDataError,
    RewardTrainConfig,
    examples_from_pairs,
    history_json,
    plot_history,
    train_reward_model,
)

MODEL_FILE = "human_reward_model.pth"
CACHE_FILE = "features_cache.pt"


def _json_safe(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def run(cfg: RewardTrainConfig, log: Callable[[str], None] | None = print) -> Path:
    """Train on cfg.preference_data; returns the run folder holding human_reward_model.pth."""
    from rlhf.store import load_preference_data

    if not cfg.preference_data:
        raise ValueError("--preference_data is required: a pairs JSON file or a preference store")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: no CUDA device is available here; use --device cpu")
    source = Path(cfg.preference_data)
    pairs = load_preference_data(source, annotator=cfg.annotator)
    who = f"annotator {cfg.annotator!r}" if cfg.annotator else "any annotator (consensus)"
    if not pairs:
        raise PreferenceDataError(f"{source}: no answered pairs from {who}; annotate some first "
                                  "(photographer annotate)")
    t0 = time.perf_counter()
    examples = examples_from_pairs(pairs, source)
    n_ties = sum(ex.y == 0.5 for ex in examples)
    if len(examples) - n_ties < 1:
        raise PreferenceDataError(f"{source}: all {len(examples)} answered pairs from {who} are 'no "
                                  "preference'; a reward model needs at least one pair with a winner")
    out = run_dir(cfg.out, "reward")
    save_config(cfg, out)
    if log:
        log(f"{len(examples)} answered pairs ({n_ties} without preference) on "
            f"{len({ex.photo.id for ex in examples})} photos from {source} [{who}] -> {out}")

    fz = CropFeaturizer(cfg.backbone, cfg.backbone_weights, cfg.device)
    cached = fz.load_cache(out / CACHE_FILE)
    if log and cached:
        log(f"reusing {cached} cached crop embeddings from {out / CACHE_FILE}")
    model, hist = train_reward_model(examples, cfg, fz, log=log)
    model.save(out / MODEL_FILE)
    fz.save_cache(out / CACHE_FILE)
    plot_history(hist, out / "reward_training.png",
                 title=f"human reward model ({cfg.annotator or 'consensus'})")
    metrics = _json_safe(hist.final())
    metrics.update(n_ties=n_ties, source=str(source), annotator=cfg.annotator,
                   centring_offset=model.offset, seconds_total=round(time.perf_counter() - t0, 2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "history.json").write_text(history_json(hist) + "\n")
    if log:
        acc = metrics["val_accuracy"]
        log(f"held-out accuracy: {acc if acc is None else f'{acc:.3f}'} on {hist.n_val} pairs; "
            f"wrote {out / MODEL_FILE}")
    return out


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(RewardTrainConfig, argv, prog="photographer train-reward")
    return run(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
