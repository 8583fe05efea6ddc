"""One improvement round of the loop as one command: pairs, answers, reward model, policy, evaluation.

    photographer round --run results/me --policy results/boot   # round 1: proposes pairs, asks for answers
    photographer annotate --store results/me/preferences.sqlite  # (the command it prints)
    photographer round --run results/me                         # goes on once they are answered
    photographer round --run results/me                         # the next round, from the newest policy
    photographer round --run results/me --policy results/boot --simulate tight   # a SIMULATED person answers

Each call finishes the run's newest unfinished round, or starts the next one, in `DIR/round_NNN/`
(its config.json, state.json and one folder per step):

  1. pairs     --pairs new crop pairs from the current policy (the previous round's; round 1: the
               bootstrap), chosen where the newest reward model is least sure once there is one
               (photographer pairs --select uncertain), added to the run's store DIR/preferences.sqlite
  2. answers   without --simulate, prints the annotation command and stops: run `round` again once
               the pairs are answered; with --simulate TASTE a SIMULATED annotator answers them
  3. reward    a reward model on all the answers so far (photographer train-reward)
  4. policy    under --finetune_from answers, the bootstrap steered by the reward model with no
               fine-tuning (the few-pairs path, photographer crop --human_reward_model: the reward model
               chooses among the bootstrap's candidate crops); from then on, stage 3 fine-tunes the
               bootstrap towards the reward model (--finetune_w_human) while keeping --min_kept of the
               aesthetic score (photographer finetune --min_kept), and the reward model chooses among
               the fine-tuned policy's candidates
  5. evaluate  this round's policy against the previous round's (round 1: the bootstrap) on held-out
               photos: the aesthetic score kept, the reward model's human score, and with --simulate how
               often the taste prefers this round's crop; report and pictures in round_NNN/eval/

DIR/rounds.md holds one row per finished round. A step's outputs are complete before state.json (written
atomically) records the step, and a step that was cut short starts again without adding pairs or answers
twice, so after a stop or a kill the same command goes on where it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.config import flat_settings, load_run_config, parse_config, parse_config_given, save_config
from rlhf.images import HELDOUT_PHOTOS, TRAIN_PHOTOS, bundled_photos
from rlhf.kept import FINETUNE_W_HUMAN, MIN_KEPT, SteeringSettings
from rlhf.preference.training import one_torch_thread

if TYPE_CHECKING:
    from rlhf.policy import CropPolicy

STORE = "preferences.sqlite"
STATE = "state.json"
TABLE = "rounds.md"
STEPS = ("pairs", "answers", "reward", "policy", "evaluate")
# What decides a round's results: an unfinished round goes on only with the settings it started with.
RESULT_FIELDS = ("pairs", "image", "heldout", "simulate", "noise", "annotator", "finetune_from", "w_human",
                 "finetune_w_human", "min_kept", "photo_min_kept", "reward_args", "finetune_args", "seed")


def _train_photos() -> list[str]:
    return [str(p) for p in bundled_photos(TRAIN_PHOTOS)]


def _heldout_photos() -> list[str]:
    return [str(p) for p in bundled_photos(HELDOUT_PHOTOS)]


@dataclass
class RoundConfig:
    """One improvement round: pairs from the current policy, answers, reward model, policy, evaluation.

    When the round fine-tunes, stage 3's weights are --finetune_w_human and 1 - it, and --min_kept is its
    constraint; the steering settings steer only.
    """

    run: str = field(default="", metadata={"help": "the run folder that holds the rounds and the preference "
                                                   "store; required"})
    policy: str | None = field(default=None, metadata={
        "help": "the bootstrap policy every round starts from (checkpoint or run folder): needed by the first "
                "round, which records it for the later ones; default: the recorded one"})
    pairs: int = field(default=25, metadata={"help": "new crop pairs to answer this round"})
    finetune_from: int = field(default=100, metadata={
        "help": "answers from which the round fine-tunes the bootstrap (stage 3); with fewer, the bootstrap is "
                "steered by the reward model with no fine-tuning (a few dozen pairs teach a reward model, not "
                "a policy)"})
    steering: SteeringSettings = field(default_factory=SteeringSettings)
    min_kept: float = field(default=MIN_KEPT, metadata={
        "help": "when the round fine-tunes: the share of the bootstrap's aesthetic score stage 3 keeps "
                "(photographer finetune --min_kept)"})
    finetune_w_human: float = field(default=FINETUNE_W_HUMAN, metadata={
        "help": "the human score's weight when the round fine-tunes (the aesthetic score's is 1 - it): at 1 the "
                "taste is stage 3's objective and its --min_kept constraint alone keeps the aesthetic score"})
    simulate: str | None = field(default=None, metadata={
        "help": "a SIMULATED taste of rlhf/simulated.py (e.g. tight) that answers the pairs and judges the "
                "evaluation, for tests and benchmarks; default none: a person answers"})
    noise: float = field(default=0.1, metadata={"help": "with --simulate: the share of its answers flipped"})
    annotator: str | None = field(default=None, metadata={
        "help": "without --simulate: wait for this annotator's answers and learn from them only; default: "
                "anyone's (the store's consensus)"})
    image: list[str] = field(default_factory=_train_photos, metadata={
        "help": "photos the pairs are cropped from", "help_default": "the bundled training photos"})
    heldout: list[str] = field(default_factory=_heldout_photos, metadata={
        "help": "photos the round is evaluated on, none of them in --image",
        "help_default": "the bundled held-out photos"})
    reward_args: list[str] = field(default_factory=list, metadata={
        "help": "extra flags for train-reward, one per --reward_args=FLAG: --reward_args=--max_inputs=3"})
    finetune_args: list[str] = field(default_factory=list, metadata={
        "help": "extra flags for finetune, one per --finetune_args=FLAG: --finetune_args=--timesteps=4096"})
    seed: int = field(default=0, metadata={"help": "random seed (pairs, answers' noise, training)"})

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("--run is required: the run folder that holds the rounds")
        if self.pairs < 1 or self.finetune_from < 1:
            raise ValueError("--pairs and --finetune_from must be at least 1")
        if not 0.0 < self.finetune_w_human <= 1.0:
            raise ValueError(f"--finetune_w_human must be in (0, 1], got {self.finetune_w_human}")
        if not 0.0 <= self.min_kept <= 1.0:
            raise ValueError(f"--min_kept must be in [0, 1], got {self.min_kept}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"--noise must be in [0, 1], got {self.noise}")
        if self.simulate is not None:
            from rlhf.simulated import TASTES

            if self.simulate not in TASTES:
                raise ValueError(f"--simulate {self.simulate}: unknown taste; choose from {sorted(TASTES)}")


# --- the run folder ------------------------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def round_folder(run: Path, k: int) -> Path:
    return run / f"round_{k:03d}"


def read_state(folder: Path) -> dict[str, Any]:
    """A round's finished steps and what each produced ({} for a round not started)."""
    path = folder / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def rounds(run: Path) -> list[int]:
    """The run's round numbers, in order."""
    return sorted(int(p.name.removeprefix("round_")) for p in run.glob("round_[0-9][0-9][0-9]") if p.is_dir())


