"""The training curves as a figure and as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from rlhf.preference.training import TrainHistory


def plot_history(hist: TrainHistory, path: str | Path, title: str = "human reward model") -> Path:
    """reward_training.png: BT loss (train, held-out) and held-out accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(hist.epochs, hist.train_loss, label="train")
    if hist.n_val:
        ax1.plot(hist.epochs, hist.val_loss, label=f"held-out ({hist.validation or f'{hist.n_val} pairs'})")
    ax1.axhline(math.log(2), color="grey", ls=":", lw=1, label="chance (ln 2)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("Bradley-Terry log-loss")
    ax1.legend()
    ax2.plot(hist.epochs, hist.train_accuracy, label="train")
    if hist.n_val:
        ax2.plot(hist.epochs, hist.val_accuracy, label="held-out")
    ax2.axhline(0.5, color="grey", ls=":", lw=1)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("pair accuracy (ties excluded)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.axvline(hist.best_epoch, color="k", ls="--", lw=0.8)
    f = hist.final()
    acc = f["val_accuracy"]
    fig.suptitle(f"{title}: l1 {hist.l1:g}, epoch {hist.best_epoch}"
                 + (f", held-out accuracy {acc:.3f}" if acc is not None and not math.isnan(acc) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def history_json(hist: TrainHistory) -> str:
    return json.dumps(dataclasses.asdict(hist), indent=2)
