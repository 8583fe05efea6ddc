"""Which pairs teach a taste fastest? Rules for choosing the next pairs, compared on the same candidates.

pairs_curve runs the whole loop once per seed, so which pairs happened to be asked moves its curve more
than most changes of the choice itself. This bench takes only what the choice decides: for each seed,
the candidate pairs `photographer pairs` would choose from on the training photos (the bootstrap's
rollouts and perturbations, rayjobs.pairs.candidate_pool), answered by each SIMULATED taste (rlhf.simulated,
--noise flipped), and after the first --answers step's diverse pairs, each rule picks the pairs to reach
the next step from the same pool:

  margin   the product's `--select uncertain`: smallest |r_a - r_b| of the reward model
  predictive  smallest |P(A better) - 1/2| by the reward model's posterior predictive (its `preference`)
  random   any pair not asked yet
  bald     largest mutual information between the answer and the model (Houlsby et al. 2011), over the
           members of the reward model's posterior (rlhf.preference.bayes: every input set and prior scale)
  epig     largest expected information about the answers to other candidate pairs (Smith et al. 2023),
           over the same members
  oracle   a teacher who knows the taste, as a ceiling for any rule: the pair whose answer the posterior
           predicts worst, by KL(teacher || posterior's mean) of the answer's distribution, the teacher's
           P(A better) being the reward model trained on the whole pool's noiseless answers, with --noise

each kept spread over photos and crops as the product's (rayjobs.pairs.select_uncertain). After every step
the reward model is trained on all answers so far (rlhf.preference.train_reward_model, the defaults) and
judged on the held-out pairs of the unseen photos, labelled by the taste WITHOUT noise (as pairs_curve).
No policy is steered or fine-tuned here: a few minutes in all.

Last line: `pair_choice: answers=N <rule>=A ...`, A the worst taste's mean held-out accuracy over --seeds
at N answers (the second of --answers).

    python bench/pair_choice.py                                                # trains a bootstrap first
    python bench/pair_choice.py --bootstrap results/boot                       # every rule, 6 seeds
    python bench/pair_choice.py --bootstrap results/boot --out results/curve  # reuse a pairs_curve folder's held-out pairs
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.personalization import BenchConfig, bootstrap, heldout_pairs, unseen_photos  # noqa: E402
from rlhf.config import parse_config, run_dir  # noqa: E402

RULES = ("margin", "predictive", "random", "bald", "epig", "oracle")
EPIG_TARGETS = 400  # candidate pairs whose answers epig predicts (a sample of the pool, as Smith et al.)


@dataclass
class ChoiceConfig:
    """Rules for choosing pairs to ask, compared on the same candidate pairs and the same simulated tastes."""

    bootstrap: str | None = field(default=None, metadata={
        "help": "stage-1 run folder or checkpoint whose crops are compared (default: train one, as pairs_curve)"})
    bootstrap_timesteps: int = field(default=8000, metadata={"help": "stage-1 env steps when training here"})
    out: str | None = field(default=None, metadata={
        "help": "bench folder (default results/bench-pair-choice-<time>); a pairs_curve folder's held-out pairs "
                "are reused"})
    tastes: list[str] = field(default_factory=lambda: ["tight", "left_third", "warm"], metadata={
        "help": "simulated tastes (see rlhf.simulated.TASTES)"})
    rules: list[str] = field(default_factory=lambda: list(RULES), metadata={
        "help": "pair-choice rules: margin (the product's --select uncertain), predictive, random, bald, epig, "
                "oracle (a teacher who knows the taste; this file's docstring)"})
    answers: list[int] = field(default_factory=lambda: [10, 25, 30, 50], metadata={
        "help": "answers after which the reward model is judged, rising; the first step's pairs are diverse"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5], metadata={
        "help": "seeds of the candidate pool and the annotator's noise"})
    noise: float = field(default=0.1, metadata={"help": "label noise of the simulated annotator"})
    heldout_pairs: int = field(default=120, metadata={"help": "held-out pairs on the unseen photos"})
    variants: int = field(default=23, metadata={"help": "fixed framings per held-out photo besides the photo"})
    seed: int = field(default=0, metadata={"help": "seed of the unseen framings and held-out pairs"})

    def __post_init__(self) -> None:
        from rlhf.simulated import check_tastes

        check_tastes(self.tastes)
        bad = [r for r in self.rules if r not in RULES]
        if bad or not self.rules:
            raise ValueError(f"--rules must be among {list(RULES)}, got {self.rules}")
        if len(self.answers) < 2 or self.answers != sorted(set(self.answers)) or self.answers[0] < 2:
            raise ValueError(f"--answers must rise over at least two steps, from at least 2, got {self.answers}")


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def _members(model, examples: list, fz, diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shares (M,), P(A better) (M, N)) of the posterior's members on N standardised pair differences: the
    posterior over input sets (rlhf.preference.bayes) of the answered pairs as annotated, on the model's inputs."""
    from rlhf.preference.bayes import subset_posterior
    from rlhf.preference.data import pair_features

    cfg = model.config
    xa, xb = pair_features(fz, examples)
    d = torch.from_numpy(model.normaliser.transform(xa) - model.normaliser.transform(xb))
    post = subset_posterior(d, torch.tensor([e.y for e in examples]), cfg["max_inputs"], cfg["prior_scales"],
                            head_scale=cfg["head_scale"], label_noise=cfg["label_noise"])
    shares = np.array([m.share for m in post.models])
    probs = np.stack([1 / (1 + np.exp(-(diffs[:, list(m.inputs)] @ m.weights.double().numpy()))) if m.inputs
                      else np.full(len(diffs), 0.5) for m in post.models])
    return shares / shares.sum(), probs