def finished(state: dict[str, Any]) -> bool:
    return all(s in state for s in STEPS)


def _bootstrap(cfg: RoundConfig, run: Path) -> str:
    """The bootstrap policy: the one the first round recorded, or --policy for a new run."""
    from rlhf.policy import latest_checkpoint

    given = str(latest_checkpoint(cfg.policy)) if cfg.policy else None
    first = round_folder(run, 1) / "config.json"
    if not first.is_file():
        if not given:
            raise ValueError(f"{run} has no round yet: give the bootstrap policy with --policy")
        return given
    recorded = load_run_config(first)["bootstrap"]
    if given and given != recorded:
        raise ValueError(f"{run} improves {recorded}; --policy {cfg.policy} is another policy: give a new --run")
    return recorded


def _check_same(cfg: RoundConfig, folder: Path) -> None:
    saved = flat_settings(RoundConfig, load_run_config(folder))
    now = flat_settings(RoundConfig, asdict(cfg))
    changed = [k for k in RESULT_FIELDS if k in saved and saved[k] != now[k]]
    if changed:
        raise ValueError(f"{folder.name} was started with {', '.join(f'--{k} {saved[k]}' for k in changed)}: "
                         f"finish it with the same settings (or delete {folder} to start it again)")


def load_policy(desc: dict[str, Any]) -> CropPolicy:
    """A round's policy from its record: a policy folder, steered when the record names a reward model (the
    bootstrap, or a fine-tuned policy whose crops keep the record's floor of its bootstrap's), else a
    fine-tuned one held to its bootstrap's crops by the floor alone (CropPolicy.floored; older records)."""
    from rlhf.policy import CropPolicy

    policy = CropPolicy.load(desc["policy"])
    if not desc.get("human_reward_model"):
        return policy.floored(desc.get("photo_min_kept", 0.0))
    return policy.steered(desc["human_reward_model"], desc["w_human"], desc.get("photo_min_kept", 0.0))


