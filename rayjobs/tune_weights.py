"""Ray Tune sweep of the stage-3 reward weights: which mix of aesthetic and personal reward to train on.

    photographer tune --policy results/bootstrap-... --human_reward_model results/reward-.../human_reward_model.pth \\
        --num_samples 8 --timesteps 10000 [--preference_data heldout.sqlite] [--search_lr] [--out DIR]
    python -m rayjobs.tune_weights ...          # what `ray job submit` runs

Each trial is a stage-3 fine-tune (rayjobs/finetune.py's PPO, from the bootstrap policy) on

    reward = w_nima * (nima - 1) / 9 + w_human * human,    w_nima = 1 - w_human,

with ``w_human`` drawn from [w_human_min, w_human_max]. The seed's 60/40, 70/30 and 80/20 mixes are
the first points tried (``--points 0.4 0.3 0.2``); the rest are uniform draws. ``--search_lr`` also
draws PPO's learning rate, log-uniform in [lr_min, lr_max].

The objective (maximised; reported by every trial after every ``eval_every`` PPO iterations)
---------------------------------------------------------------------------------------------
The trial's greedy crops of the held-out photos (``--eval_image``, default the bundled held-out
photos) are scored with ``rlhf.evaluation.evaluate_policy``, then

    personal       = agreement with the held-out answered pairs (``--preference_data``) when they
                     hold decided pairs on those photos, else human_mean (the human reward model's
                     score of the crops, sigmoid of the centred reward, 0.5 = an average crop)
    aesthetic_kept = aesthetic_mean / aesthetic_mean of the bootstrap policy on the same photos
    objective      = personal - penalty * max(0, aesthetic_keep - aesthetic_kept)

i.e. the person's taste, subject to keeping at least ``aesthetic_keep`` (default 95%) of the
bootstrap's aesthetic score: each point of aesthetic score lost below that costs ``penalty`` points
of the personal term. (The personal term alone would favour w_human = 1: the policy would chase the
reward model wherever it leads, blind to what makes a crop good in general.) The bootstrap's own
objective (aesthetic_kept = 1) is the bar a trial must clear; it is in baseline.json and on the plot.

ASHA (``--asha``, on by default) compares trials at every evaluation (``training_iteration`` counts
evaluations) and stops the bottom ``1 - 1/reduction_factor`` at each rung after ``grace_period``.

Where things go
---------------
* ``--out`` (default results/tune-<time>/): config.json, baseline.json, trials.csv (one row per
  trial), best.json (the best weights and its checkpoint) and objective_vs_weight.png (objective against
  w_human, and each trial's objective over training).
* ``--storage_path`` (default: the ``--out`` folder): Tune's experiment ``<storage_path>/<name>/``
  with every trial's reports and checkpoints. On a cluster it must be a folder every node can reach
  (a shared file system such as /mnt/shared/...) or a URI the cluster can write (s3://bucket/prefix).
  Each trial checkpoint is a complete policy (RLlib checkpoint + config.json): `photographer evaluate
  --policies <checkpoint>` and `photographer finetune --policy <checkpoint>` take it as it is.
* ``--resume --out DIR`` after a crash restores the sweep with ``Tuner.restore``: finished trials
  are kept, unfinished and errored ones continue from their last checkpoint.

Placement: each trial asks for what its PPO needs (RLlib's own resource request for this config:
one CPU for the trial, one per env runner, the learner's GPU when the cluster has one), so
``--num_env_runners`` scales a trial out and Tune runs as many trials at once as the cluster fits.
With the shared scoring actor (``--service``, the default) every trial's env runners score through
one actor; ``--no-service`` scores in each trial's process (small machines, tests).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayjobs.finetune import FinetuneConfig, finetune_env, given_flags
from rayjobs.ppo import PPOSettings, build_ppo_config, init_ray, restore, summarize, train_iteration
from rlhf.config import parse_config, run_dir
from rlhf.evaluation import _finite
from rlhf.images import HELDOUT_PHOTOS, bundled_photos, resolve_paths
from rlhf.rewards import RewardSpec

STATE_FILE = "photographer_state.json"
SEED_POINTS = [0.4, 0.3, 0.2]  # the seed's 60/40, 70/30 and 80/20 (w_nima/w_human) mixes


def _heldout() -> list[str]:
    return [str(p) for p in bundled_photos(HELDOUT_PHOTOS)]


@dataclass
class TuneWeightsConfig(FinetuneConfig):
    """Ray Tune sweep of the stage-3 reward weights (each trial a fine-tune); prints the best."""

    # Set per trial by the search; not flags.
    w_nima: float = field(default=0.7, metadata={"help": "set per trial (1 - w_human)", "cli": False})
    w_human: float = field(default=0.3, metadata={"help": "set per trial by the search", "cli": False})
    checkpoint_every: int = field(default=5, metadata={"help": "unused: trials checkpoint at every "
                                                       "evaluation", "cli": False})
    keep_checkpoints: int = field(default=3, metadata={"help": "unused", "cli": False})
    num_env_runners: int = field(default=0, metadata={
        "help": "env runners per trial (0 = sample in the trial's own process, 1 CPU a trial)"})
    resume: bool = field(default=False, metadata={
        "help": "restore the sweep in --out after a crash (Tuner.restore): finished trials are kept, "
                "unfinished and errored ones continue from their last checkpoint"})
    name: str = field(default="tune_weights", metadata={"help": "Tune experiment name (a folder in "
                                                        "storage_path)"})
    storage_path: str | None = field(default=None, metadata={
        "help": "where Tune keeps trials and checkpoints: a folder every node reaches (e.g. "
                "/mnt/shared/photographer/tune) or a URI (s3://bucket/prefix); default: --out"})
    num_samples: int = field(default=8, metadata={"help": "trials in all, the --points first"})
    points: list[float] = field(default_factory=lambda: list(SEED_POINTS), metadata={
        "help": "w_human values tried first (the seed's 60/40, 70/30, 80/20 mixes)"})
    w_human_min: float = field(default=0.0, metadata={"help": "lowest w_human drawn"})
    w_human_max: float = field(default=1.0, metadata={"help": "highest w_human drawn"})
    search_lr: bool = field(default=False, metadata={"help": "also draw PPO's learning rate (log-uniform)"})
    lr_min: float = field(default=3e-5, metadata={"help": "lowest learning rate drawn with --search_lr"})
    lr_max: float = field(default=3e-4, metadata={"help": "highest learning rate drawn with --search_lr"})
    eval_every: int = field(default=2, metadata={
        "help": "PPO iterations between evaluations (each is one Tune report, one ASHA step)"})
    eval_image: list[str] = field(default_factory=_heldout, metadata={
        "help": "held-out photos the objective is measured on (default: the bundled held-out photos)"})
    preference_data: str | None = field(default=None, metadata={
        "help": "held-out answered pairs (pairs JSON or store): the objective uses agreement with "
                "them when they hold decided pairs on the --eval_image photos"})
    annotator: str | None = field(default=None, metadata={
        "help": "whose answers in --preference_data (default: consensus)"})
    aesthetic_keep: float = field(default=0.95, metadata={
        "help": "share of the bootstrap's aesthetic score a trial must keep before it is penalised"})
    penalty: float = field(default=5.0, metadata={
        "help": "objective lost per unit of aesthetic_kept below --aesthetic_keep"})
    asha: bool = field(default=True, metadata={"help": "stop bad trials early with ASHA"})
    grace_period: int = field(default=1, metadata={"help": "ASHA: evaluations before a trial may be stopped"})
    reduction_factor: int = field(default=2, metadata={"help": "ASHA: keep the top 1/reduction_factor "
                                                       "at each rung"})
    max_concurrent_trials: int = field(default=0, metadata={"help": "0 = as many as the resources fit"})
    max_failures: int = field(default=2, metadata={
        "help": "retries of a failed trial from its last checkpoint (a lost spot node)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {self.num_samples}")
        if not 0.0 <= self.w_human_min <= self.w_human_max <= 1.0:
            raise ValueError(f"need 0 <= w_human_min <= w_human_max <= 1, got {self.w_human_min}, "
                             f"{self.w_human_max}")
        for p in self.points:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"--points are w_human values in [0, 1], got {p}")
        if self.search_lr and not 0 < self.lr_min <= self.lr_max:
            raise ValueError(f"need 0 < lr_min <= lr_max, got {self.lr_min}, {self.lr_max}")
        if self.eval_every < 1 or self.grace_period < 1 or self.reduction_factor < 2:
            raise ValueError("eval_every and grace_period must be >= 1, reduction_factor >= 2")
        if not 0.0 < self.aesthetic_keep <= 1.0 or self.penalty < 0:
            raise ValueError(f"aesthetic_keep must be in (0, 1] and penalty >= 0, got {self.aesthetic_keep}, "
                             f"{self.penalty}")
        if self.preference_data and not Path(self.preference_data).exists():
            raise ValueError(f"--preference_data {self.preference_data}: no such file")
        if self.max_concurrent_trials < 0 or self.max_failures < 0:
            raise ValueError("max_concurrent_trials and max_failures must be >= 0")

    @property
    def n_reports(self) -> int:
        """Evaluations per trial: the ASHA budget (max_t)."""
        iterations = math.ceil(self.timesteps / self.train_batch_size)
        return math.ceil(iterations / self.eval_every)


# --- the objective -------------------------------------------------------------------------------

def objective(personal: float, aesthetic_mean: float, baseline_aesthetic: float,
              keep: float = 0.95, penalty: float = 5.0) -> tuple[float, float]:
    """(objective, aesthetic_kept): the personal term minus the penalty for aesthetic score lost.

    aesthetic_kept = aesthetic_mean / baseline_aesthetic (both on the 1-10 scale);
    objective = personal - penalty * max(0, keep - aesthetic_kept).
    """
    if not baseline_aesthetic > 0:
        raise ValueError(f"baseline aesthetic score must be > 0, got {baseline_aesthetic}")
    kept = aesthetic_mean / baseline_aesthetic
    return personal - penalty * max(0.0, keep - kept), kept


@dataclass
class ObjectiveSpec:
    """How a trial turns its evaluation into the objective (fixed by the driver before the sweep)."""

    personal: str  # "agreement" or "human"
    baseline_aesthetic: float
    keep: float
    penalty: float

    def metrics(self, ev: Any) -> dict[str, float]:
        personal = ev.agreement if self.personal == "agreement" else ev.human_mean
        value, kept = objective(float(personal), ev.aesthetic_mean, self.baseline_aesthetic, self.keep,
                                self.penalty)
        out = {"objective": value, "personal": float(personal), "aesthetic_mean": ev.aesthetic_mean,
               "aesthetic_kept": kept, "human_mean": _num(ev.human_mean), "agreement": _num(ev.agreement),
               "agreement_pairs": ev.agreement_pairs}
        return out


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


# --- one trial -----------------------------------------------------------------------------------

@dataclass
class TrialSetup:
    """Everything a trial needs besides its sampled config; plain data, shipped once to every trial."""

    ppo: dict[str, Any]
    env: dict[str, Any]  # the crop env (from the bootstrap run), without the reward
    reward: dict[str, Any]  # RewardSpec of the combined reward; the weights are set per trial
    init_policy: str  # bootstrap checkpoint folder (absolute)
    eval_images: list[str]
    pairs: list[Any]
    objective: ObjectiveSpec
    eval_every: int
    n_reports: int
    run_config: dict[str, Any] = field(default_factory=dict)  # what the user asked, for config.json
    ref_kl: float = 0.0  # KL penalty to init_policy (rayjobs.ppo.ReferenceKLLearner)
    freeze: str = "none"  # parts of init_policy kept fixed (rlhf.policy.FROZEN_PARTS)


def _load_models(setup: TrialSetup):
    from rlhf.reward_model import PreferenceRewardModel
    from rlhf.scorers import create_scorer

    r = setup.reward
    scorer = create_scorer(r["scorer"], weights=r["scorer_weights"], device=r["device"])
    return scorer, PreferenceRewardModel.load(r["human_reward_model"], device=r["device"])


def _save_trial_checkpoint(algo, folder: Path, state: dict[str, Any], env: dict[str, Any],
                           run_config: dict[str, Any]) -> Path:
    """A self-contained policy: the RLlib checkpoint plus config.json (so CropPolicy.load knows the env)."""
    algo.save_to_path(str(folder.resolve()))
    (folder / STATE_FILE).write_text(json.dumps(state))
    env_no_reward = {k: v for k, v in env.items() if k != "reward"}
    (folder / "config.json").write_text(json.dumps({**run_config, "w_nima": env["reward"]["w_nima"],
                                                    "w_human": env["reward"]["w_human"],
                                                    "env": env_no_reward, "reward": env["reward"]},
                                                   indent=2, default=str) + "\n")
    return folder


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune's function trainable: fine-tune with this trial's weights, report the objective as it goes."""
    import ray
    import torch
    from ray import tune

    from rlhf.evaluation import evaluate_policy
    from rlhf.images import load_collection
    from rlhf.policy import MODULE_SUBDIR, CropPolicy

    # The learner (and the in-process env) get the cores Ray gave this trial, no more: trials side by
    # side with default torch threads oversubscribe the machine.
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    w_human = float(config["w_human"])
    ppo = PPOSettings(**{**setup.ppo, "lr": float(config.get("lr", setup.ppo["lr"]))})
    spec = RewardSpec(**{**setup.reward, "w_nima": 1.0 - w_human, "w_human": w_human})
    env = {**setup.env, "reward": spec.to_dict()}
    scorer, reward_model = _load_models(setup)
    photos = load_collection(setup.eval_images)
    algo = build_ppo_config(ppo, env, ref_policy=setup.init_policy, ref_kl=setup.ref_kl,
                            freeze=setup.freeze).build_algo()
    try:
        state = {"iteration": 0, "timesteps": 0, "report": 0}
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                restore(algo, Path(d).resolve())
                state = json.loads((Path(d) / STATE_FILE).read_text())
            print(f"trial resumed at iteration {state['iteration']} ({state['timesteps']} steps)", flush=True)
        else:
            src = Path(setup.init_policy) / MODULE_SUBDIR
            restore(algo, src, component=MODULE_SUBDIR.as_posix())
        # Also in every result (0 = started fresh): a worker's printed line can be lost when Ray
        # shuts down, a result cannot.
        resumed_from = state["iteration"]
        row: dict[str, float] = {}
        while state["report"] < setup.n_reports and state["timesteps"] < ppo.timesteps:
            for _ in range(setup.eval_every):
                t0 = time.time()
                result, sampled = train_iteration(algo, ppo.sample_timeout_s)
                state["iteration"] += 1
                state["timesteps"] += sampled
                row = summarize(result, state["iteration"], time.time() - t0)
                if state["timesteps"] >= ppo.timesteps:
                    break
            state["report"] += 1
            tmp = Path(tempfile.mkdtemp(prefix="photographer-trial-"))
            try:
                ckpt = _save_trial_checkpoint(algo, tmp / "policy", state, env, setup.run_config)
                ev = evaluate_policy(CropPolicy.load(ckpt), photos, scorer, reward_model, setup.pairs or None,
                                     name=f"w_human={w_human:.3f}")
                metrics = setup.objective.metrics(ev)
                metrics.update(w_human=w_human, w_nima=1.0 - w_human, lr=ppo.lr, iteration=state["iteration"],
                               resumed_from_iteration=resumed_from,
                               timesteps=state["timesteps"], report=state["report"],
                               episode_return_mean=row.get("episode_return_mean", float("nan")),
                               train_final_score_mean=row.get("final_score_mean", float("nan")))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        algo.stop()