def _information(rule: str, shares: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """bald or epig of each pair (larger: asked first)."""
    mean = shares @ probs
    if rule == "bald":
        return _entropy(mean) - shares @ _entropy(probs)
    target = probs[:, rng.choice(probs.shape[1], size=min(EPIG_TARGETS, probs.shape[1]), replace=False)]
    info = np.zeros(probs.shape[1])
    for a in (probs, 1 - probs):  # the candidate's answer
        for b in (target, 1 - target):  # a target pair's answer
            joint = (a * shares[:, None]).T @ b
            info += (joint * np.log(np.clip(joint, 1e-12, None) / np.clip(
                np.outer(shares @ a, shares @ b), 1e-12, None))).mean(1)
    return info


def _teacher(taste: str, pool: dict) -> np.ndarray:
    """P(A better) of every pool pair (in pool order) by the reward model trained on all of them, answered by the
    taste without noise: the best this model could learn from these candidates, known before any answer. NaN
    for a pair the taste has no preference in: a teacher does not ask what cannot be answered."""
    from rlhf.pairs import Pair
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model
    from rlhf.simulated import SimulatedAnnotator

    photos, cands, pairs, fz = pool["photos"], pool["cands"], pool["pairs"], pool["featurizer"]
    truth = SimulatedAnnotator(taste, noise=0.0)
    every = [Pair(f"{k}-{i}-{j}", photos[k].id, cands[k][i].box, cands[k][j].box,
                  truth.choose(photos[k], cands[k][i].box, cands[k][j].box))
             for k, ps in enumerate(pairs) for i, j, _ in ps]
    # Noiseless answers: no slips to allow for (label_noise 0), which also keeps this 2000-pair fit quick.
    model, _ = train_reward_model(examples_from_pairs(every), RewardTrainConfig(cv_folds=0, val_fraction=0.0,
                                                                                label_noise=[0.0]),
                                  featurizer=fz, log=None)
    r = [model.reward(photo, [c.box for c in cs]) if ps else np.zeros(0)
         for photo, cs, ps in zip(photos, cands, pairs, strict=True)]
    p = np.array([1 / (1 + np.exp(r[k][j] - r[k][i])) for k, ps in enumerate(pairs) for i, j, _ in ps])
    return np.where([pair.preference == 0 for pair in every], np.nan, p)


def run_rule(rule: str, taste: str, seed: int, cfg: ChoiceConfig, pool: dict, held: list, unseen: dict) -> list[float]:
    """Held-out accuracy after each step of --answers, pairs chosen by `rule`."""
    from rayjobs.pairs import select_diverse, select_uncertain
    from rlhf.evaluation import reward_model_accuracy
    from rlhf.pairs import Pair
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model
    from rlhf.simulated import SimulatedAnnotator

    photos, cands, pairs, fz = pool["photos"], pool["cands"], pool["pairs"], pool["featurizer"]
    annotator = SimulatedAnnotator(taste, noise=cfg.noise, seed=seed)
    rng = np.random.default_rng(seed)
    asked: dict[tuple[int, int, int], Pair] = {}

    def ask(picks) -> None:
        for k, i, j in picks:
            a, b = cands[k][i].box, cands[k][j].box
            asked[(k, i, j)] = Pair(f"{k}-{i}-{j}", photos[k].id, a, b, annotator.choose(photos[k], a, b))

    ask(select_diverse(cands, pairs, cfg.answers[0], rng))
    accs = []
    for n in cfg.answers[1:] + [None]:
        examples = examples_from_pairs(list(asked.values()))
        model, _ = train_reward_model(examples, RewardTrainConfig(cv_folds=0, val_fraction=0.0, seed=seed),
                                      featurizer=fz, log=None)
        accs.append(reward_model_accuracy(model, held, unseen)[0])
        if n is None:
            break
        left = [[(i, j, iou) for i, j, iou in ps if (k, i, j) not in asked] for k, ps in enumerate(pairs)]
        if rule == "random":
            values = [list(rng.random(len(ps))) for ps in left]
        elif rule == "margin":
            values = []
            for photo, cs, ps in zip(photos, cands, left, strict=True):
                r = model.reward(photo, [c.box for c in cs]) if ps else np.zeros(0)
                values.append([abs(float(r[i] - r[j])) for i, j, _ in ps])
        elif rule == "predictive":
            values = [list(np.abs(model.preference(photo, [cs[i].box for i, _, _ in ps], [cs[j].box for _, j, _ in ps])
                                  - 0.5)) if ps else []
                      for photo, cs, ps in zip(photos, cands, left, strict=True)]
        else:
            diffs = [model.normaliser.transform(fz.features(photo, [cs[i].box for i, _, _ in ps]))
                     - model.normaliser.transform(fz.features(photo, [cs[j].box for _, j, _ in ps]))
                     for photo, cs, ps in zip(photos, cands, left, strict=True) if ps]
            shares, probs = _members(model, examples, fz, np.concatenate(diffs))
            if rule == "oracle":
                t = pool["teacher"][taste][[(k, i, j) not in asked for k, ps in enumerate(pairs) for i, j, _ in ps]]
                q = np.clip((1 - cfg.noise) * t + cfg.noise * (1 - t), 1e-9, 1 - 1e-9)  # the answer, noise included
                p = np.clip(shares @ probs, 1e-9, 1 - 1e-9)
                info = np.nan_to_num(-(q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))), nan=np.inf)
            else:
                info = -_information(rule, shares, probs, rng)  # select_uncertain asks the smallest values first
            values, at = [], 0
            for ps in left:
                values.append(list(info[at:at + len(ps)]))
                at += len(ps)
        ask(select_uncertain(left, values, n - len(asked)))
    return accs


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from rayjobs.pairs import PairsConfig, candidate_pool
    from rlhf.evaluation import photo_key
    from rlhf.images import TRAIN_PHOTOS, bundled_photos, load_collection
    from rlhf.policy import CropPolicy
    from rlhf.preference import CropFeaturizer, RewardTrainConfig
    from rlhf.simulated import SimulatedAnnotator

    cfg = parse_config(ChoiceConfig, argv, prog="bench/pair_choice.py")
    out = run_dir(cfg.out, "bench-pair-choice")
    (out / "pair_choice_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    bench = BenchConfig(out=str(out), bootstrap=cfg.bootstrap, bootstrap_timesteps=cfg.bootstrap_timesteps,
                        heldout_pairs=cfg.heldout_pairs, variants=cfg.variants, seed=cfg.seed)
    policy_path = bootstrap(bench, out)
    unseen_files = unseen_photos(out, cfg.variants, cfg.seed)
    unlabelled = heldout_pairs(bench, out, policy_path, unseen_files)
    loaded = load_collection([str(p) for p in unseen_files])
    unseen = {p.id: p for p in loaded} | {photo_key(p.id): p for p in loaded}
    policy = CropPolicy.load(policy_path)
    photos = load_collection(bundled_photos(TRAIN_PHOTOS))
    rc = RewardTrainConfig()
    fz = CropFeaturizer(rc.backbone, rc.backbone_weights, rc.device)
    need = cfg.answers[-1] - cfg.answers[0]  # the pool is made as `photographer pairs` makes it for that many
    results: dict[str, dict[str, list[list[float]]]] = {t: {r: [] for r in cfg.rules} for t in cfg.tastes}
    with tqdm(total=len(cfg.seeds) * len(cfg.tastes) * len(cfg.rules), desc="pair choice", unit="run") as bar:
        for seed in cfg.seeds:
            cands, pairs = candidate_pool(policy, photos, PairsConfig(policy=policy_path, num_pairs=need),
                                          np.random.default_rng(seed))
            pool = {"photos": photos, "cands": cands, "pairs": pairs, "featurizer": fz}
            if "oracle" in cfg.rules:
                pool["teacher"] = {taste: _teacher(taste, pool) for taste in cfg.tastes}
            for taste in cfg.tastes:
                truth = SimulatedAnnotator(taste, noise=0.0)
                held = [p for p in truth.annotate_pairs(unlabelled, unseen) if p.preference]
                for rule in cfg.rules:
                    accs = run_rule(rule, taste, seed, cfg, pool, held, unseen)
                    results[taste][rule].append(accs)
                    bar.write(f"seed {seed} {taste:10s} {rule:6s} " + " ".join(
                        f"{n}: {a:.3f}" for n, a in zip(cfg.answers, accs, strict=True)))
                    bar.update()
    table = ["| taste | rule | " + " | ".join(f"{n} answers" for n in cfg.answers) + " |",
             "|---|---|" + "---|" * len(cfg.answers)]
    for taste, by_rule in results.items():
        for rule, runs in by_rule.items():
            mean, lo, hi = np.mean(runs, 0), np.min(runs, 0), np.max(runs, 0)
            table.append(f"| {taste} | {rule} | " + " | ".join(
                f"{m:.3f} ({a:.2f}-{b:.2f})" for m, a, b in zip(mean, lo, hi, strict=True)) + " |")
    text = (f"Held-out accuracy, mean (min-max) over seeds {cfg.seeds}; the first {cfg.answers[0]} pairs "
            "diverse for every rule\n\n" + "\n".join(table) + "\n")
    (out / "pair_choice.md").write_text(text)
    (out / "pair_choice.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + text)
    step = 1  # the second step of --answers: the first the rules differ at
    worst = {rule: min(float(np.mean([run[step] for run in results[t][rule]])) for t in cfg.tastes)
             for rule in cfg.rules}
    print(f"pair_choice: answers={cfg.answers[step]} " + " ".join(f"{r}={v:.3f}" for r, v in worst.items()))
    return worst


if __name__ == "__main__":
    main()