# --- the steps -----------------------------------------------------------------------------------

@dataclass
class Round:
    """What a round's steps share: its settings, folders, the bootstrap and the previous round's state."""

    cfg: RoundConfig
    run: Path
    k: int
    bootstrap: str
    previous: dict[str, Any] | None
    state: dict[str, Any]

    @property
    def folder(self) -> Path:
        return round_folder(self.run, self.k)

    @property
    def store(self) -> Path:
        return self.run / STORE

    def current_policy(self) -> dict[str, Any]:
        """The policy this round improves on: the previous round's, or the bootstrap."""
        return self.previous["policy"] if self.previous else {"policy": self.bootstrap, "kind": "bootstrap"}


def step_pairs(r: Round) -> dict[str, Any] | None:
    from rayjobs import pairs as pairs_job
    from rlhf.pairs import PairsFormatError, load_pairs
    from rlhf.store import PreferenceStore

    out = r.folder / "pairs"
    path = out / "preference_pairs.json"
    current = r.current_policy()
    model = r.previous["reward"]["model"] if r.previous else None
    select = "uncertain" if model else "diverse"
    try:
        made = load_pairs(path) if path.is_file() else None  # written whole (atomically), before the store
    except PairsFormatError:
        made = None
    if made is None:
        pairs_job.run(pairs_job.PairsConfig(
            policy=current["policy"], image=r.cfg.image, num_pairs=r.cfg.pairs, out=str(out), store=str(r.store),
            select=select, human_reward_model=current.get("human_reward_model") or model,
            steer=bool(current.get("human_reward_model")),
            **({"steering": SteeringSettings(current["w_human"], current.get("photo_min_kept", 0.0))}
               if current.get("human_reward_model") else {}),
            seed=r.cfg.seed + r.k - 1))
        made = load_pairs(path)
    PreferenceStore(r.store).add_pairs(made)  # known ids are skipped: a kill after the file is made up here
    return {"ids": [p.id for p in made], "select": select, "from": current}


def step_answers(r: Round) -> dict[str, Any] | None:
    """The answers to this round's pairs; None (after saying how to give them) while some are missing."""
    from rlhf.store import PreferenceStore

    store = PreferenceStore(r.store)
    who = r.cfg.annotator
    if r.cfg.simulate:
        from rlhf.simulated import SimulatedAnnotator

        annotator = SimulatedAnnotator(r.cfg.simulate, noise=r.cfg.noise, seed=r.cfg.seed)
        n = annotator.annotate_store(store)  # its answers depend on the pair only, so a rerun gives the same
        who = annotator.name
        print(f"round {r.k}: SIMULATED annotator {who} (noise {r.cfg.noise}) answered {n} pairs", flush=True)
    answered = store.pairs(answered=True, annotator=who)
    missing = set(r.state["pairs"]["ids"]) - {p.id for p in answered}
    if missing:
        flag = f" --annotator {who}" if who else ""
        print(f"round {r.k}: {len(missing)} of {len(r.state['pairs']['ids'])} pairs wait for answers. Answer them "
              f"with\n    photographer annotate --store {r.store}{flag}\nthen run the same `photographer round "
              f"--run {r.run}` again: it goes on from here.", flush=True)
        return None
    return {"annotator": who, "answers": len(answered)}


