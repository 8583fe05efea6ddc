"""Does the loop learn one person's taste?

For each SIMULATED taste (rlhf/simulated.py; a stand-in for a person with a known taste):

  1. round 1    50 diverse crop pairs from the bootstrap policy on the training photos (rayjobs.pairs),
                answered by the simulated annotator with 10% label noise               (rlhf.simulated)
  2. round 2    a reward model of those answers (rayjobs.train_reward) picks the 50 pairs it is least
                sure about (rayjobs.pairs --select uncertain); the annotator answers them too. With
                --round2_policy stage3 (the default) those pairs come from a probe stage 3 trained on
                round 1's reward model, as the product's loop asks the newest policy: the crops stage 3
                moves to are where a reward model trained on bootstrap crops is most often wrong.
                --round2_policy bootstrap asks the bootstrap policy.
  3. reward     the human reward model is trained on all 100 answers                   (rayjobs.train_reward)
  4. stage 3    PPO fine-tunes the bootstrap on w_nima*(nima-1)/9 + w_human*human       (rayjobs.finetune)
  5. evaluate   on unseen photos (bundled held-out photos + fixed framings of them, written as files)

and prints, per taste:

  accuracy    the reward model's accuracy on held-out pairs (pairs from the bootstrap policy on the
              unseen photos, labelled by the taste WITHOUT noise; its ties excluded)   target >= 0.80
  preferred   how often the taste (without noise) prefers the stage-3 crop over the bootstrap crop of
              the same unseen photo; a tie (no preference, e.g. the same crop) counts half  target >= 0.70
  score_kept  mean aesthetic score of the stage-3 crops / that of the bootstrap crops   target >= 0.95

and, to tell a reward model the taste disagrees with from a stage 3 that misses its own objective,
stage 3's aim: on how many of the photos where it moved the crop it raised its own objective
(w_nima*(aesthetic-1)/9 + w_human*human), and how often the taste prefers the moved crop where it did
and where it did not.

The bench judges stage 3's own crops, and also the crops the person gets from it: `crop --policy FT
--human_reward_model RM` lets the reward model choose among the fine-tuned policy's candidate crops that keep
0.95 of its bootstrap's aesthetic score (CropPolicy.steered), `chosen` below.

The last line is `personalization: accuracy=A preferred=P score_kept=K chosen_preferred_min=C
chosen_kept_min=S` with A, P, K the values of the worst taste: the one whose smallest ratio to its targets
(A/0.80, P/0.70, K/0.95) is lowest; C and S the lowest over the tastes of the chosen crops' preferred and
score_kept. Each taste's line also gives `preferred on the training photos` (the same comparison on the
photos and framings stage 3 trained on): high there but low on unseen photos means the policy did not
generalise; low on both means it did not learn the reward.

    python bench/personalization.py                         # everything: a bootstrap, then about 9 min a taste on 2 cores
    python bench/personalization.py --bootstrap results/boot --tastes tight   # reuse a stage-1 policy
    python bench/personalization.py --out DIR               # an existing DIR resumes: finished steps are kept

Each taste's folder holds its pairs, store, reward model, stage-3 run and eval/ (report.md and
comparison.png, bootstrap vs stage 3 per photo; a long sheet is split into pages comparison_001.png,
comparison_002.png, ...). personalization.json has every number.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.config import parse_config, parse_config_given, run_dir  # noqa: E402
from rlhf.images import HELDOUT_PHOTOS, TRAIN_PHOTOS, Photo, bundled_photos  # noqa: E402
from rlhf.simulated import preferred_rate, vote  # noqa: E402

TARGETS = {"accuracy": 0.80, "preferred": 0.70, "score_kept": 0.95}
RESULT = "result.json"  # a taste's numbers, in its folder once evaluated


@dataclass
class BenchConfig:
    """Personalization benchmark: pairs -> simulated answers -> reward model -> stage 3 -> unseen photos."""

    out: str | None = field(default=None, metadata={
        "help": "bench folder (default results/bench-personalization-<time>); an existing one resumes"})
    bootstrap: str | None = field(default=None, metadata={
        "help": "reuse this stage-1 run folder or checkpoint (default: train one, shared by all tastes)"})
    bootstrap_timesteps: int = field(default=8000, metadata={"help": "stage-1 env steps when training here"})
    tastes: list[str] = field(default_factory=lambda: ["tight", "left_third", "warm"], metadata={
        "help": "simulated tastes to test (see rlhf.simulated.TASTES)"})
    num_pairs: int = field(default=100, metadata={"help": "annotated pairs per taste"})
    noise: float = field(default=0.1, metadata={"help": "label noise of the simulated annotator"})
    uncertain_pairs: int = field(default=50, metadata={
        "help": "of num_pairs, how many come from a second round that asks what the first round's reward "
                "model is least sure about (rayjobs.pairs --select uncertain); 0 = one diverse round"})
    round2_policy: str = field(default="stage3", metadata={
        "help": "which policy proposes round 2's pairs: stage3 (a probe stage 3 on round 1's reward model) | "
                "bootstrap", "choices": ["stage3", "bootstrap"]})
    heldout_pairs: int = field(default=120, metadata={"help": "held-out pairs on the unseen photos"})
    variants: int = field(default=23, metadata={
        "help": "fixed framings (sub-photos, mirrors) per held-out photo, besides the photo itself: 9 photos x 24 "
                "framings = 216 unseen crops to judge; fewer make `preferred` noisy. Default 23"})
    finetune_timesteps: int = field(default=6144, metadata={
        "help": "stage-3 env steps per taste (a bootstrap that sees what each move pays needs few). Default 6144"})
    probe_timesteps: int = field(default=6144, metadata={
        "help": "env steps of round 2's probe stage 3 (it only has to show where stage 3 moves crops)"})
    finetune_lr: float = field(default=3e-4, metadata={"help": "stage-3 learning rate"})
    w_nima: float = field(default=0.7, metadata={"help": "stage-3 weight of (nima-1)/9; default 0.7, "
                                                  "photographer finetune's"})
    w_human: float = field(default=0.3, metadata={"help": "stage-3 weight of the human score"})
    reward_args: list[str] = field(default_factory=list, metadata={
        "help": "extra flags for train-reward, one per --reward_args=FLAG, repeated: --reward_args=--max_inputs=3"})
    finetune_args: list[str] = field(default_factory=list, metadata={
        "help": "extra flags for finetune, one per --finetune_args=FLAG, repeated: --finetune_args=--anneal_lr "
                "--finetune_args=--ref_kl=0.3"})
    num_env_runners: int = field(default=1, metadata={"help": "PPO env runners"})
    service: bool = field(default=True, metadata={"help": "score through the shared scoring actor"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        from rlhf.simulated import check_tastes

        check_tastes(self.tastes)
        if self.num_pairs < 2 or self.heldout_pairs < 2:
            raise ValueError("num_pairs and heldout_pairs must be >= 2")
        if self.round2_policy not in ("stage3", "bootstrap"):
            raise ValueError(f"round2_policy must be stage3 or bootstrap, got {self.round2_policy!r}")
        if not 0 <= self.uncertain_pairs <= self.num_pairs - 2:
            raise ValueError(f"uncertain_pairs must be in [0, num_pairs - 2], got {self.uncertain_pairs}")


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def heldout_framings(variants: int, seed: int) -> Iterator[tuple[str, Photo]]:
    """(name, framing) for each held-out photo and `variants` fixed framings of it, named
    `<photo>_<i>` (i = 0: the photo itself), the names `_framing` reads back."""
    from rlhf.images import augmented_variants, load_collection

    rng = np.random.default_rng(seed)
    for photo in load_collection(bundled_photos(HELDOUT_PHOTOS)):
        for i, v in enumerate([photo, *augmented_variants(photo, variants, rng)]):
            yield f"{Path(photo.id).stem}_{i}", v


def unseen_photos(out: Path, variants: int, seed: int) -> list[Path]:
    """The held-out photos plus fixed framings of them, as files (pairs files reference files)."""
    from PIL import Image

    folder = out / "unseen"
    marker = folder / "DONE"
    if marker.exists():
        return sorted(p for p in folder.iterdir() if p.suffix == ".png")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, framing in heldout_framings(variants, seed):
        path = folder / f"{name}.png"  # lossless: the framing's pixels are the photo's
        Image.fromarray(framing.pixels).save(path)
        paths.append(path)
    marker.write_text("")
    return sorted(paths)


def bootstrap(cfg: BenchConfig, out: Path) -> str:
    if cfg.bootstrap:
        return cfg.bootstrap
    from rayjobs.bootstrap import BootstrapConfig, run
    from rlhf.config import from_flat

    folder = out / "bootstrap"
    done = folder / "DONE"
    if not done.exists():
        t = _step(f"stage 1: bootstrap on the training photos, {cfg.bootstrap_timesteps} steps")
        run(from_flat(BootstrapConfig, timesteps=cfg.bootstrap_timesteps, out=str(folder), seed=cfg.seed,
                            num_env_runners=cfg.num_env_runners, service=cfg.service, resume=folder.exists()))
        done.write_text("")
        print(f"stage 1 took {time.time() - t:.0f}s", flush=True)
    return str(folder)


def heldout_pairs(cfg: BenchConfig, out: Path, policy: str, unseen: list[Path]) -> list:
    """Unlabelled pairs from the bootstrap policy on the unseen photos (labelled per taste later)."""
    from rayjobs.pairs import PairsConfig, run
    from rlhf.pairs import load_pairs

    folder = out / "heldout_pairs"
    path = folder / "preference_pairs.json"
    if not path.exists():
        _step(f"{cfg.heldout_pairs} held-out pairs on {len(unseen)} unseen photos")
        run(PairsConfig(policy=policy, image=[str(p) for p in unseen], num_pairs=cfg.heldout_pairs,
                        out=str(folder), seed=cfg.seed + 1000))
    return load_pairs(path)


def run_taste(cfg: BenchConfig, out: Path, taste: str, policy: str, unseen_files: list[Path],
              unlabelled_heldout: list, shared: dict) -> dict:
    """One taste through the loop; returns its numbers."""

    from rayjobs import evaluate as evaluate_job
    from rayjobs import pairs, train_reward
    from rlhf.evaluation import evaluate_policy, reward_model_accuracy
    from rlhf.kept import SteeringSettings
    from rlhf.pairs import save_pairs
    from rlhf.policy import CropPolicy
    from rlhf.preference import PreferenceRewardModel
    from rlhf.simulated import SimulatedAnnotator
    from rlhf.store import PreferenceStore

    folder = out / taste
    folder.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    train_photos = [str(p) for p in bundled_photos(TRAIN_PHOTOS)]

    store = PreferenceStore(folder / "pairs" / "preferences.sqlite")
    annotator = SimulatedAnnotator(taste, noise=cfg.noise, seed=cfg.seed)
    first = cfg.num_pairs - cfg.uncertain_pairs
    rounds = [("pairs", first, "diverse", None)]
    if cfg.uncertain_pairs:
        rounds.append(("pairs_round2", cfg.uncertain_pairs, "uncertain", folder / "reward_round1"))
    for i, (sub, n_pairs, select, prev_model) in enumerate(rounds, 1):
        asker = policy
        if prev_model is not None and cfg.round2_policy == "stage3":
            asker = str(folder / "finetune_probe")
        t = _step(f"[{taste}] round {i}: {n_pairs} pairs from the {'bootstrap' if asker == policy else 'probe stage-3'} "
                  f"policy ({select}), answered by a SIMULATED annotator (noise {cfg.noise})")
        if prev_model is not None and not (prev_model / "human_reward_model.pth").exists():
            # The reward model of the answers so far picks what to ask next.
            train_reward.main(["--preference_data", str(store.path), "--annotator", annotator.name,
                               "--out", str(prev_model), "--seed", str(cfg.seed), *cfg.reward_args])
        if asker != policy:
            stage3(cfg, policy, prev_model / "human_reward_model.pth", Path(asker), cfg.probe_timesteps)
        if not (folder / sub / "preference_pairs.json").exists():
            pairs.run(pairs.PairsConfig(
                policy=asker, image=train_photos, num_pairs=n_pairs, out=str(folder / sub), store=str(store.path),
                seed=cfg.seed + i - 1, select=select,
                human_reward_model=str(prev_model / "human_reward_model.pth") if prev_model else None))
        n = annotator.annotate_store(store, shared["train_photos"])
        answered = store.pairs(answered=True, annotator=annotator.name)
        counts = {c: sum(p.preference == c for p in answered) for c in (0, 1, 2)}
        print(f"{n} new answers; {len(answered)} answered ({counts[1]} A, {counts[2]} B, {counts[0]} no "
              "preference)", flush=True)
        times[f"round{i}"] = time.time() - t

    t = _step(f"[{taste}] human reward model on all {len(answered)} answers")
    model_path = folder / "reward" / "human_reward_model.pth"
    if not model_path.exists():
        train_reward.main(["--preference_data", str(store.path), "--annotator", annotator.name,
                           "--out", str(folder / "reward"), "--seed", str(cfg.seed), *cfg.reward_args])
    model = PreferenceRewardModel.load(model_path)
    truth = SimulatedAnnotator(taste, noise=0.0)
    photos_by_id = shared["unseen_by_id"]
    heldout = truth.annotate_pairs(unlabelled_heldout, photos_by_id)
    heldout_path = save_pairs(folder / "heldout_labelled.json", heldout)
    accuracy, n_acc = reward_model_accuracy(model, heldout, photos_by_id)
    print(f"reward model: held-out accuracy {accuracy:.3f} on {n_acc} pairs (noiseless labels); "
          f"its own validation split: {model.metrics.get('val_accuracy')}", flush=True)
    times["reward"] = time.time() - t

    t = _step(f"[{taste}] stage 3: {cfg.w_nima}*aesthetic + {cfg.w_human}*human, {cfg.finetune_timesteps} steps")
    ft_dir = folder / "finetune"
    stage3(cfg, policy, model_path, ft_dir, cfg.finetune_timesteps)
    times["finetune"] = time.time() - t

    t = _step(f"[{taste}] evaluate bootstrap vs stage 3 on {len(unseen_files)} unseen photos")
    photos = shared["unseen"]
    boot_eval = evaluate_policy(shared["boot_policy"], photos, shared["scorer"], model, heldout, name="bootstrap")
    ft_policy = CropPolicy.load(ft_dir)
    ft_eval = evaluate_policy(ft_policy, photos, shared["scorer"], model, heldout, name="stage3")
    verdict = judge(truth, photos, boot_eval, ft_eval, cfg.w_nima, cfg.w_human)
    preferred, per_photo, kept = verdict["preferred"], verdict["preferred_by_photo"], verdict["score_kept"]
    # The crop the person gets: `crop --policy FT --human_reward_model RM`, the reward model choosing among the
    # fine-tuned policy's candidates that keep 0.95 of its bootstrap's crop (CropPolicy.steered).
    steering = SteeringSettings()
    chosen_eval = evaluate_policy(ft_policy.steered(model_path, steering.w_human, steering.photo_min_kept), photos,
                                  shared["scorer"], model, heldout, name="stage3+chosen")
    chosen = judge(truth, photos, boot_eval, chosen_eval, cfg.w_nima, cfg.w_human)
    aim = {k: verdict[k] for k in AIM_KEYS}
    # The same comparison on the photos stage 3 trained on: high here but low on unseen photos means
    # the policy did not generalise; low on both means it did not learn the reward.
    # Its aim there too: moves that raise the objective on the training photos but not on unseen ones
    # mean stage 3 fitted its training photos rather than the taste.
    seen = shared["seen"]
    boot_seen = evaluate_policy(shared["boot_policy"], seen, shared["scorer"], model, [], name="bootstrap",
                                boxes=shared["boot_seen_boxes"])
    ft_seen = evaluate_policy(ft_policy, seen, shared["scorer"], model, [], name="stage3")
    preferred_seen = preferred_rate(truth, seen, boot_seen.boxes, ft_seen.boxes)
    aim_seen = stage3_aim(truth, seen, boot_seen, ft_seen, cfg.w_nima, cfg.w_human)
    changed = sum(ft_eval.boxes[p.id] != boot_eval.boxes[p.id] for p in photos)
    eval_cfg = evaluate_job.EvalConfig(policies=[policy, str(ft_dir)], names=["bootstrap", "stage3"],
                                       image=[str(p) for p in unseen_files], preference_data=str(heldout_path),
                                       human_reward_model=str(model_path), out=str(folder / "eval"))
    (folder / "eval").mkdir(exist_ok=True)
    # The sheet shows each held-out photo in its first two framings: 216 rows would be unreadable.
    sheet = [p for p in photos if _framing(p.id)[1] < 2]
    report = evaluate_job.write_outputs([boot_eval, ft_eval, chosen_eval], photos, eval_cfg, folder / "eval", sheet_photos=sheet, extra={
        "simulated taste": f"{taste} ({truth.taste.description})",
        "stage-3 crop preferred by the taste (ties half)": f"{preferred:.3f} over {len(photos)} photos",
        "aesthetic score kept": f"{kept:.3f}",
        "chosen crop (stage3+chosen) preferred, aesthetic score kept": f"{chosen['preferred']:.3f}, {chosen['score_kept']:.3f}"})
    times["evaluate"] = time.time() - t
    result = {"taste": taste, "accuracy": accuracy, "accuracy_pairs": n_acc,
              "reward_model_val_accuracy": model.metrics.get("val_accuracy"),
              "preferred": preferred, "preferred_by_photo": per_photo, "preferred_on_training_photos": preferred_seen, "score_kept": kept, "crops_changed": changed, "photos": len(photos),
              "aesthetic_bootstrap": boot_eval.aesthetic_mean, "aesthetic_stage3": ft_eval.aesthetic_mean,
              "human_bootstrap": boot_eval.human_mean, "human_stage3": ft_eval.human_mean,
              "agreement_bootstrap": boot_eval.agreement, "agreement_stage3": ft_eval.agreement,
              "chosen_preferred": chosen["preferred"], "chosen_score_kept": chosen["score_kept"],
              "answers": counts, **aim, **{f"{k}_training_photos": v for k, v in aim_seen.items()}, "seconds": {k: round(v, 1) for k, v in times.items()}, "report": str(report)}
    print(f"[{taste}] accuracy={accuracy:.3f} preferred={preferred:.3f} score_kept={kept:.3f} "
          f"(crops changed on {changed}/{len(photos)} photos; human score {boot_eval.human_mean:.3f} -> "
          f"{ft_eval.human_mean:.3f}; agreement {boot_eval.agreement:.3f} -> {ft_eval.agreement:.3f}; preferred on "
          f"the training photos {preferred_seen:.3f})", flush=True)
    print(f"[{taste}] as `crop --human_reward_model` crops for the person (the reward model choosing among stage 3's "
          f"candidates): preferred={chosen['preferred']:.3f} score_kept={chosen['score_kept']:.3f}", flush=True)
    print(f"[{taste}] stage 3's aim: it raised its own objective ({cfg.w_nima}*aesthetic + {cfg.w_human}*human) on "
          f"{aim['objective_up']}/{aim['moved']} photos where it moved the crop; the taste prefers its crop on "
          f"{aim['preferred_where_up']:.2f} of those and {aim['preferred_where_down']:.2f} of the rest; on the training "
          f"photos {aim_seen['objective_up']}/{aim_seen['moved']}", flush=True)
    print(f"[{taste}] preferred per unseen photo (over its {len(photos) // max(1, len(per_photo))} framings): "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_photo.items()), flush=True)
    return result


def stage3(cfg: BenchConfig, policy: str, model_path: Path, ft_dir: Path, timesteps: int) -> None:
    """Stage 3 from the bootstrap on a reward model, into ft_dir (kept if already done)."""
    from rayjobs import finetune

    if (ft_dir / "DONE").exists():
        return
    # Each stage releases its scoring actor when it ends, so on 2 cores the next stage's env runner fits.
    argv = ["--policy", policy, "--human_reward_model", str(model_path), "--w_nima", str(cfg.w_nima),
            "--w_human", str(cfg.w_human), "--timesteps", str(timesteps), "--lr",
            str(cfg.finetune_lr), "--out", str(ft_dir), "--seed", str(cfg.seed), "--num_env_runners",
            str(cfg.num_env_runners), "--service" if cfg.service else "--no-service",
            "--resume" if ft_dir.exists() else "--no-resume", *cfg.finetune_args]
    finetune.run(*parse_config_given(finetune.FinetuneConfig, argv))
    (ft_dir / "DONE").write_text("")


def _framing(photo_id: str) -> tuple[str, int]:
    """(held-out photo, framing index) of an unseen file `<photo>_<i>.png` (see unseen_photos)."""
    stem, _, i = Path(photo_id).stem.rpartition("_")
    return stem, int(i)


def preferred_by_photo(taste, photos, before: dict, after: dict) -> dict[str, float]:
    """`preferred_rate` over each held-out photo's framings: whether a few scenes carry the mean."""
    votes: dict[str, list[float]] = {}
    for p in photos:
        votes.setdefault(_framing(p.id)[0], []).append(vote(taste, p, after[p.id], before[p.id]))
    return {k: float(np.mean(v)) for k, v in votes.items()}


