"""Compare crop policies on unseen photos: aesthetic score, human score, agreement with held-out answers,
and, with --taste, a SIMULATED taste's verdict (how often it prefers each policy's crop to the first's).

    photographer evaluate --policies results/bootstrap-... results/finetune-... --names bootstrap final \\
        --image unseen/ --preference_data heldout.sqlite --human_reward_model .../human_reward_model.pth
    photographer evaluate --policies results/bootstrap-... --steer --human_reward_model ... --taste tight
                                  # the bootstrap against itself steered by the reward model (no fine-tuning)

Writes report.md, comparison.png (per photo, each policy's crop with its scores; split into
comparison_001.png, ... when long), scores.png (bar plots) and eval.json into --out, or by default
into <run of the last policy>/eval/ (the run folder holding its config.json;
results/evaluate-<time>/eval/ when it has none). The metrics are defined in rlhf/evaluation.py and
restated in the report.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.config import RESULTS_DIR, parse_config, save_config
from rlhf.evaluation import aesthetic_kept
from rlhf.images import HELDOUT_PHOTOS, bundled_photos
from rlhf.kept import MIN_KEPT, SteeringSettings


def _heldout() -> list[str]:
    return [str(p) for p in bundled_photos(HELDOUT_PHOTOS)]


@dataclass
class EvalConfig:
    """Compare policies on unseen photos: scores, agreement with held-out preferences, a simulated
    taste's verdict, report."""

    policies: list[str] = field(default_factory=list, metadata={
        "help": "policy checkpoints or run folders, e.g. the bootstrap and the fine-tuned one"})
    names: list[str] | None = field(default=None, metadata={
        "help": "a short name per policy for the report (default: the run folder names)"})
    image: list[str] = field(default_factory=_heldout, metadata={
        "help": "unseen photos: files, folders or globs (default: the bundled held-out photos)"})
    preference_data: str | None = field(default=None, metadata={
        "help": "held-out answered pairs (pairs JSON or preference store) for agreement (default: none)"})
    annotator: str | None = field(default=None, metadata={
        "help": "use this annotator's answers in --preference_data (default: consensus)"})
    human_reward_model: str | None = field(default=None, metadata={
        "help": "human_reward_model.pth whose human score of each crop to report (default: none)"})
    steer: bool = field(default=False, metadata={
        "help": "also evaluate the first policy steered by --human_reward_model, no fine-tuning (the few-pairs "
                "path, photographer crop --human_reward_model), as one more policy named '<first>+steered'"})
    steering: SteeringSettings = field(default_factory=SteeringSettings)
    taste: str | None = field(default=None, metadata={
        "help": "a SIMULATED taste of rlhf/simulated.py (e.g. tight) whose verdict to report: the share of "
                "photos where it prefers each policy's crop to the first policy's, ties half (default: none)"})
    scorer: str = field(default="default", metadata={"help": "aesthetic scorer (1-10)"})
    scorer_weights: str | None = field(default=None, metadata={
        "help": "local weights file for the scorer (default: the scorer's own)"})
    out: str | None = field(default=None, metadata={
        "help": "output folder (default: <run of the last policy>/eval/)"})
    seed: int = field(default=0, metadata={"help": "seed (only used by stochastic policies' warm-up)"})

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("--policies needs at least one policy checkpoint or run folder")
        if self.names is not None and len(self.names) != len(self.policies):
            raise ValueError(f"--names gives {len(self.names)} names for {len(self.policies)} policies")
        for flag, value in (("--preference_data", self.preference_data),
                            ("--human_reward_model", self.human_reward_model)):
            if value and not Path(value).exists():
                raise ValueError(f"{flag} {value}: no such file")
        if self.steer and not self.human_reward_model:
            raise ValueError("--steer needs --human_reward_model: the reward model that steers the policy")
        if self.taste is not None:
            from rlhf.simulated import TASTES

            if self.taste not in TASTES:
                raise ValueError(f"--taste {self.taste}: unknown; choose from {sorted(TASTES)}")