def step_reward(r: Round) -> dict[str, Any]:
    from rayjobs import train_reward
    from rlhf.preference import RewardTrainConfig

    out = r.folder / "reward"
    who = r.state["answers"]["annotator"]
    argv = ["--preference_data", str(r.store), "--out", str(out), "--seed", str(r.cfg.seed),
            *(["--annotator", who] if who else []), *r.cfg.reward_args]
    train_reward.run(parse_config(RewardTrainConfig, argv, prog="photographer train-reward"))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"model": str(out / train_reward.MODEL_FILE), "accuracy": metrics.get("val_accuracy")}


def step_policy(r: Round) -> dict[str, Any]:
    model, answers = r.state["reward"]["model"], r.state["answers"]["answers"]
    if answers < r.cfg.finetune_from:
        desc = {"kind": "steered", "policy": r.bootstrap, "human_reward_model": model, "w_human": r.cfg.steering.w_human,
                "photo_min_kept": r.cfg.steering.photo_min_kept}
        load_policy(desc)  # fails now if the bootstrap cannot be steered
        print(f"round {r.k}: {answers} answers (< --finetune_from {r.cfg.finetune_from}): the bootstrap steered by "
              f"the reward model, no fine-tuning", flush=True)
        return desc
    from rayjobs import finetune

    out = r.folder / "finetune"
    w = r.cfg.finetune_w_human
    argv = ["--policy", r.bootstrap, "--human_reward_model", model, "--w_nima", str(1.0 - w), "--w_human", str(w),
            "--min_kept", str(r.cfg.min_kept),
            "--out", str(out), "--seed", str(r.cfg.seed),
            "--resume" if out.exists() else "--no-resume", *r.cfg.finetune_args]
    print(f"round {r.k}: {answers} answers: stage 3 fine-tunes the bootstrap (w_human {w:g}, keeping "
          f"{r.cfg.min_kept:g} of the aesthetic score)", flush=True)
    finetune.run(*parse_config_given(finetune.FinetuneConfig, argv, prog="photographer finetune"))
    # It crops as `crop --human_reward_model` does: the reward model chooses among its candidates, each keeping
    # --photo_min_kept of its bootstrap's crop (CropPolicy.steered).
    return {"kind": "fine-tuned", "policy": str(out), "human_reward_model": model, "w_human": r.cfg.steering.w_human,
            "photo_min_kept": r.cfg.steering.photo_min_kept}


def _label(k: int, desc: dict[str, Any]) -> str:
    return "bootstrap" if desc.get("kind") == "bootstrap" else f"round {k}"


def step_evaluate(r: Round) -> dict[str, Any]:
    from rayjobs import evaluate
    from rlhf.evaluation import aesthetic_kept, evaluate_policy
    from rlhf.images import load_collection
    from rlhf.preference import PreferenceRewardModel
    from rlhf.scorers import create_scorer

    before, now = r.current_policy(), r.state["policy"]
    photos = load_collection(r.cfg.heldout)
    base = load_policy(before)
    spec = base.reward or {}
    scorer = create_scorer(spec.get("scorer", "default"), weights=spec.get("scorer_weights"))
    model_path = r.state["reward"]["model"]
    model = PreferenceRewardModel.load(model_path)
    names = [_label(r.k - 1, before), _label(r.k, now)]
    evals = [evaluate_policy(base, photos, scorer, model, name=names[0], seed=r.cfg.seed),
             evaluate_policy(load_policy(now), photos, scorer, model, name=names[1], seed=r.cfg.seed)]
    kept = aesthetic_kept(evals[1], evals[0])
    # What a person without a simulated taste can read off a round: a taste that has settled moves few crops.
    changed = sum(evals[0].boxes[p.id] != evals[1].boxes[p.id] for p in photos) / len(photos)
    preferred = None
    extra = {"aesthetic score kept": f"{kept:.3f} of {names[0]}'s"}
    if r.cfg.simulate:
        from rlhf.simulated import SimulatedAnnotator, preferred_rate

        judge = SimulatedAnnotator(r.cfg.simulate, noise=0.0)
        preferred = preferred_rate(judge, photos, evals[0].boxes, evals[1].boxes)
        evals[1].extra[f"preferred_by_{judge.name}"] = preferred
    out = r.folder / "eval"
    out.mkdir(parents=True, exist_ok=True)
    cfg = evaluate.EvalConfig(policies=[before["policy"], now["policy"]], names=names, image=r.cfg.heldout,
                              human_reward_model=model_path, taste=r.cfg.simulate, out=str(out))
    evaluate.write_outputs(evals, photos, cfg, out, extra=extra)
    print(f"round {r.k} against {names[0]} on {len(photos)} held-out photos: crops changed on {changed:.0%}, "
          f"aesthetic kept {kept:.3f}, human score {evals[0].human_mean:.3f} -> {evals[1].human_mean:.3f}"
          + (f", preferred by SIMULATED {r.cfg.simulate} {preferred:.3f}" if preferred is not None else ""),
          flush=True)
    return {"aesthetic_kept": kept, "preferred": preferred, "changed": changed, "human_before": evals[0].human_mean,
            "human_after": evals[1].human_mean, "photos": len(photos), "report": str(out / "report.md")}