AIM_KEYS = ("moved", "objective_up", "preferred_where_up", "preferred_where_down")


def judge(taste, photos, boot, ft, w_nima: float, w_human: float) -> dict:
    """The bench's verdict on stage 3 (evaluation `ft`) against the bootstrap (`boot`) on `photos`:
    preferred, preferred_by_photo, score_kept and stage 3's aim (AIM_KEYS)."""
    return {"preferred": preferred_rate(taste, photos, boot.boxes, ft.boxes),
            "preferred_by_photo": preferred_by_photo(taste, photos, boot.boxes, ft.boxes),
            "score_kept": ft.aesthetic_mean / boot.aesthetic_mean,
            **stage3_aim(taste, photos, boot, ft, w_nima, w_human)}


def stage3_aim(taste, photos, boot, ft, w_nima: float, w_human: float) -> dict:
    """Where stage 3 moved a crop, did it raise its own objective, and did the taste follow?

    Splits a low `preferred` into its two causes: a reward model the taste disagrees with (the taste
    does not prefer the crops that raised the objective) or a policy that misses its own objective on
    these photos (few moves raised it).
    """
    from rlhf.reward import rescale_aesthetic

    def objective(e, pid: str) -> float:  # stage 3's reward (rlhf.reward.combine) of the photo's crop
        return w_nima * float(rescale_aesthetic(e.aesthetic[pid])) + w_human * e.human[pid]

    up, down = [], []
    for p in photos:
        if ft.boxes[p.id] == boot.boxes[p.id]:
            continue
        verdict = vote(taste, p, ft.boxes[p.id], boot.boxes[p.id])
        (up if objective(ft, p.id) > objective(boot, p.id) else down).append(verdict)
    nan = float("nan")
    return {"moved": len(up) + len(down), "objective_up": len(up),
            "preferred_where_up": float(np.mean(up)) if up else nan,
            "preferred_where_down": float(np.mean(down)) if down else nan}