def _default_out(policy: str) -> Path:
    from rlhf.policy import latest_checkpoint, run_folder_of

    run = run_folder_of(latest_checkpoint(policy))
    base = run if run is not None else RESULTS_DIR / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    return base / "eval"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def plot_scores(evals, path: Path) -> Path:
    """scores.png: mean aesthetic score per policy (per-photo dots), and human score / agreement bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [e.name for e in evals]
    x = np.arange(len(evals))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(evals) + 4), 3.8))
    ax1.bar(x, [e.aesthetic_mean for e in evals], color="tab:blue", alpha=0.7, label="crop (mean)")
    for i, e in enumerate(evals):
        ax1.scatter([i] * len(e.aesthetic), list(e.aesthetic.values()), color="k", s=12, zorder=3)
    ax1.axhline(evals[0].whole_photo_aesthetic_mean, color="grey", ls="--", lw=1, label="whole photo (mean)")
    ax1.set_xticks(x, names)
    ax1.set_ylabel("aesthetic score (1-10)")
    ax1.set_title("aesthetic score of the crop")
    ax1.legend(fontsize=8)
    width = 0.38
    human = [e.human_mean if e.human_mean is not None else np.nan for e in evals]
    agree = [e.agreement if e.agreement is not None else np.nan for e in evals]
    ax2.bar(x - width / 2, human, width, label="human score (mean)", color="tab:orange")
    ax2.bar(x + width / 2, agree, width, label="agreement with held-out answers", color="tab:green")
    ax2.axhline(0.5, color="grey", ls=":", lw=1)
    ax2.set_ylim(0, 1)
    ax2.set_xticks(x, names)
    ax2.set_title("personal fit (0.5 = average crop / chance)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison_sheet(evals, photos, path: Path) -> list[Path]:
    """comparison.png (comparison_001.png, ... when long): one row per photo: the photo with every
    policy's box, then each policy's crop. Returns the pages."""
    from rlhf.contact_sheet import contact_sheet, crop_row

    rows = []
    for photo in photos:
        boxes = [e.boxes[photo.id] for e in evals]
        captions = []
        for e in evals:
            cap = f"{e.name}: aesthetic {e.aesthetic[photo.id]:.2f}"
            if e.human is not None:
                cap += f"\nhuman {e.human[photo.id]:.2f}"
            captions.append(cap)
        rows.append(crop_row(photo.pixels, boxes, captions, Path(photo.id.split("#")[0]).stem))
    colours = ("red", "blue", "green", "yellow")  # rlhf.contact_sheet.COLORS, in order
    legend = ", ".join(f"{e.name} = {colours[i % len(colours)]}" for i, e in enumerate(evals))
    return contact_sheet(rows, path, title=f"per photo: each policy's crop ({legend})")


def write_report(evals, photos, cfg: EvalConfig, out: Path, extra: dict | None = None,
                 sheets: Sequence[str] = ("comparison.png",)) -> Path:
    """report.md: the table of scores, extra lines, the comparison pages (`sheets`, names in `out`),
    the per-photo boxes and the definitions of the metrics."""
    lines = ["# Policy evaluation on unseen photos", ""]
    lines += [f"{len(photos)} photos; aesthetic scorer `{cfg.scorer}`; human reward model "
              f"`{cfg.human_reward_model or 'none'}`; held-out preferences `{cfg.preference_data or 'none'}`"
              + (f" (annotator `{cfg.annotator}`)" if cfg.annotator else "") + ".", ""]
    lines += ["| policy | aesthetic (crop) | aesthetic kept | aesthetic (whole photo) | human score | "
              "agreement (pairs) | ms/photo | source |", "|---|---|---|---|---|---|---|---|"]
    for e in evals:
        lines.append(f"| {e.name} | {_fmt(e.aesthetic_mean)} | {_fmt(aesthetic_kept(e, evals[0]))} | "
                     f"{_fmt(e.whole_photo_aesthetic_mean)} | {_fmt(e.human_mean)} | {_fmt(e.agreement)} "
                     f"({e.agreement_pairs}) | {e.ms_per_photo:.1f} | `{e.source}` |")
    acc = next((e for e in evals if e.reward_model_accuracy is not None), None)
    if acc is not None:
        lines += ["", f"Reward model's accuracy on the held-out pairs: **{_fmt(acc.reward_model_accuracy)}** "
                      f"({acc.reward_model_pairs} pairs, ties excluded)."]
    for e in evals[1:]:
        for k, v in e.extra.items():
            if k.startswith("preferred_by_"):
                lines += ["", f"{k.removeprefix('preferred_by_')} (SIMULATED) prefers {e.name}'s crop to "
                              f"{evals[0].name}'s on **{_fmt(v)}** of {len(photos)} photos (ties half)."]
    for k, v in (extra or {}).items():
        lines += ["", f"{k}: {v}"]
    for sheet in sheets:
        lines += ["", f"![side by side]({sheet})"]
    lines += ["", "![scores](scores.png)", "",
              "## Per photo", "", "| photo | " + " | ".join(e.name for e in evals) + " |",
              "|---|" + "---|" * len(evals)]
    for p in photos:
        cells = []
        for e in evals:
            c = f"{_fmt(e.aesthetic[p.id], 2)}"
            if e.human is not None:
                c += f" / {_fmt(e.human[p.id], 2)}"
            cells.append(f"{list(e.boxes[p.id])} {c}")
        lines.append(f"| {Path(p.id.split('#')[0]).name}{'#' + p.id.split('#')[1] if '#' in p.id else ''} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Cells: box [left, top, right, bottom] in pixels, aesthetic score"
              + (" / human score" if any(e.human is not None for e in evals) else "") + ".", "",
              "## Definitions", "",
              "- **aesthetic**: the scorer's 1-10 score of the policy's greedy crop; the whole photo's score "
              "is shown for reference.",
              f"- **aesthetic kept**: the policy's mean aesthetic score over {evals[0].name}'s (the first policy's) "
              f"on the same photos; fine-tuning aims to keep at least {MIN_KEPT} of it (finetune --min_kept).",
              "- **human score**: sigmoid of the human reward model's centred reward, in [0, 1]; 0.5 is an "
              "average crop of the reward model's training pairs.",
              "- **agreement**: over held-out answered pairs on these photos (ties excluded), the fraction "
              "where the policy's crop overlaps (IoU) the preferred crop more than the other one; equal "
              "overlap counts half; 0.5 is chance.",
              "- **reward model's accuracy**: over the held-out pairs, the fraction where the reward model "
              "gives the preferred crop the higher reward.",
              "- **prefers ... on**: with --taste, the share of photos where that simulated taste, without "
              "noise, prefers the policy's crop to the first policy's; no preference counts half; 0.5 = "
              "the taste sees no change.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run(cfg: EvalConfig) -> Path:
    """Evaluate every policy; returns the output folder (report.md, comparison.png, scores.png, eval.json)."""
    from rlhf.evaluation import evaluate_policy
    from rlhf.images import load_collection
    from rlhf.policy import CropPolicy
    from rlhf.scorers import create_scorer

    out = Path(cfg.out) if cfg.out else _default_out(cfg.policies[-1])
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    save_config(cfg, out)
    photos = load_collection(cfg.image)
    scorer = create_scorer(cfg.scorer, weights=cfg.scorer_weights)
    reward_model = None
    if cfg.human_reward_model:
        from rlhf.preference import PreferenceRewardModel

        reward_model = PreferenceRewardModel.load(cfg.human_reward_model)
    pairs = None
    if cfg.preference_data:
        from rlhf.store import load_preference_data

        pairs = load_preference_data(cfg.preference_data, annotator=cfg.annotator)
    names = cfg.names or [_name(p) for p in cfg.policies]
    # A fine-tuned policy crops as `crop` does: each crop held to --photo_min_kept of its bootstrap's.
    policies = [CropPolicy.load(path).floored(cfg.steering.photo_min_kept) for path in cfg.policies]
    if cfg.steer:
        policies.append(policies[0].steered(cfg.human_reward_model, cfg.steering.w_human,
                                            cfg.steering.photo_min_kept))
        names = [*names, f"{names[0]}+steered"]
    evals = []
    for policy, name in zip(policies, names, strict=True):
        e = evaluate_policy(policy, photos, scorer, reward_model, pairs, name=name, seed=cfg.seed)
        evals.append(e)
        line = f"{name}: aesthetic {_fmt(e.aesthetic_mean)} (whole photo {_fmt(e.whole_photo_aesthetic_mean)})"
        if evals[0] is not e:
            line += f", aesthetic kept {_fmt(aesthetic_kept(e, evals[0]))} of {evals[0].name}'s"
        if reward_model is not None:
            line += f", reward model's human score {_fmt(e.human_mean)}"
        if e.agreement_pairs:
            line += f", agreement {_fmt(e.agreement)} on {e.agreement_pairs} pairs"
        given = {"unsteered": "its unsteered", "bootstrap_crop": "the bootstrap's"}[policy.fallback]
        if policy.steering is not None:
            line += f"; {policy.fallbacks} of {len(photos)} photos kept {given} crop"
        elif policy.floor is not None and policy.backoffs + policy.fallbacks:
            line += (f"; the --photo_min_kept floor backed off on {policy.backoffs} of {len(photos)} photos and gave "
                     f"{policy.fallbacks} {given} crop")
        print(line, flush=True)
    if cfg.taste is not None:
        from rlhf.simulated import SimulatedAnnotator, preferred_rate

        annotator = SimulatedAnnotator(cfg.taste, noise=0.0)
        for e in evals[1:]:
            share = preferred_rate(annotator, photos, evals[0].boxes, e.boxes)
            e.extra[f"preferred_by_{annotator.name}"] = share
            print(f"{annotator.name} (SIMULATED person, noiseless) prefers {e.name}'s crop to {evals[0].name}'s "
                  f"on {_fmt(share)} of {len(photos)} unseen photos (ties half; 0.5: no difference to it); "
                  f"reward model's human score {_fmt(evals[0].human_mean)} -> {_fmt(e.human_mean)}", flush=True)
    if evals[0].reward_model_accuracy is not None:
        print(f"reward model: held-out accuracy {_fmt(evals[0].reward_model_accuracy)} on "
              f"{evals[0].reward_model_pairs} pairs", flush=True)
    if pairs is not None and not evals[0].agreement_pairs:
        print(f"note: none of the {len(pairs)} answered pairs in {cfg.preference_data} is on these photos; "
              "agreement is not measured", flush=True)
    report = write_outputs(evals, photos, cfg, out)
    print(f"report: {report}", flush=True)
    return out


def write_outputs(evals, photos, cfg: EvalConfig, out: Path, extra: dict | None = None,
                  sheet_photos: Sequence | None = None) -> Path:
    """comparison.png, scores.png, eval.json and report.md for evaluated policies; returns the report.

    sheet_photos: the photos comparison.png shows (default: all of them)."""
    for e in evals:
        e.extra["aesthetic_kept"] = aesthetic_kept(e, evals[0])
    pages = comparison_sheet(evals, photos if sheet_photos is None else sheet_photos, out / "comparison.png")
    plot_scores(evals, out / "scores.png")
    (out / "eval.json").write_text(json.dumps({"photos": [p.id for p in photos],
                                               "policies": [e.to_json() for e in evals],
                                               **({"extra": extra} if extra else {})}, indent=2) + "\n")
    return write_report(evals, photos, cfg, out, extra, sheets=[p.name for p in pages])


def _name(policy: str) -> str:
    p = Path(policy).resolve()
    return p.parent.parent.name if p.name.startswith("ckpt_") else p.name


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(EvalConfig, argv, prog="photographer evaluate"))


if __name__ == "__main__":
    main()