STEP_FUNCTIONS = {"pairs": step_pairs, "answers": step_answers, "reward": step_reward, "policy": step_policy,
                  "evaluate": step_evaluate}


# --- the table -----------------------------------------------------------------------------------

def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def write_table(run: Path) -> Path:
    """DIR/rounds.md: one row per finished round."""
    lines = ["# Rounds", "",
             "Each round against the one before (round 1: against the bootstrap) on the held-out photos. "
             "*answers*: all answers so far; *reward-model held-out accuracy*: cross-validated on them "
             "(train-reward's metrics.json); *preferred*: how often the SIMULATED taste prefers this round's "
             "crop, ties half (— without one); *aesthetic kept*: mean aesthetic score of this round's crops "
             "over the previous round's; *crops changed*: the share of held-out photos whose crop differs from the "
             "previous round's (once the answers have settled the taste, a round changes few).", "",
             "| round | answers | policy | reward-model held-out accuracy | preferred over previous round | "
             "aesthetic kept | crops changed |", "|---|---|---|---|---|---|---|"]
    for k in rounds(run):
        s = read_state(round_folder(run, k))
        if not finished(s):
            continue
        lines.append(f"| {k} | {s['answers']['answers']} | {s['policy']['kind']} | {_fmt(s['reward']['accuracy'])} | "
                     f"{_fmt(s['evaluate']['preferred'])} | {_fmt(s['evaluate']['aesthetic_kept'])} | "
                     f"{_fmt(s['evaluate'].get('changed'))} |")
    path = run / TABLE
    tmp = path.with_name(f".{TABLE}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


# --- the command ---------------------------------------------------------------------------------

def run(cfg: RoundConfig) -> Path:
    """Finish the run's newest unfinished round, or do the next; returns the round's folder."""
    out = Path(cfg.run).expanduser().resolve()
    bootstrap = _bootstrap(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    done = rounds(out)
    k = done[-1] if done and not finished(read_state(round_folder(out, done[-1]))) else len(done) + 1
    folder = round_folder(out, k)
    if (folder / "config.json").is_file():
        _check_same(cfg, folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder, round=k, bootstrap=bootstrap)
    previous = read_state(round_folder(out, k - 1)) if k > 1 else None
    r = Round(cfg, out, k, bootstrap, previous, read_state(folder))
    for step in STEPS:
        if step in r.state:
            continue
        t0 = time.perf_counter()
        # Rollouts and the head's fit: one thread (see one_torch_thread); stage 3 sets its own (rayjobs.training).
        with one_torch_thread() if step != "policy" else contextlib.nullcontext():
            result = STEP_FUNCTIONS[step](r)
        if result is None:  # waiting for answers
            return folder
        r.state[step] = {**result, "seconds": round(time.perf_counter() - t0, 1)}
        _write_json(folder / STATE, r.state)
    table = write_table(out)
    print(f"round {k} done: {folder}; {table}", flush=True)
    return folder


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(RoundConfig, argv, prog="photographer round"))


if __name__ == "__main__":
    main()