def check_taste_folders(runs: list[str]) -> None:
    """Fail fast unless each run is a finished bench taste folder (``<out>/<taste>``)."""
    for run in runs:
        if not (Path(run) / "finetune").is_dir() or not (Path(run) / "reward" / "human_reward_model.pth").is_file():
            raise ValueError(f"{run}: not a bench taste folder (needs finetune/ and reward/human_reward_model.pth)")


def worst(results: list[dict]) -> dict:
    """The taste furthest below (or least above) its targets."""
    return min(results, key=lambda r: min(r[k] / v for k, v in TARGETS.items()))


def run(cfg: BenchConfig) -> list[dict]:
    from rlhf.images import load_collection
    from rlhf.policy import CropPolicy
    from rlhf.scorers import create_scorer

    out = run_dir(cfg.out, "bench-personalization")
    (out / "bench_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    t0 = time.time()
    policy = bootstrap(cfg, out)
    unseen = unseen_photos(out, cfg.variants, cfg.seed)
    unlabelled = heldout_pairs(cfg, out, policy, unseen)
    photos = load_collection([str(p) for p in unseen])
    from rlhf.evaluation import photo_key

    by_id = {p.id: p for p in photos} | {photo_key(p.id): p for p in photos}
    # A taste evaluated before (its result.json written after its stage 3 finished) is kept, as every
    # finished step is: its evaluation takes minutes and is deterministic.
    kept = {t: json.loads((out / t / RESULT).read_text()) for t in cfg.tastes
            if (out / t / RESULT).exists() and (out / t / "finetune" / "DONE").exists()}
    for t, r in kept.items():
        print(f"[{t}] kept from {out / t / RESULT}: accuracy={r['accuracy']:.3f} preferred={r['preferred']:.3f} "
              f"score_kept={r['score_kept']:.3f}", flush=True)
    if len(kept) == len(cfg.tastes):
        return report([kept[t] for t in cfg.tastes], out, cfg, t0)
    shared = {"unseen": photos, "unseen_by_id": by_id,
              "train_photos": load_collection(bundled_photos(TRAIN_PHOTOS)),
              "boot_policy": CropPolicy.load(policy), "scorer": create_scorer("default")}
    # The training photos with the framings stage 3 trains on (as rlhf.env builds them, seeded).
    from rlhf.evaluation import policy_boxes
    from rlhf.images import augmented_variants

    rng = np.random.default_rng(cfg.seed)
    n_var = int(shared["boot_policy"].env_config.get("augment_variants", 0))
    shared["seen"] = shared["train_photos"] + [v for p in shared["train_photos"]
                                               for v in augmented_variants(p, n_var, rng)]
    # The bootstrap's crops of them, rolled out once for every taste.
    shared["boot_seen_boxes"] = policy_boxes(shared["boot_policy"], shared["seen"])[0]
    results = []
    for taste in cfg.tastes:
        if taste in kept:
            results.append(kept[taste])
            continue
        results.append(run_taste(cfg, out, taste, policy, unseen, unlabelled, shared))
        (out / taste / RESULT).write_text(json.dumps(results[-1], indent=2, default=_plain) + "\n")
    return report(results, out, cfg, t0)


def report(results: list[dict], out: Path, cfg: BenchConfig, t0: float) -> list[dict]:
    """personalization.json, the table and the last line."""
    (out / "personalization.json").write_text(json.dumps(results, indent=2, default=_plain) + "\n")
    print(f"\n=== personalization ({time.time() - t0:.0f}s; SIMULATED annotators, noise {cfg.noise}) ===")
    print(f"{'taste':<11} {'accuracy':>9} {'preferred':>10} {'score_kept':>11} {'chosen: preferred':>18} "
          f"{'score_kept':>11}   targets >= {TARGETS['accuracy']:.2f} / {TARGETS['preferred']:.2f} / "
          f"{TARGETS['score_kept']:.2f}")
    nan = float("nan")
    for r in results:
        ok = all(r[k] >= v for k, v in TARGETS.items())
        print(f"{r['taste']:<11} {r['accuracy']:>9.3f} {r['preferred']:>10.3f} {r['score_kept']:>11.3f} "
              f"{r.get('chosen_preferred', nan):>18.3f} {r.get('chosen_score_kept', nan):>11.3f}   "
              f"{'meets targets' if ok else 'BELOW TARGET'}")
    w = worst(results)
    print(f"worst taste: {w['taste']}; results in {out}")

    def lowest(key: str) -> float:  # nan unless every taste has it (results kept from before the bench judged it)
        return min(r[key] for r in results) if all(key in r for r in results) else nan

    print(f"personalization: accuracy={w['accuracy']:.3f} preferred={w['preferred']:.3f} "
          f"score_kept={w['score_kept']:.3f} chosen_preferred_min={lowest('chosen_preferred'):.3f} "
          f"chosen_kept_min={lowest('chosen_score_kept'):.3f}", flush=True)
    return results


def _plain(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def main(argv: list[str] | None = None) -> list[dict]:
    return run(parse_config(BenchConfig, argv, prog="bench/personalization.py"))


if __name__ == "__main__":
    main()
