"""The Tune sweep of the reward weights: a real 2-trial sweep on 2 cores, killed mid-way and restored.

Inputs are real and tiny: the session's tiny bootstrap policy (tests/test_pairs_job.py), a human
reward model trained here on answers of a SIMULATED annotator ('tight' taste), and held-out pairs on
the unseen photos answered by the same simulated annotator.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlhf.images import HELDOUT_PHOTOS, Photo, bundled_photos, load_image, photo_id
from rlhf.pairs import Pair, pair_id, save_pairs
from tests.test_pairs_job import tiny_bootstrap

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [str(p) for p in bundled_photos(["chelsea", "coffee"])]
UNSEEN = [str(p) for p in bundled_photos(HELDOUT_PHOTOS[1:])]  # flower, grace_hopper
# The killed sweep: 64 steps an iteration, a report each. Four reports a trial (not two) so that the
# kill, which waits for the first recorded checkpoint, reliably finds a trial with work left to resume.
SWEEP_STEPS, SWEEP_REPORTS = 256, 4


def _random_box(rng, photo: Photo, lo: float = 0.35) -> tuple[int, int, int, int]:
    w, h = int(rng.uniform(lo, 1.0) * photo.width), int(rng.uniform(lo, 1.0) * photo.height)
    l, t = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
    return (l, t, l + w, t + h)


def simulated_pairs(paths: list[str], per_photo: int, seed: int) -> list[Pair]:
    """Random crop pairs answered by a SIMULATED annotator (noiseless 'tight' taste)."""
    from rlhf.simulated import SimulatedAnnotator

    taste = SimulatedAnnotator("tight", noise=0.0)
    rng = np.random.default_rng(seed)
    out = []
    for path in paths:
        photo = Photo(photo_id(path), load_image(path))
        for _ in range(per_photo):
            a, b = _random_box(rng, photo), _random_box(rng, photo)
            out.append(Pair(pair_id(photo.id, a, b), photo.id, a, b, taste.choose(photo, a, b)))
    return out


@pytest.fixture(scope="module")
def inputs(ray_local, tmp_path_factory):
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model

    policy = tiny_bootstrap(tmp_path_factory)
    folder = tmp_path_factory.mktemp("tune_inputs")
    model, _ = train_reward_model(examples_from_pairs(simulated_pairs(TRAIN, 8, seed=0)), RewardTrainConfig(
        epochs=20, val_fraction=0.0, embed_dim=4), log=None)
    model_path = model.save(folder / "human_reward_model.pth")
    heldout = save_pairs(folder / "heldout.json", simulated_pairs(UNSEEN, 6, seed=1), relative_to=folder)
    return policy, model_path, heldout


# --- the objective and the search space (no Ray) ----------------------------------------------------

def test_objective_penalises_only_aesthetic_loss_below_the_bar():
    from rayjobs.tune_weights import objective

    assert objective(0.7, 6.0, 6.0) == (pytest.approx(0.7), pytest.approx(1.0))
    assert objective(0.7, 5.8, 6.0, keep=0.95)[0] == pytest.approx(0.7)  # kept 96.7%: no penalty
    value, kept = objective(0.7, 5.4, 6.0, keep=0.95, penalty=5.0)  # kept 90%: 5 * 0.05 off
    assert kept == pytest.approx(0.9) and value == pytest.approx(0.7 - 0.25)
    assert objective(0.7, 6.6, 6.0)[0] == pytest.approx(0.7)  # more aesthetic score earns nothing extra
    with pytest.raises(ValueError, match="baseline"):
        objective(0.7, 5.0, 0.0)


def _cfg(inputs, **kw):
    from rayjobs.tune_weights import TuneWeightsConfig

    policy, model_path, _ = inputs
    from rlhf.config import from_flat

    return from_flat(TuneWeightsConfig, policy=str(policy), human_reward_model=str(model_path), **kw)


def test_search_space_seed_points_and_budget(inputs):
    from rayjobs.tune_weights import param_space, seeded_points

    cfg = _cfg(inputs, num_samples=2, timesteps=1000, train_batch_size=128, minibatch_size=64, eval_every=3)
    assert seeded_points(cfg) == [{"w_human": 0.4}, {"w_human": 0.3}]  # the seed's 60/40, 70/30 first
    assert cfg.n_reports == 3  # ceil(ceil(1000 / 128) / 3)
    space = param_space(cfg)
    assert set(space) == {"w_human"} and (space["w_human"].lower, space["w_human"].upper) == (0.0, 1.0)
    cfg = _cfg(inputs, w_human_min=0.25, w_human_max=0.5, search_lr=True, lr_min=1e-5, lr_max=1e-3)
    assert seeded_points(cfg) == [{"w_human": 0.4, "lr": cfg.ppo.lr}, {"w_human": 0.3, "lr": cfg.ppo.lr}]
    assert set(param_space(cfg)) == {"w_human", "lr"}


@pytest.mark.parametrize("kw, message", [
    ({"w_human_min": 0.6, "w_human_max": 0.4}, "w_human_min"),
    ({"points": [0.3, 1.5]}, "points"),
    ({"num_samples": 0}, "num_samples"),
    ({"search_lr": True, "lr_min": 0.0}, "lr_min"),
    ({"preference_data": "/nonexistent/heldout.json"}, "/nonexistent/heldout.json"),
    ({"resume": True}, "--resume needs --out"),
])
def test_bad_settings_fail_before_any_work(inputs, kw, message):
    with pytest.raises(ValueError, match=message):
        _cfg(inputs, **kw)


def test_cli_flags_map_onto_the_config():
    import argparse

    from rayjobs.tune_weights import TuneWeightsConfig
    from rlhf.config import add_dataclass_arguments

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TuneWeightsConfig)
    flags = {a for action in parser._actions for a in action.option_strings}
    assert {"--policy", "--human_reward_model", "--storage_path", "--num_samples", "--search_lr", "--asha",
            "--resume", "--eval_every", "--preference_data", "--num_env_runners"} <= flags
    assert "--w_human" not in flags and "--w_nima" not in flags  # searched, not set


def test_trial_resources_follow_the_cluster(inputs):
    """Plumbing of placement (no GPU here): what a trial asks Ray for, per settings."""
    from rayjobs.algorithms import build_config
    from rayjobs.tune_weights import trial_resources

    env = {"images": TRAIN}
    cfg = _cfg(inputs, num_env_runners=0, num_gpus_per_learner=0)
    assert trial_resources(cfg, env).bundles == [{"CPU": 1}]  # the 2-core test sweep: 1 CPU a trial
    cfg = _cfg(inputs, num_env_runners=3, num_gpus_per_learner=0)
    assert trial_resources(cfg, env).bundles == [{"CPU": 1}] + [{"CPU": 1}] * 3
    # A GPU asked for by a process that sees none (a job driver on a CPU head node): the learner
    # becomes one remote actor that Ray places on a GPU node, and the trial reserves that GPU.
    cfg = _cfg(inputs, num_env_runners=2, num_gpus_per_learner=1)
    assert build_config(cfg.ppo, env).num_learners == 1
    bundles = trial_resources(cfg, env).bundles
    assert sum(b.get("GPU", 0) for b in bundles) == 1 and sum(b.get("CPU", 0) for b in bundles) == 3


def test_asha_stops_trials_that_fall_behind(inputs, tmp_path):
    """Our ASHA settings and trials.csv accounting, with real Tune. The trainable is a stand-in for
    PPO (plumbing): its objective is its w_human at every report."""
    from ray import tune

    from rayjobs.tune_weights import make_scheduler, summarize_results

    cfg = _cfg(inputs, timesteps=512, train_batch_size=64, minibatch_size=32, eval_every=2)
    assert cfg.n_reports == 4

    def stand_in(config):
        for _ in range(4):
            tune.report({"objective": config["w_human"]})

    tuner = tune.Tuner(stand_in, param_space={"w_human": tune.grid_search([0.9, 0.1, 0.2, 0.95])},
                       tune_config=tune.TuneConfig(metric="objective", mode="max", scheduler=make_scheduler(cfg),
                                                   max_concurrent_trials=1),
                       run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0))
    rows = {r["w_human"]: r for r in summarize_results(tuner.fit(), cfg.n_reports)}
    # Run one after another: 0.1 and 0.2 fall below the first rung's cutoff and stop; 0.95 goes on.
    assert {w: (r["reports"], r["stopped_early"]) for w, r in rows.items()} == {
        0.9: (4, False), 0.1: (1, True), 0.2: (1, True), 0.95: (4, False)}
    assert all(r["status"] == "ok" for r in rows.values())


def test_a_sweep_trains_with_another_algorithm_and_refuses_the_other_head(inputs, tmp_path):
    """--algo reaches every trial: one APPO trial from the (PPO) bootstrap finishes and reports; DQN, whose
    head holds Q-values, is refused before the baseline or any trial runs."""
    from rayjobs.tune_weights import run

    with pytest.raises(ValueError, match="trained with ppo or appo .* use --algo ppo or appo"):
        run(_cfg(inputs, algo="dqn", out=str(tmp_path / "dqn")))
    assert not (tmp_path / "dqn" / "baseline.json").exists()
    best = run(_cfg(inputs, algo="appo", num_samples=1, points=[0.3], timesteps=128, train_batch_size=64,
                    minibatch_size=32, eval_every=1, asha=False, service=False, image=TRAIN, eval_image=UNSEEN,
                    out=str(tmp_path / "appo")))
    assert best["trials"] == 1 and best["errored"] == 0 and best["w_human"] == 0.3
    assert json.loads((tmp_path / "appo" / "config.json").read_text())["ppo"]["algo"] == "appo"


# --- a real sweep, killed and restored ------------------------------------------------------------

def _sweep(inputs, out: Path, *extra: str) -> subprocess.Popen:
    policy, model_path, heldout = inputs
    args = ["--policy", str(policy), "--human_reward_model", str(model_path), "--no-service",
            "--num_samples", "2", "--timesteps", str(SWEEP_STEPS), "--train_batch_size", "64", "--minibatch_size", "32",
            "--num_epochs", "1", "--eval_every", "1", "--image", *TRAIN,
            "--eval_image", *UNSEEN, "--preference_data", str(heldout), "--out", str(out),
            # No ASHA here: a trial it stops at a rung before the kill is finished, not caught mid-way, and
            # is rightly not resumed (ASHA itself: test_asha_stops_trials_that_fall_behind).
            "--no-asha", *extra]
    # Tune saves its experiment state at most every 10 s by default; every second here, so the kill
    # below lands after a state that records a trial checkpoint.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    return subprocess.Popen([sys.executable, "-m", "rayjobs.tune_weights", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _recorded_checkpoints(exp: Path) -> dict[str, dict]:
    """Tune's saved experiment state: trial id -> the result of its latest registered checkpoint.

    Read from the trial's checkpoint manager, which is what a restore resumes from; the trial's
    `last_result` can already name a checkpoint the manager has not registered when the state is
    saved, and a restore then rightly starts that trial afresh."""
    from ray import cloudpickle

    found: dict[str, dict] = {}
    for state in exp.glob("experiment_state-*.json"):
        try:
            for trial, meta in json.loads(state.read_text())["trial_data"]:
                manager = json.loads(meta)["checkpoint_manager"]
                latest = cloudpickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
                if latest is not None:
                    found[json.loads(trial)["trial_id"]] = latest.metrics
        except (OSError, ValueError, KeyError, EOFError):
            continue  # being written right now
    return found


@pytest.fixture(scope="module")
def restored_sweep(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    exp = out / "tune_weights"
    proc = _sweep(inputs, out)
    deadline = time.time() + 300
    while time.time() < deadline and not _recorded_checkpoints(exp):
        if proc.poll() is not None:
            pytest.fail(f"the sweep exited before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.2)
    # A crash: the driver and its local Ray (one process group) die at once.
    os.killpg(proc.pid, signal.SIGKILL)
    first_log = proc.communicate()[0]
    recorded = _recorded_checkpoints(exp)
    assert recorded, f"no trial checkpoint within 300 s:\n{first_log}"
    assert not (out / "best.json").exists(), "the sweep finished before the kill: nothing to restore"
    resumed = _sweep(inputs, out, "--resume")
    log, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, log
    return out, log, recorded


def test_restored_sweep_finishes_every_trial_from_its_checkpoint(restored_sweep):
    out, log, recorded = restored_sweep
    assert "restoring the sweep from" in log
    # Every trial the crash caught mid-way continues from its last recorded checkpoint, not from scratch.
    caught = {trial_id: last for trial_id, last in recorded.items() if last["report"] < SWEEP_REPORTS}
    assert caught, f"the kill caught no trial mid-way: {recorded}"
    for trial_id, last in caught.items():
        # Read from the trial's results: a line the trial prints may not reach the driver's log.
        [result_file] = (out / "tune_weights").glob(f"*{trial_id}*/result.json")
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        after = [r for r in results if r["resumed_from_iteration"] == last["iteration"]]
        assert after and last["iteration"] > 0, (trial_id, last["iteration"], [
            (r["iteration"], r["resumed_from_iteration"]) for r in results])
        assert min(r["iteration"] for r in after) > last["iteration"]
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["w_human"]) for r in rows) == [0.3, 0.4]  # the seed's 70/30 and 60/40
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert float(r["w_nima"]) == pytest.approx(1 - float(r["w_human"]))
        assert int(r["reports"]) == SWEEP_REPORTS and r["stopped_early"] == "False"  # no ASHA here
        assert math.isfinite(float(r["objective_best"]))
        assert 0.0 <= float(r["agreement"]) <= 1.0 and 1.0 <= float(r["aesthetic_mean"]) <= 10.0
        if r["trial"] in caught:
            assert int(r["timesteps"]) > int(caught[r["trial"]]["timesteps"])  # PPO went on from there


def test_best_weights_plot_and_baseline(restored_sweep):
    from rlhf.policy import CropPolicy

    out, log, _ = restored_sweep
    best = json.loads((out / "best.json").read_text())
    assert best["w_human"] in (0.3, 0.4) and best["w_nima"] == pytest.approx(1 - best["w_human"])
    assert best["trials"] == 2 and best["errored"] == 0
    assert best["objective_personal_term"] == "agreement"  # held-out pairs lie on the evaluated photos
    assert f"w_human={best['w_human']:.3f}" in log and "best weights" in log
    baseline = json.loads((out / "baseline.json").read_text())
    assert baseline["metrics"]["agreement_pairs"] > 0
    assert best["bootstrap_objective"] == pytest.approx(baseline["metrics"]["objective"])
    # The best checkpoint is a complete policy that crops photos on its own.
    policy = CropPolicy.load(best["checkpoint"])
    assert policy.env_config["max_steps"] == 8
    assert (out / "objective_vs_weight.png").stat().st_size > 10_000
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_samples"] == 2 and cfg["env"]["images"] == TRAIN
