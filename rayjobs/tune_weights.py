"""Ray Tune sweep of the stage-3 reward weights: which mix of aesthetic and personal reward to train on.

    photographer tune --policy results/bootstrap-... --human_reward_model results/reward-.../human_reward_model.pth \\
        --num_samples 8 --timesteps 10000 [--preference_data heldout.sqlite] [--search_lr] [--out DIR]
    python -m rayjobs.tune_weights ...          # what `ray job submit` runs

Each trial is a stage-3 fine-tune (rayjobs.training.train from the bootstrap, reporting through its
``on_iteration`` hook) on  reward = w_nima * (nima - 1) / 9 + w_human * human,  w_nima = 1 - w_human,
with ``w_human`` drawn from [w_human_min, w_human_max]. The seed's 60/40, 70/30 and 80/20 mixes are
the first points tried (``--points 0.4 0.3 0.2``); the rest are uniform draws. ``--search_lr`` also
draws PPO's learning rate, log-uniform in [lr_min, lr_max].

The objective (maximised; each trial reports it every ``eval_every`` PPO iterations) scores the
trial's greedy crops of the held-out photos (``--eval_image``) with ``rlhf.evaluation.evaluate_policy``:

    personal       = agreement with the held-out answered pairs (``--preference_data``) when they
                     hold decided pairs on those photos, else human_mean (the human reward model's
                     score of the crops, sigmoid of the centred reward, 0.5 = an average crop)
    aesthetic_kept = aesthetic_mean / aesthetic_mean of the bootstrap policy on the same photos
    objective      = personal - penalty * max(0, aesthetic_keep - aesthetic_kept)

i.e. the person's taste, keeping ``aesthetic_keep`` of the bootstrap's aesthetic score (the personal
term alone would favour w_human = 1); the bootstrap's objective (baseline.json) is the bar to clear.
ASHA (``--asha``) compares trials at every evaluation and stops the bottom ``1 - 1/reduction_factor``.

``--out`` gets config.json, baseline.json, trials.csv (one row per trial), best.json (the best
weights and checkpoint) and objective_vs_weight.png. ``--storage_path`` holds Tune's experiment
``<storage_path>/<name>/``: on a cluster a folder every node reaches or a URI (s3://bucket/prefix).
Each trial checkpoint is a complete policy (the trial's run folder: config.json and its newest
RLlib checkpoint), which `photographer evaluate --policies` and `finetune --policy` take as it is.
``--resume --out DIR`` restores a crashed sweep (``Tuner.restore``).

Placement: each trial asks for RLlib's own resource request for its algorithm (``--algo``; one CPU, one
per env runner, the learner's GPU when the cluster has one), so ``--num_env_runners`` scales a trial
out. With ``--service`` every trial's env runners score through one shared actor.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayjobs.algorithms import build_config, check_algo, check_init_policy
from rayjobs.bootstrap import ScorerSettings, save_run_config
from rayjobs.finetune import FROM_POLICY, MIN_KEPT, Stage3Settings, combined_reward, finetune_env, stage3_ppo
from rayjobs.training import STATE_FILE, CheckpointSettings, PPOSettings, init_ray, train
from rlhf.config import CONFIG_VERSION, parse_config_given, run_dir
from rlhf.env import CropEnvConfig
from rlhf.evaluation import _finite
from rlhf.images import HELDOUT_PHOTOS, bundled_photos, resolve_paths
from rlhf.reward import RewardSpec

SEED_POINTS = [0.4, 0.3, 0.2]  # the seed's 60/40, 70/30 and 80/20 (w_nima/w_human) mixes


def _heldout() -> list[str]:
    return [str(p) for p in bundled_photos(HELDOUT_PHOTOS)]


def trial_ppo() -> PPOSettings:
    """Stage 3's PPO, sampling in the trial's own process (1 CPU a trial) unless --num_env_runners."""
    return dataclasses.replace(stage3_ppo(), num_env_runners=0)


@dataclass
class TuneWeightsConfig:
    """Ray Tune sweep of the stage-3 reward weights (each trial a fine-tune); prints the best."""

    stage3: Stage3Settings = field(default_factory=Stage3Settings)
    out: str | None = field(default=None, metadata={"help": "run folder (default: results/tune-<time>)"})
    resume: bool = field(default=False, metadata={
        "help": "restore the sweep in --out after a crash (Tuner.restore): finished trials are kept, "
                "unfinished and errored ones continue from their last checkpoint"})
    env: CropEnvConfig = field(default_factory=CropEnvConfig, metadata={"help_default": FROM_POLICY})
    ppo: PPOSettings = field(default_factory=trial_ppo)
    scoring: ScorerSettings = field(default_factory=ScorerSettings)
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
        "help": "PPO iterations between evaluations (each is one checkpoint, one Tune report, one ASHA step)"})
    eval_image: list[str] = field(default_factory=_heldout, metadata={
        "help": "held-out photos the objective is measured on", "help_default": "the bundled held-out photos"})
    preference_data: str | None = field(default=None, metadata={
        "help": "held-out answered pairs (pairs JSON or store): the objective uses agreement with "
                "them when they hold decided pairs on the --eval_image photos"})
    annotator: str | None = field(default=None, metadata={
        "help": "whose answers in --preference_data (default: consensus)"})
    aesthetic_keep: float = field(default=MIN_KEPT, metadata={
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
        if self.resume and not self.out:
            raise ValueError("--resume needs --out: the sweep folder to restore")
        self.stage3.validate()
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
        iterations = math.ceil(self.ppo.timesteps / self.ppo.train_batch_size)
        return math.ceil(iterations / self.eval_every)


def objective(personal: float, aesthetic_mean: float, baseline_aesthetic: float,
              keep: float = 0.95, penalty: float = 5.0) -> tuple[float, float]:
    """(objective, aesthetic_kept): personal - penalty * max(0, keep - aesthetic_kept), where
    aesthetic_kept = aesthetic_mean / baseline_aesthetic (both on the 1-10 scale)."""
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
        return {"objective": value, "personal": float(personal), "aesthetic_mean": ev.aesthetic_mean,
                "aesthetic_kept": kept, "human_mean": _num(ev.human_mean), "agreement": _num(ev.agreement),
                "agreement_pairs": ev.agreement_pairs}


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


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
    ref_kl: float = 0.0  # KL penalty to init_policy (rayjobs.algorithms.CropLearnerMixin)
    freeze: str = "none"  # parts of init_policy kept fixed (rlhf.policy.FROZEN_PARTS)


def _load_models(setup: TrialSetup):
    from rlhf.preference import PreferenceRewardModel
    from rlhf.scorers import create_scorer

    r = setup.reward
    scorer = create_scorer(r["scorer"], weights=r["scorer_weights"], device=r["device"])
    return scorer, PreferenceRewardModel.load(r["human_reward_model"], device=r["device"])


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune's function trainable: a fine-tune with this trial's weights through rayjobs.training.train, which
    checkpoints every eval_every iterations; each checkpoint is evaluated and reported to Tune."""
    from ray import tune

    from rlhf.evaluation import evaluate_policy
    from rlhf.images import load_collection
    from rlhf.policy import CropPolicy, latest_checkpoint

    w_human = float(config["w_human"])
    ppo = PPOSettings(**{**setup.ppo, "lr": float(config.get("lr", setup.ppo["lr"]))})
    spec = RewardSpec(**{**setup.reward, "w_nima": 1.0 - w_human, "w_human": w_human})
    env = {**setup.env, "reward": spec.to_dict()}
    scorer, reward_model = _load_models(setup)
    photos = load_collection(setup.eval_images)
    # The trial's run folder (config.json, progress.csv, its newest checkpoint) is what it reports:
    # a complete policy that `photographer evaluate/finetune --policy` take as it is.
    out = Path(tempfile.mkdtemp(prefix="photographer-trial-"))
    try:
        checkpoint = tune.get_checkpoint()
        resumed_from = 0  # in every result too: a worker's printed line can be lost when Ray shuts down
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                shutil.copytree(d, out, dirs_exist_ok=True)
            resumed_from = json.loads((latest_checkpoint(out) / STATE_FILE).read_text())["iteration"]
        (out / "config.json").write_text(json.dumps(
            {"config_version": CONFIG_VERSION, **setup.run_config, "w_nima": 1.0 - w_human, "w_human": w_human,
             "env": setup.env, "reward": env["reward"]}, indent=2, default=str) + "\n")

        def report(row: dict[str, float], saved: Path | None) -> None:
            if saved is None:
                return
            ev = evaluate_policy(CropPolicy.load(out), photos, scorer, reward_model, setup.pairs or None,
                                 name=f"w_human={w_human:.3f}")
            metrics = setup.objective.metrics(ev)
            metrics.update(w_human=w_human, w_nima=1.0 - w_human, lr=ppo.lr, iteration=int(row["iteration"]),
                           resumed_from_iteration=resumed_from, timesteps=int(row["timesteps"]),
                           report=math.ceil(row["iteration"] / setup.eval_every), kept_lambda=row.get("kept_lambda"),
                           episode_return_mean=row.get("episode_return_mean", float("nan")),
                           train_final_score_mean=row.get("final_score_mean", float("nan")))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out)))

        train(ppo, env, out, checkpoints=CheckpointSettings(checkpoint_every=setup.eval_every, keep_checkpoints=1),
              resume=checkpoint is not None, init_policy=setup.init_policy, ref_kl=setup.ref_kl, freeze=setup.freeze,
              title=f"w_human={w_human:.3f}", on_iteration=report)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def param_space(cfg: TuneWeightsConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {"w_human": tune.uniform(cfg.w_human_min, cfg.w_human_max)}
    if cfg.search_lr:
        space["lr"] = tune.loguniform(cfg.lr_min, cfg.lr_max)
    return space


def seeded_points(cfg: TuneWeightsConfig) -> list[dict[str, float]]:
    """The first trials: the --points inside the searched range (with the default lr)."""
    pts = [p for p in cfg.points if cfg.w_human_min <= p <= cfg.w_human_max][: cfg.num_samples]
    return [{"w_human": p, **({"lr": cfg.ppo.lr} if cfg.search_lr else {})} for p in pts]


def trial_resources(cfg: TuneWeightsConfig, env: dict[str, Any]):
    """RLlib's own resource request for a trial's algorithm (trial CPU, env runners, learner GPU)."""
    config = build_config(cfg.ppo, env)
    return config.algo_class.default_resource_request(config)


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
    from rlhf.preference import PreferenceRewardModel
    from rlhf.scorers import create_scorer

    scorer = create_scorer(cfg.scoring.scorer, weights=cfg.scoring.scorer_weights)
    reward_model = PreferenceRewardModel.load(cfg.stage3.human_reward_model)
    ev = evaluate_policy(CropPolicy.load(cfg.stage3.policy), load_collection(photos_paths), scorer, reward_model,
                         pairs or None, name="bootstrap")
    personal = "agreement" if ev.agreement is not None and ev.agreement_pairs > 0 else "human"
    spec = ObjectiveSpec(personal, ev.aesthetic_mean, cfg.aesthetic_keep, cfg.penalty)
    data = {"objective_personal_term": personal, "metrics": spec.metrics(ev), "eval": ev.to_json()}
    path.write_text(json.dumps(_finite(data), indent=2) + "\n")
    return json.loads(path.read_text())


def build_setup(cfg: TuneWeightsConfig, out: Path, given: Set[str] = frozenset()) -> tuple[TrialSetup, dict[str, Any]]:
    """The trials' shared setup and the bootstrap baseline; starts the scoring actor with --service.
    Fails before any work where --algo cannot continue the bootstrap (not once per trial)."""
    from rlhf.policy import latest_checkpoint
    from rlhf.store import load_preference_data

    check_algo(cfg.ppo.algo, cfg.stage3.ref_kl)
    check_init_policy(cfg.ppo.algo, cfg.stage3.policy)
    spec = combined_reward(cfg.scoring, cfg.stage3.human_reward_model)
    env = finetune_env(cfg.stage3.policy, cfg.env, cfg.ppo.seed, given, spec)
    cfg.stage3.keep_aesthetic(env, out, cfg.resume)  # the trials' env_config carries the constraint
    env.pop("reward")
    eval_images = [str(p.resolve()) for p in resolve_paths(cfg.eval_image)]
    pairs = load_preference_data(cfg.preference_data, cfg.annotator) if cfg.preference_data else []
    baseline = _baseline(cfg, out, eval_images, pairs)
    b = baseline["metrics"]
    obj = ObjectiveSpec(baseline["objective_personal_term"], b["aesthetic_mean"], cfg.aesthetic_keep, cfg.penalty)
    setup = TrialSetup(ppo=asdict(cfg.ppo), env=env, reward=spec.to_dict(),
                       init_policy=str(latest_checkpoint(cfg.stage3.policy)), eval_images=eval_images, pairs=pairs,
                       objective=obj, eval_every=cfg.eval_every, n_reports=cfg.n_reports, run_config=asdict(cfg),
                       ref_kl=cfg.stage3.ref_kl, freeze=cfg.stage3.freeze)
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
    search = BasicVariantGenerator(points_to_evaluate=seeded_points(cfg), random_state=cfg.ppo.seed)
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


def run(cfg: TuneWeightsConfig, given: Set[str] = frozenset()) -> dict[str, Any]:
    """Run (or restore) the sweep; returns best.json's content."""
    out = run_dir(cfg.out, "tune")
    init_ray()
    storage = _storage(cfg, out)
    setup, baseline = build_setup(cfg, out, given)
    save_run_config(cfg, {**setup.env, "reward": setup.reward}, out)
    print(f"tune: {cfg.num_samples} trials of {cfg.ppo.timesteps} steps ({cfg.n_reports} evaluations each) from "
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
          f"to train with these weights: photographer finetune --policy {cfg.stage3.policy} --human_reward_model "
          f"{cfg.stage3.human_reward_model} --w_nima {best['w_nima']:.3f} --w_human {best['w_human']:.3f}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(*parse_config_given(TuneWeightsConfig, argv, prog="photographer tune"))


if __name__ == "__main__":
    main()