# --- the sweep -----------------------------------------------------------------------------------

def param_space(cfg: TuneWeightsConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {"w_human": tune.uniform(cfg.w_human_min, cfg.w_human_max)}
    if cfg.search_lr:
        space["lr"] = tune.loguniform(cfg.lr_min, cfg.lr_max)
    return space


def seeded_points(cfg: TuneWeightsConfig) -> list[dict[str, float]]:
    """The first trials: the --points inside the searched range (with the default lr)."""
    pts = [p for p in cfg.points if cfg.w_human_min <= p <= cfg.w_human_max][: cfg.num_samples]
    return [{"w_human": p, **({"lr": cfg.lr} if cfg.search_lr else {})} for p in pts]


def trial_resources(cfg: TuneWeightsConfig, env: dict[str, Any]):
    """RLlib's own resource request for a trial's PPO (trial CPU, env runners, learner GPU)."""
    from ray.rllib.algorithms.ppo import PPO

    return PPO.default_resource_request(build_ppo_config(cfg, env))


def _storage(cfg: TuneWeightsConfig, out: Path) -> str:
    s = cfg.storage_path or str(out)
    return s if "://" in s else str(Path(s).expanduser().resolve())


def _baseline(cfg: TuneWeightsConfig, out: Path, photos_paths: list[str], pairs: list[Any]) -> dict[str, Any]:
    """The bootstrap policy on the held-out photos: the aesthetic score to keep and the bar to clear."""
    path = out / "baseline.json"
    if cfg.resume and path.is_file():
        return json.loads(path.read_text())
    from rlhf.evaluation import evaluate_policy
    from rlhf.images import load_collection
    from rlhf.policy import CropPolicy
    from rlhf.reward_model import PreferenceRewardModel
    from rlhf.scorers import create_scorer

    scorer = create_scorer(cfg.scorer, weights=cfg.scorer_weights)
    reward_model = PreferenceRewardModel.load(cfg.human_reward_model)
    ev = evaluate_policy(CropPolicy.load(cfg.policy), load_collection(photos_paths), scorer, reward_model,
                         pairs or None, name="bootstrap")
    personal = "agreement" if ev.agreement is not None and ev.agreement_pairs > 0 else "human"
    spec = ObjectiveSpec(personal, ev.aesthetic_mean, cfg.aesthetic_keep, cfg.penalty)
    data = {"objective_personal_term": personal, "metrics": spec.metrics(ev), "eval": ev.to_json()}
    path.write_text(json.dumps(_finite(data), indent=2) + "\n")
    return json.loads(path.read_text())


def build_setup(cfg: TuneWeightsConfig, out: Path, given: set[str] | frozenset[str] = frozenset()) -> tuple[TrialSetup, dict[str, Any]]:
    """The trials' shared setup and the bootstrap baseline; starts the scoring actor with --service."""
    from rlhf.policy import latest_checkpoint
    from rlhf.store import load_preference_data

    spec = RewardSpec(kind="combined", scorer=cfg.scorer, scorer_weights=cfg.scorer_weights,
                      human_reward_model=str(Path(cfg.human_reward_model).resolve()))
    if cfg.service:
        from rlhf.scoring_service import ensure_service

        spec.service = ensure_service(spec)
    env = finetune_env(cfg, spec, given)
    env.pop("reward")
    eval_images = [str(p.resolve()) for p in resolve_paths(cfg.eval_image)]
    pairs = load_preference_data(cfg.preference_data, cfg.annotator) if cfg.preference_data else []
    baseline = _baseline(cfg, out, eval_images, pairs)
    b = baseline["metrics"]
    obj = ObjectiveSpec(baseline["objective_personal_term"], b["aesthetic_mean"], cfg.aesthetic_keep, cfg.penalty)
    ppo = {f: getattr(cfg, f) for f in PPOSettings.__dataclass_fields__}
    run_config = {k: v for k, v in asdict(cfg).items() if k not in ("w_nima", "w_human")}
    setup = TrialSetup(ppo=ppo, env=env, reward=spec.to_dict(), init_policy=str(latest_checkpoint(cfg.policy)),
                       eval_images=eval_images, pairs=pairs, objective=obj, eval_every=cfg.eval_every,
                       n_reports=cfg.n_reports, run_config=run_config, ref_kl=cfg.ref_kl,
                       freeze=cfg.freeze)
    return setup, baseline


def make_scheduler(cfg: TuneWeightsConfig):
    """ASHA over evaluations: every report is one step of `training_iteration`, n_reports in all."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not cfg.asha:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.n_reports,
                         grace_period=min(cfg.grace_period, cfg.n_reports), reduction_factor=cfg.reduction_factor)


def make_tuner(cfg: TuneWeightsConfig, setup: TrialSetup, storage: str):
    """A new Tuner, or the crashed sweep restored (--resume) when its experiment state is there."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    env = {**setup.env, "reward": setup.reward}
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup), trial_resources(cfg, env))
    exp_path = f"{storage.rstrip('/')}/{cfg.name}"
    if cfg.resume:
        if tune.Tuner.can_restore(exp_path):
            print(f"restoring the sweep from {exp_path}", flush=True)
            return tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        print(f"--resume: no sweep in {exp_path}; starting a new one", flush=True)
    search = BasicVariantGenerator(points_to_evaluate=seeded_points(cfg), random_state=cfg.seed)
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(metric="objective", mode="max", search_alg=search, scheduler=make_scheduler(cfg),
                                    num_samples=cfg.num_samples, reuse_actors=False,
                                    max_concurrent_trials=cfg.max_concurrent_trials or None),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="objective",
                                                    checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
    )


