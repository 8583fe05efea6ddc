"""How many answers does a taste take? The learning curve of the loop, from one bootstrap.

For each SIMULATED taste (rlhf/simulated.py) and each way of choosing pairs, answers are added in steps
(10, 25, 50, 100 answered pairs by default) to one preference store, and after each step:

  reward     a reward model on all the answers so far (rayjobs.train_reward); its accuracy on held-out
             pairs (the bootstrap's pairs on the unseen photos, labelled by the taste WITHOUT noise)
  frozen     the bootstrap steered by that reward model, no fine-tuning (the few-pairs path, what
             `photographer crop --human_reward_model` runs: the reward model chooses each photo's crop among
             the bootstrap's candidate crops that keep 0.95 of its own crop's aesthetic score)
  finetuned  at the steps in --finetune_at only (stage 3 takes minutes): stage 3 from the bootstrap towards
             the reward model (--finetune_w_human, 1 by default) with the aesthetic-kept constraint (what
             `photographer round` fine-tunes with); its crops as `photographer crop --human_reward_model`
             makes them: the reward model chooses among its candidate crops that keep 0.95 of the
             bootstrap crop's score

each judged on the unseen photos (the bundled held-out photos and fixed framings of them) against the
bootstrap: `preferred` (how often the taste prefers the policy's crop; no preference counts half) and
`kept` (the policy's mean aesthetic score over the bootstrap's).

Pair choice (--selections): `uncertain` asks 10 diverse pairs, then at each step the pairs the newest
reward model is least sure about (rayjobs.pairs --select uncertain); `diverse` asks diverse pairs at
every step. Both from the bootstrap policy, so the two differ only in the choice.

Last line: `pairs_curve: pairs_to_080=N preferred_at_25_frozen=P preferred_at_25_finetuned=P
preferred_at_100_finetuned=P kept_min=K`, for the first selection in --selections (uncertain by default):
pairs_to_080 is the fewest answers at which every taste's reward model reaches 0.80 held-out accuracy
(nan if none does), the preferred rates are the worst taste's, kept_min the lowest kept of any of them.

    python bench/pairs_curve.py --bootstrap results/boot            # every taste, both selections
    python bench/pairs_curve.py --bootstrap results/boot --tastes tight --selections uncertain --finetune_at 100
    python bench/pairs_curve.py --out DIR                           # an existing DIR resumes: finished steps are kept

DIR holds `pairs_curve.md` (the table), `pairs_curve.png` (the curves), `pairs_curve.json` and per taste
and selection a folder with the store and, per step, the pairs, the reward model and the stage-3 run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.personalization import BenchConfig, bootstrap, heldout_pairs, stage3, unseen_photos  # noqa: E402
from rlhf.config import parse_config, run_dir  # noqa: E402
from rlhf.images import TRAIN_PHOTOS, bundled_photos  # noqa: E402
from rlhf.kept import FINETUNE_W_HUMAN  # noqa: E402

TARGETS = {"pairs_to_080": 30, "preferred_at_25_frozen": 0.70, "preferred_at_100_finetuned": 0.80, "kept": 0.95}
SELECTIONS = ("uncertain", "diverse")
# One step's numbers, in its folder, per steering and stage-3 weight ("moderated": the reward model chooses among
# the policy's candidate crops by its posterior predictive, each member moderated; earlier results are not reused).
RESULT = "result_{steer}_ft{finetune:g}_moderated.json"


@dataclass
class CurveConfig:
    """The loop's learning curve: held-out accuracy and preferred rate after each number of answers."""

    out: str | None = field(default=None, metadata={
        "help": "bench folder (default results/bench-pairs-curve-<time>); an existing one resumes"})
    bootstrap: str | None = field(default=None, metadata={
        "help": "reuse this stage-1 run folder or checkpoint (default: train one, shared by all tastes)"})
    bootstrap_timesteps: int = field(default=8000, metadata={"help": "stage-1 env steps when training here"})
    tastes: list[str] = field(default_factory=lambda: ["tight", "left_third", "warm"], metadata={
        "help": "simulated tastes (see rlhf.simulated.TASTES)"})
    answers: list[int] = field(default_factory=lambda: [10, 25, 50, 100], metadata={
        "help": "the numbers of answered pairs after which the reward model is trained and judged, rising"})
    selections: list[str] = field(default_factory=lambda: list(SELECTIONS), metadata={
        "help": "how pairs are chosen: uncertain (diverse first, then where the reward model is least sure) "
                "and/or diverse; the first one gives the last line"})
    finetune_at: list[int] = field(default_factory=lambda: [25, 100], metadata={
        "help": "the numbers of answers (of --answers) at which stage 3 also runs, for the first selection"})
    heldout_pairs: int = field(default=120, metadata={"help": "held-out pairs on the unseen photos"})
    variants: int = field(default=23, metadata={
        "help": "fixed framings per held-out photo besides the photo itself (9 photos x 24 = 216 unseen crops)"})
    noise: float = field(default=0.1, metadata={"help": "label noise of the simulated annotator"})
    w_human: float | None = field(default=None, metadata={
        "help": "the human score's weight steering the bootstrap (the aesthetic score's is 1 - w_human); default: "
                "the product's (photographer crop --w_human). Each "
                "setting keeps its own results in a step's folder"})
    finetune_w_human: float = field(default=FINETUNE_W_HUMAN, metadata={
        "help": "the human score's weight in stage 3 (the aesthetic score's is 1 - it), as `round`'s: at 1 the "
                "taste is the objective and the aesthetic-kept constraint alone keeps the aesthetic score"})
    finetune_timesteps: int = field(default=6144, metadata={"help": "stage-3 env steps"})
    reward_args: list[str] = field(default_factory=list, metadata={
        "help": "extra flags for train-reward, one per --reward_args=FLAG"})
    finetune_args: list[str] = field(default_factory=list, metadata={
        "help": "extra flags for finetune, one per --finetune_args=FLAG"})
    num_env_runners: int = field(default=1, metadata={"help": "PPO env runners (stage 1 and 3)"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        from rlhf.simulated import check_tastes

        check_tastes(self.tastes)
        if not self.answers or self.answers != sorted(set(self.answers)) or self.answers[0] < 2:
            raise ValueError(f"--answers must rise, from at least 2, got {self.answers}")
        bad = [s for s in self.selections if s not in SELECTIONS]
        if bad or not self.selections:
            raise ValueError(f"--selections must be among {list(SELECTIONS)}, got {self.selections}")
        if any(n not in self.answers for n in self.finetune_at):
            raise ValueError(f"--finetune_at {self.finetune_at} must be among --answers {self.answers}")

    def personalization(self) -> BenchConfig:
        """The personalization bench's settings these map onto (its bootstrap, pairs and stage 3 are reused)."""
        return BenchConfig(out=self.out, bootstrap=self.bootstrap, bootstrap_timesteps=self.bootstrap_timesteps,
                           tastes=self.tastes, heldout_pairs=self.heldout_pairs, variants=self.variants,
                           noise=self.noise, finetune_timesteps=self.finetune_timesteps,
                           **({} if self.w_human is None else {"w_nima": 1.0 - self.w_human, "w_human": self.w_human}),
                           finetune_args=self.finetune_args,
                           num_env_runners=self.num_env_runners, service=False, seed=self.seed)


def curve(cfg: CurveConfig, out: Path, taste: str, selection: str, policy: str, shared: dict) -> list[dict]:
    """One taste, one selection: answers added step by step; each step's numbers."""
    from dataclasses import replace

    from rayjobs import pairs, train_reward
    from rlhf.evaluation import aesthetic_kept, evaluate_policy, reward_model_accuracy
    from rlhf.kept import SteeringSettings
    from rlhf.pairs import save_pairs
    from rlhf.policy import CropPolicy
    from rlhf.preference import PreferenceRewardModel
    from rlhf.simulated import SimulatedAnnotator, preferred_rate
    from rlhf.store import PreferenceStore

    folder = out / taste / selection
    folder.mkdir(parents=True, exist_ok=True)
    store = PreferenceStore(folder / "preferences.sqlite")
    annotator = SimulatedAnnotator(taste, noise=cfg.noise, seed=cfg.seed)
    truth = SimulatedAnnotator(taste, noise=0.0)
    heldout = truth.annotate_pairs(shared["heldout"], shared["unseen_by_id"])
    boot_eval, photos = shared["boot_eval"], shared["unseen"]
    rows, prev_model = [], None
    result = RESULT.format(steer="default" if cfg.w_human is None else f"w{cfg.w_human:g}", finetune=cfg.finetune_w_human)
    steering = SteeringSettings() if cfg.w_human is None else SteeringSettings(w_human=cfg.w_human)
    for i, n in enumerate(cfg.answers):
        step = folder / f"answers_{n:03d}"
        model_path = step / "reward" / "human_reward_model.pth"
        if (step / result).exists():
            rows.append(json.loads((step / result).read_text()))
            prev_model = model_path
            continue
        t0 = time.time()
        need = n - len(store.pairs(answered=True, annotator=annotator.name))
        if need > 0 and not (step / "pairs" / "preference_pairs.json").exists():
            select = "uncertain" if selection == "uncertain" and prev_model is not None else "diverse"
            print(f"\n=== [{taste}/{selection}] {need} {select} pairs -> {n} answers ===", flush=True)
            pairs.run(pairs.PairsConfig(
                policy=policy, image=shared["train_files"], num_pairs=need, out=str(step / "pairs"),
                store=str(store.path), seed=cfg.seed + i, select=select,
                human_reward_model=str(prev_model) if select == "uncertain" else None))
        annotator.annotate_store(store, shared["train_photos"])
        answers = store.pairs(answered=True, annotator=annotator.name)
        answered = min(n, len(answers))
        if not model_path.exists():
            source = str(store.path)
            # The store may hold later steps' answers (a resumed run): this step learns from its first n.
            if len(answers) > n:
                source = str(save_pairs(step / "reward_pairs.json", answers[:n]))
            train_reward.main(["--preference_data", source, "--annotator", annotator.name,
                               "--out", str(step / "reward"), "--seed", str(cfg.seed), *cfg.reward_args])
        model = PreferenceRewardModel.load(model_path)
        accuracy, _ = reward_model_accuracy(model, heldout, shared["unseen_by_id"])
        w = steering.w_human
        steered = shared["boot_policy"].steered(model_path, w, steering.photo_min_kept)
        frozen = evaluate_policy(steered, photos, shared["scorer"], name="frozen")
        row: dict[str, Any] = {
            "taste": taste, "selection": selection, "answers": answered, "step": n, "accuracy": accuracy, "w_human": w,
            "preferred_frozen": preferred_rate(truth, photos, boot_eval.boxes, frozen.boxes),
            "kept_frozen": aesthetic_kept(frozen, boot_eval), "unsteered_frozen": steered.fallbacks}
        if n in cfg.finetune_at and selection == cfg.selections[0]:
            print(f"\n=== [{taste}/{selection}] stage 3 on the reward model of {answered} answers ===", flush=True)
            wf = cfg.finetune_w_human
            stage3(replace(cfg.personalization(), w_nima=1.0 - wf, w_human=wf), policy, model_path,
                   step / f"finetune_w{wf:g}", cfg.finetune_timesteps)
            # As `crop --human_reward_model` crops with it (and `round` after it): the reward model chooses among
            # its candidates, each keeping 0.95 of the bootstrap's crop.
            tuned_policy = CropPolicy.load(step / f"finetune_w{wf:g}").steered(model_path, w, steering.photo_min_kept)
            tuned = evaluate_policy(tuned_policy, photos, shared["scorer"], name="finetuned")
            row["w_human_finetuned"] = wf
            row["bootstrap_crop_finetuned"] = tuned_policy.fallbacks
            row["preferred_finetuned"] = preferred_rate(truth, photos, boot_eval.boxes, tuned.boxes)
            row["kept_finetuned"] = aesthetic_kept(tuned, boot_eval)
        row["seconds"] = round(time.time() - t0, 1)
        (step / result).write_text(json.dumps(row, indent=2, default=_plain) + "\n")
        print(f"[{taste}/{selection}] {answered} answers: " + ", ".join(
            f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float) and k != "seconds"), flush=True)
        rows.append(row)
        prev_model = model_path
    return rows


def summary(cfg: CurveConfig, rows: list[dict]) -> dict[str, float]:
    """The last line's numbers, for the first selection (worst taste; see the module docstring)."""
    first = [r for r in rows if r["selection"] == cfg.selections[0]]
    nan = float("nan")

    def worst(step: int, key: str) -> float:
        vals = [r[key] for r in first if r["step"] == step and key in r]
        return min(vals) if len(vals) == len(cfg.tastes) else nan

    reached = [n for n in cfg.answers if worst(n, "accuracy") >= 0.80]
    kept = [v for r in first for k, v in r.items() if k.startswith("kept_") and v == v]
    return {"pairs_to_080": reached[0] if reached else nan,
            "preferred_at_25_frozen": worst(25, "preferred_frozen"),
            "preferred_at_25_finetuned": worst(25, "preferred_finetuned"),
            "preferred_at_100_finetuned": worst(100, "preferred_finetuned"),
            "kept_min": min(kept) if kept else nan}


def table(rows: list[dict]) -> str:
    """pairs_curve.md: one row per taste, selection and step."""
    head = ("| taste | selection | answers | held-out accuracy | preferred, frozen | kept, frozen | "
            "preferred, fine-tuned {bootstrap's crop} | kept, fine-tuned |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        cells = [r["taste"], r["selection"], str(r["answers"])] + [
            _f(r.get(k)) for k in ("accuracy", "preferred_frozen", "kept_frozen")] + [
            _f(r.get("preferred_finetuned")) + (f" {{{r['bootstrap_crop_finetuned']}}}"
                                                if "bootstrap_crop_finetuned" in r else ""),
            _f(r.get("kept_finetuned"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Held-out accuracy and preferred rate against answers: a colour per taste, a line style per
    selection, fine-tuned policies as squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_pref) = plt.subplots(1, 2, figsize=(13, 4.2))
    tastes = list(dict.fromkeys(r["taste"] for r in rows))
    styles = {"uncertain": "-", "diverse": "--"}
    for ci, taste in enumerate(tastes):
        colour = f"C{ci}"
        for sel, ls in styles.items():
            rs = [r for r in rows if r["taste"] == taste and r["selection"] == sel]
            if not rs:
                continue
            x = [r["answers"] for r in rs]
            ax_acc.plot(x, [r["accuracy"] for r in rs], ls, color=colour, marker="o", label=f"{taste}, {sel}")
            ax_pref.plot(x, [r["preferred_frozen"] for r in rs], ls, color=colour, marker="o",
                         label=f"{taste}, {sel}, frozen")
            ft = [r for r in rs if "preferred_finetuned" in r]
            if ft:
                ax_pref.plot([r["answers"] for r in ft], [r["preferred_finetuned"] for r in ft], "s", color=colour,
                             markersize=8, label=f"{taste}, {sel}, fine-tuned")
    ax_acc.axhline(0.80, color="grey", lw=0.8)
    ax_pref.axhline(0.70, color="grey", lw=0.8)
    ax_pref.axhline(0.80, color="grey", lw=0.8, ls=":")
    for ax, title in ((ax_acc, "reward model: held-out accuracy"), (ax_pref, "preferred over the bootstrap (unseen)")):
        ax.set_xscale("log")
        ax.set_xlabel("answered pairs")
        ax.set_title(title)
        ax.set_ylim(0.3, 1.02)
        ax.grid(alpha=0.3)
    # Beside the panels, not on them: the curves fill both panels' lower right.
    ax_pref.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: CurveConfig) -> dict[str, float]:
    from rlhf.evaluation import evaluate_policy, photo_key
    from rlhf.images import load_collection
    from rlhf.policy import CropPolicy
    from rlhf.scorers import create_scorer

    out = run_dir(cfg.out, "bench-pairs-curve")
    (out / "bench_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    t0 = time.time()
    pcfg = cfg.personalization()
    policy = bootstrap(pcfg, out)
    unseen_files = unseen_photos(out, cfg.variants, cfg.seed)
    photos = load_collection([str(p) for p in unseen_files])
    boot_policy, scorer = CropPolicy.load(policy), create_scorer("default")
    print(f"\n=== the bootstrap's crops of {len(photos)} unseen photos ===", flush=True)
    shared = {"unseen": photos, "unseen_by_id": {p.id: p for p in photos} | {photo_key(p.id): p for p in photos},
              "heldout": heldout_pairs(pcfg, out, policy, unseen_files), "boot_policy": boot_policy,
              "scorer": scorer, "train_files": [str(p) for p in bundled_photos(TRAIN_PHOTOS)],
              "train_photos": load_collection(bundled_photos(TRAIN_PHOTOS)),
              "boot_eval": evaluate_policy(boot_policy, photos, scorer, name="bootstrap")}
    rows = [r for taste in cfg.tastes for sel in cfg.selections for r in curve(cfg, out, taste, sel, policy, shared)]
    res = summary(cfg, rows)
    (out / "pairs_curve.md").write_text(table(rows))
    (out / "pairs_curve.json").write_text(json.dumps({"rows": rows, "summary": res}, indent=2, default=_plain) + "\n")
    plot(rows, out / "pairs_curve.png")
    print(f"\n=== pairs curve ({time.time() - t0:.0f}s; SIMULATED annotators, noise {cfg.noise}) ===\n" + table(rows))
    print(f"targets: pairs_to_080 <= {TARGETS['pairs_to_080']}, preferred at 25 (frozen) >= "
          f"{TARGETS['preferred_at_25_frozen']}, at 100 (fine-tuned) >= {TARGETS['preferred_at_100_finetuned']}, "
          f"kept >= {TARGETS['kept']}; results in {out}")
    print("pairs_curve: " + " ".join(f"{k}={_f(v)}" for k, v in res.items()), flush=True)
    return res


def _f(v: Any) -> str:
    """A table cell: "—" for a number not measured, floats with 3 decimals, counts as they are."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _plain(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run(parse_config(CurveConfig, argv, prog="bench/pairs_curve.py"))


if __name__ == "__main__":
    main()