# --- results -------------------------------------------------------------------------------------

TRIAL_FIELDS = ["trial", "w_human", "w_nima", "lr", "status", "stopped_early", "reports", "iterations",
                "timesteps", "objective_last", "objective_best", "aesthetic_mean", "aesthetic_kept",
                "human_mean", "agreement", "best_checkpoint", "error"]


def summarize_results(results, n_reports: int) -> list[dict[str, Any]]:
    """One row per trial: its weights, how far it got, its last and best objective and checkpoint."""
    rows = []
    for r in results:
        m = r.metrics or {}
        hist = r.metrics_dataframe
        row: dict[str, Any] = {
            "trial": m.get("trial_id") or Path(str(r.path)).name,
            "w_human": r.config.get("w_human"), "w_nima": 1.0 - r.config.get("w_human", float("nan")),
            "lr": r.config.get("lr", m.get("lr")), "status": "error" if r.error else "ok",
            "reports": int(m.get("training_iteration", 0)), "iterations": m.get("iteration"),
            "timesteps": m.get("timesteps"), "objective_last": m.get("objective"),
            "aesthetic_mean": m.get("aesthetic_mean"), "aesthetic_kept": m.get("aesthetic_kept"),
            "human_mean": m.get("human_mean"), "agreement": m.get("agreement"),
            "error": str(r.error).splitlines()[0][:300] if r.error else "",
            "history": [] if hist is None or "objective" not in hist else
            list(zip(hist["training_iteration"].tolist(), hist["objective"].tolist(), strict=True)),
        }
        row["stopped_early"] = bool(not r.error and row["reports"] < n_reports)
        # Ties go to the later report: the longer-trained policy.
        best = max(r.best_checkpoints or [], default=None,
                   key=lambda cm: (cm[1].get("objective", -math.inf), cm[1].get("training_iteration", 0)))
        row["objective_best"] = best[1].get("objective") if best else m.get("objective")
        row["best_checkpoint"] = best[0].path if best else (r.checkpoint.path if r.checkpoint else "")
        rows.append(row)
    return rows


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TRIAL_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def plot_sweep(rows: list[dict[str, Any]], baseline_objective: float, path: Path, personal: str) -> Path:
    """objective_vs_weight.png: objective against w_human (left), each trial's objective over training (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["objective_best"] is not None and r["status"] == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    lrs = [r["lr"] for r in ok]
    varied = len(set(lrs)) > 1
    for r in ok:
        kw = {"c": [math.log10(r["lr"])], "cmap": "viridis", "vmin": math.log10(min(lrs)),
              "vmax": math.log10(max(lrs))} if varied else {"color": "tab:blue"}
        hollow = r["stopped_early"]
        ax1.scatter([r["w_human"]], [r["objective_best"]], s=60, marker="o", zorder=3,
                    **({"facecolors": "none", "edgecolors": "tab:red"} if hollow else kw))
    if ok:
        best = max(ok, key=lambda r: r["objective_best"])
        ax1.scatter([best["w_human"]], [best["objective_best"]], s=260, marker="*", color="gold",
                    edgecolors="k", zorder=4, label=f"best: w_human={best['w_human']:.2f}")
    ax1.axhline(baseline_objective, color="grey", ls="--", lw=1, label="bootstrap policy")
    ax1.scatter([], [], facecolors="none", edgecolors="tab:red", label="stopped early by ASHA")
    ax1.set_xlim(-0.03, 1.03)
    ax1.set_xlabel("w_human  (w_nima = 1 - w_human)")
    ax1.set_ylabel(f"objective ({personal} - aesthetic penalty)")
    ax1.set_title("best objective per trial" + ("  (colour: log10 lr)" if varied else ""))
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for r in ok:
        if r["history"]:
            x, y = zip(*r["history"], strict=True)
            ax2.plot(x, y, ls="--" if r["stopped_early"] else "-", marker=".",
                     label=f"w_human={r['w_human']:.2f}")
    ax2.axhline(baseline_objective, color="grey", ls="--", lw=1)
    ax2.set_xlabel("evaluation (Tune training_iteration)")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_title("objective during training (dashed: stopped early)")
    if len(ok) <= 12:
        ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(cfg: TuneWeightsConfig, given: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Run (or restore) the sweep; returns best.json's content."""
    from rayjobs.bootstrap import save_config_with_env

    out = run_dir(cfg.out, "tune")
    init_ray()
    storage = _storage(cfg, out)
    setup, baseline = build_setup(cfg, out, given)
    save_config_with_env(cfg, {**setup.env, "reward": setup.reward}, out)
    print(f"tune: {cfg.num_samples} trials of {cfg.timesteps} steps ({cfg.n_reports} evaluations each) from "
          f"{setup.init_policy}; objective = {setup.objective.personal} - {cfg.penalty} * max(0, "
          f"{cfg.aesthetic_keep} - aesthetic_kept); bootstrap aesthetic {setup.objective.baseline_aesthetic:.3f}, "
          f"objective {baseline['metrics']['objective']:.4f}; storage {storage}/{cfg.name}", flush=True)
    results = make_tuner(cfg, setup, storage).fit()
    rows = summarize_results(results, cfg.n_reports)
    write_trials_csv(rows, out / "trials.csv")
    plot_sweep(rows, baseline["metrics"]["objective"], out / "objective_vs_weight.png", setup.objective.personal)
    ok = [r for r in rows if r["status"] == "ok" and r["objective_best"] is not None]
    if not ok:
        errors = "; ".join(r["error"] for r in rows if r["error"]) or "no trial reported"
        raise RuntimeError(f"tune: every trial failed ({errors}); see {storage}/{cfg.name}")
    best = max(ok, key=lambda r: r["objective_best"])
    summary = {
        "w_human": best["w_human"], "w_nima": best["w_nima"], "lr": best["lr"],
        "objective": best["objective_best"], "objective_personal_term": setup.objective.personal,
        "bootstrap_objective": baseline["metrics"]["objective"], "checkpoint": best["best_checkpoint"],
        "trial": best["trial"], "trials": len(rows), "stopped_early": sum(r["stopped_early"] for r in rows),
        "errored": sum(r["status"] == "error" for r in rows), "experiment": f"{storage}/{cfg.name}",
        "plot": str(out / "objective_vs_weight.png"),
    }
    (out / "best.json").write_text(json.dumps(_finite(summary), indent=2) + "\n")
    print(f"best weights: w_nima={best['w_nima']:.3f} w_human={best['w_human']:.3f} lr={best['lr']:.2e}: "
          f"objective {best['objective_best']:.4f} (bootstrap {baseline['metrics']['objective']:.4f}); "
          f"{summary['stopped_early']} of {len(rows)} trials stopped early", flush=True)
    print(f"best checkpoint: {best['best_checkpoint']}\nplot: {out / 'objective_vs_weight.png'}\n"
          f"to train with these weights: photographer finetune --policy {cfg.policy} --human_reward_model "
          f"{cfg.human_reward_model} --w_nima {best['w_nima']:.3f} --w_human {best['w_human']:.3f}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(TuneWeightsConfig, argv, prog="photographer tune")
    return run(cfg, given=given_flags(argv))


if __name__ == "__main__":
    main()
