"""Stage 3's env settings: inherited from the bootstrap run, overridden only by flags named on the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from rayjobs.finetune import FinetuneConfig, finetune_env
from rlhf.config import from_flat, parse_config_given
from rlhf.reward import RewardSpec
from tests.test_pairs_job import tiny_bootstrap


@pytest.fixture(scope="module")
def bootstrap_run(ray_local, tmp_path_factory):
    return tiny_bootstrap(tmp_path_factory)


def _env(bootstrap_run, tmp_path, *argv: str) -> dict:
    model = tmp_path / "human_reward_model.pth"
    model.write_bytes(b"plumbing: finetune_env never opens it")
    argv = ["--policy", str(bootstrap_run), "--human_reward_model", str(model), *argv]
    cfg, given = parse_config_given(FinetuneConfig, argv, prog="photographer finetune")
    return finetune_env(cfg.stage3.policy, cfg.env, cfg.ppo.seed, given, RewardSpec(kind="aesthetic"))


def test_env_comes_from_the_bootstrap_run(bootstrap_run, tmp_path):
    env = _env(bootstrap_run, tmp_path)
    # tiny_bootstrap trained with max_steps=8, grid=20, augment_variants=0 on chelsea + coffee; the finetune
    # config's own defaults (16, 4, the bundled training photos) must not leak in.
    assert env["max_steps"] == 8 and env["augment_variants"] == 0
    assert [p.rsplit("/", 1)[-1] for p in env["images"]] == ["chelsea.jpg", "coffee.jpg"]


def test_flags_named_on_the_cli_override(bootstrap_run, tmp_path, capsys):
    env = _env(bootstrap_run, tmp_path, "--max_steps=12", "--random_start", "0")
    assert env["max_steps"] == 12 and env["random_start"] == 0.0
    assert "--max_steps 12 overrides the bootstrap's 8" in capsys.readouterr().out


@pytest.mark.parametrize("argv, said", [(["--obs_size", "32"], "--obs_size 32"), (["--grid", "10"], "--grid 10"),
                                        (["--no-box_mask"], "--box_mask False"),
                                        (["--features", "none"], "--features none")])
def test_flags_that_change_the_observation_must_match(bootstrap_run, tmp_path, argv, said):
    with pytest.raises(ValueError, match=f"{said}: the policy .* was trained with"):
        _env(bootstrap_run, tmp_path, *argv)


def _as_version_1(cfg: dict) -> dict:
    """A config.json in the shape version 1 wrote (no config_version): the stage's settings flat, the
    env settings among them, the env RLlib ran in under "env"."""
    flat = {k: v for k, v in cfg.items() if k not in ("config_version", "env", "ppo", "checkpoints", "scoring")}
    env_fields = ("grid", "max_steps", "min_area", "aspect", "obs_size", "augment_variants", "random_start",
                  "saliency", "box_mask", "features", "colour_cues", "lookahead")
    env = {k: v for k, v in cfg["env"].items() if k in (*env_fields, "images", "seed")}
    return {**cfg["ppo"], **cfg["checkpoints"], "image": env["images"], **flat, **cfg["scoring"],
            **{k: env[k] for k in env_fields}, "env": env}


def test_an_old_run_config_is_upgraded(bootstrap_run, tmp_path):
    import json

    from rlhf.config import CONFIG_VERSION, load_run_config

    now = json.loads((bootstrap_run / "config.json").read_text())
    assert now["config_version"] == CONFIG_VERSION
    old = _as_version_1(now)
    assert "config_version" not in old and old["grid"] == 20 and old["timesteps"] == 256
    (tmp_path / "config.json").write_text(json.dumps(old))
    upgraded = load_run_config(tmp_path)
    assert upgraded["config_version"] == CONFIG_VERSION
    parts = ("ppo", "checkpoints", "scoring", "reward")
    assert {k: upgraded[k] for k in parts} == {k: now[k] for k in parts}
    assert {k: v for k, v in upgraded["env"].items() if k in old["env"]} == old["env"]
    assert not {"grid", "image", "timesteps", "scorer"} & set(upgraded)


@pytest.mark.parametrize("key, before", [("box_mask", False), ("features", "none"), ("lookahead", False)])
def test_a_run_from_before_an_observation_option_keeps_it_off(bootstrap_run, tmp_path, key, before):
    """A version-1 run config whose env lacks a setting ran without it: stage 3 keeps it off."""
    import json
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(bootstrap_run, old)
    cfg = _as_version_1(json.loads((old / "config.json").read_text()))
    assert cfg["env"].pop(key) != before  # stage 1 turns it on now
    (old / "config.json").write_text(json.dumps(cfg))
    assert _env(old, tmp_path)[key] == before


def test_a_policy_from_another_version_fails_with_a_clear_error(tmp_path):
    """Plumbing (untrained weights): a checkpoint whose box vector has 4 numbers, as an early version had."""
    import gymnasium as gym
    import numpy as np
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rlhf.env import observation_space
    from rlhf.policy import CropPolicy, CropPolicyModule, PolicyMismatchError

    old = observation_space(64)
    old.spaces["box"] = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    module = RLModuleSpec(module_class=CropPolicyModule, observation_space=old,
                          action_space=gym.spaces.Discrete(14)).build()
    module.save_to_path(str(tmp_path / "ckpt"))
    with pytest.raises(PolicyMismatchError, match=r"observes .*\(4,\).* gives .*\(13,\).*train it again"):
        CropPolicy.load(tmp_path / "ckpt")


def test_the_feature_policy_acts_on_feature_observations(tmp_path):
    """Plumbing (untrained weights): a module built for features="lite0" observations acts on the env's."""
    import gymnasium as gym
    import numpy as np
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rlhf.env import CropEnv
    from rlhf.images import bundled_photos, load_collection
    from rlhf.policy import CropPolicy, CropPolicyModule

    env = CropEnv({"features": "lite0", "box_mask": True}, reward_fn=lambda p, b: np.zeros(len(b)),
                  photos=load_collection(bundled_photos(["chelsea"])))
    module = RLModuleSpec(module_class=CropPolicyModule, observation_space=env.observation_space,
                          action_space=gym.spaces.Discrete(14)).build()
    assert hasattr(module, "feat_proj")
    policy = CropPolicy(module, {"features": "lite0", "box_mask": True}, tmp_path)
    boxes = policy.rollout(env, 0)
    assert len(boxes) >= 2 and all(len(b) == 4 for b in boxes)


def _kl_to(policy, reference, observations) -> float:
    import torch
    from ray.rllib.core.columns import Columns

    def logp(p):
        batch = {Columns.OBS: {k: torch.from_numpy(np.stack([o[k] for o in observations])) for k in observations[0]}}
        with torch.no_grad():
            return torch.log_softmax(p.module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS], -1)

    a, b = logp(policy), logp(reference)
    return float((a.exp() * (a - b)).sum(-1).mean())


def _simulated_reward_model(folder, epochs: int) -> str:
    """A real reward model, trained on a SIMULATED annotator's answers on the training photos."""
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model
    from tests.test_tune import TRAIN, simulated_pairs

    model, _ = train_reward_model(examples_from_pairs(simulated_pairs(TRAIN, 6, seed=0)), RewardTrainConfig(
        epochs=epochs, val_fraction=0.0, cv_folds=0, l1=[1.0], label_noise=[0.0], embed_dim=2), log=None)
    return str(model.save(folder / "human_reward_model.pth"))


def test_ref_kl_keeps_stage3_near_the_bootstrap(bootstrap_run, tmp_path):
    """Two real stage-3 runs at a learning rate that moves the policy far in 512 steps, one with a KL
    penalty to the bootstrap: its policy must stay measurably nearer (the penalty is in the loss, not
    only logged). A real reward model, trained here on a SIMULATED annotator's answers."""
    import csv

    from rayjobs import finetune
    from rlhf.env import CropEnv
    from rlhf.images import load_collection
    from rlhf.policy import CropPolicy
    from tests.test_tune import TRAIN

    model_path = _simulated_reward_model(tmp_path, epochs=10)
    runs = {}
    for ref_kl in (0.0, 5.0):
        argv = ["--policy", str(bootstrap_run), "--human_reward_model", model_path, "--timesteps", "512",
                "--train_batch_size", "128", "--minibatch_size", "32", "--num_epochs", "4", "--lr", "3e-3",
                "--lr_warmup_steps", "0", "--num_env_runners", "0", "--no-service", "--min_kept", "0", "--ref_kl", str(ref_kl), "--out", str(tmp_path / f"kl{ref_kl}")]
        finetune.run(*parse_config_given(finetune.FinetuneConfig, argv))
        runs[ref_kl] = CropPolicy.load(tmp_path / f"kl{ref_kl}")
    with (tmp_path / "kl5.0" / "progress.csv").open() as f:
        logged = [float(r["ref_kl"]) for r in csv.DictReader(f)]
    assert all(v >= 0 for v in logged) and len(logged) == 4
    boot = CropPolicy.load(bootstrap_run)
    env = CropEnv({**boot.env_config, "random_start": 1.0, "reward": None}, reward_fn=lambda p, b: np.zeros(len(b)),
                  photos=load_collection(TRAIN))
    rng = np.random.default_rng(0)
    observations = [env.reset(seed=int(s))[0] for s in rng.integers(0, 10**6, 64)]
    free, held = _kl_to(runs[0.0], boot, observations), _kl_to(runs[5.0], boot, observations)
    assert held < 0.5 * free, (held, free)


def test_lr_warmup_schedule():
    """--lr_warmup_steps ramps the lr from 0 (RLlib's piecewise-linear schedule), alone or before --anneal_lr."""
    from rayjobs.training import PPOSettings

    assert PPOSettings(lr=1e-3).lr_schedule() == 1e-3
    assert PPOSettings(lr=1e-3, lr_warmup_steps=100).lr_schedule() == [[0, 0.0], [100, 1e-3]]
    assert PPOSettings(lr=1e-3, lr_warmup_steps=100, anneal_lr=True, timesteps=1000).lr_schedule() == [
        [0, 0.0], [100, 1e-3], [1000, 0.0]]
    assert PPOSettings(lr=1e-3, anneal_lr=True, timesteps=1000).lr_schedule() == [[0, 1e-3], [1000, 0.0]]
    for bad in (dict(lr_warmup_steps=-1), dict(lr_warmup_steps=1000, anneal_lr=True, timesteps=1000)):
        with pytest.raises(ValueError, match="lr_warmup_steps"):
            PPOSettings(**bad).validate()
    # Stage 3 warms up by default (it starts a fresh Adam on a trained policy); stage 1 does not.
    from rayjobs.bootstrap import BootstrapConfig
    from rayjobs.finetune import stage3_ppo

    assert stage3_ppo().lr_warmup_steps > 0 and FinetuneConfig.__dataclass_fields__["ppo"].default_factory is stage3_ppo
    assert BootstrapConfig().ppo.lr_warmup_steps == 0


def test_freeze_keeps_those_parts_of_the_bootstrap(bootstrap_run, tmp_path):
    """A real stage 3 with --freeze: the frozen parts keep the bootstrap's weights exactly, the rest trains."""
    import torch

    from rayjobs import finetune
    from rlhf.policy import FROZEN_PARTS, CropPolicy
    model_path = _simulated_reward_model(tmp_path, epochs=5)
    boot = CropPolicy.load(bootstrap_run).module.state_dict()
    for freeze in ("features", "trunk"):
        argv = ["--policy", str(bootstrap_run), "--human_reward_model", model_path, "--timesteps", "256",
                "--train_batch_size", "128", "--minibatch_size", "64", "--lr", "3e-3", "--lr_warmup_steps", "0",
                "--num_env_runners", "0", "--no-service", "--min_kept", "0", "--freeze", freeze, "--out", str(tmp_path / freeze)]
        finetune.run(*parse_config_given(finetune.FinetuneConfig, argv))
        tuned = CropPolicy.load(tmp_path / freeze).module.state_dict()
        frozen = {k for k in boot if k.split(".")[0] in FROZEN_PARTS[freeze]}
        assert frozen and all(torch.equal(boot[k], tuned[k]) for k in frozen), freeze
        assert not torch.equal(boot["pi.weight"], tuned["pi.weight"]), freeze
        if freeze == "features":
            assert not torch.equal(boot["trunk.0.weight"], tuned["trunk.0.weight"])
    with pytest.raises(ValueError, match="freeze"):
        from_flat(FinetuneConfig, policy=str(bootstrap_run), human_reward_model=model_path, freeze="everything")


def test_env_runners_sample_with_the_restored_policy(bootstrap_run):
    """Stage 3's first batch must come from the bootstrap: after `restore`, a remote env runner holds the
    learner's weights. RLlib's own restore_from_path pushes them fire-and-forget, so an env runner can
    sample the first batch with the randomly initialised module: RLlib allows one request in flight per
    env runner and drops the push while one is (here: a slow call, as a loaded machine makes RLlib's
    own start-up calls)."""
    import json
    import time

    from rayjobs.algorithms import build_config
    from rayjobs.training import PPOSettings, restore
    from rlhf.policy import MODULE_SUBDIR, CropPolicy, latest_checkpoint

    env = {**json.loads((bootstrap_run / "config.json").read_text())["env"], "reward": {"kind": "aesthetic"}}
    algo = build_config(PPOSettings(num_env_runners=1, num_envs_per_env_runner=1, train_batch_size=128,
                                    minibatch_size=64), env).build_algo()
    try:
        algo.env_runner_group.foreach_env_runner_async(lambda r: time.sleep(5))
        restore(algo, latest_checkpoint(bootstrap_run) / MODULE_SUBDIR, component=MODULE_SUBDIR.as_posix())
        boot = CropPolicy.load(bootstrap_run).module.state_dict()
        (runner,) = algo.env_runner_group.foreach_env_runner(lambda r: r.module.get_state(), local_env_runner=False)
        assert runner.keys() <= boot.keys() and "pi.weight" in runner
        for k, w in runner.items():
            assert np.array_equal(np.asarray(w), boot[k].numpy()), k
    finally:
        algo.stop()


def test_the_kept_multiplier_rises_below_the_target_and_stays_at_0_above():
    """Dual ascent on kept >= min_kept, projected on >= 0 (rlhf.kept.update_multiplier), and the reward
    it weighs: more aesthetic weight, the same scale (rlhf.reward.combine)."""
    from rlhf.kept import update_multiplier
    from rlhf.reward import combine, with_multiplier

    assert update_multiplier(0.0, 0.918, 0.95, 10.0) == pytest.approx(0.32)
    assert update_multiplier(0.32, 0.93, 0.95, 10.0) == pytest.approx(0.52)
    assert update_multiplier(0.0, 0.976, 0.95, 10.0) == 0.0
    assert update_multiplier(0.1, 0.976, 0.95, 10.0) == 0.0  # never below 0
    assert update_multiplier(0.4, float("nan"), 0.95, 10.0) == 0.4  # no episode counted: unchanged
    spec = RewardSpec(kind="combined", human_reward_model="m.pth", w_nima=0.7, w_human=0.3)
    aesthetic, human = np.array([5.5, 7.3]), np.array([0.9, 0.2])  # (s - 1) / 9 = 0.5, 0.7
    assert np.allclose(combine(aesthetic, human, spec), [0.62, 0.55])
    assert with_multiplier(spec, 0.0) == spec
    assert np.allclose(combine(aesthetic, human, with_multiplier(spec, 1.0)),
                       [(1.7 * 0.5 + 0.3 * 0.9) / 2, (1.7 * 0.7 + 0.3 * 0.2) / 2])
    heavy = with_multiplier(spec, 1e9)  # all aesthetic, on the same scale
    assert np.allclose(combine(aesthetic, human, heavy), [0.5, 0.7]) and heavy.w_nima + heavy.w_human == pytest.approx(1)


def test_the_kept_env_counts_whole_photo_episodes_and_takes_the_multiplier():
    """KeptCropEnv: each whole-photo episode's final aesthetic score against the reference, and a new
    multiplier rescoring the episode in progress (its next reward is a change of the new objective)."""
    from rlhf.env import Action
    from rlhf.images import bundled_photos, load_collection
    from rlhf.kept import KEPT, KeptCropEnv

    class Terms:  # aesthetic rises with the box's width, the human score with its height: they pull apart
        def terms(self, photo, boxes):
            w = np.array([(b[2] - b[0]) / photo.width for b in boxes])
            h = np.array([(b[3] - b[1]) / photo.height for b in boxes])
            return {"aesthetic": 1 + 9 * w, "human": 1 - h}

    photos = load_collection(bundled_photos(["chelsea"]))
    spec = RewardSpec(kind="combined", human_reward_model="m.pth").to_dict()
    env = KeptCropEnv({"reward": spec, KEPT: {"reference": {photos[0].id: 8.0}, "min_kept": 0.95, "kept_lr": 10.0}},
                      reward_fn=Terms(), photos=photos)
    env.set_multiplier(0.5)
    assert env.reward_fn.multiplier == 0.5
    env.reset(seed=0)
    _, _, _, _, info = env.step(Action.SQUASH_X)  # 0.8 of the width and the full height
    assert "aesthetic" not in info
    before = env.score
    env.set_multiplier(3.0)
    assert env.score != before and env.score == pytest.approx(float(env.reward_fn(env.photo, [env.pixel_box()])[0]))
    _, reward, terminated, _, info = env.step(Action.STOP)
    assert terminated and reward == 0.0
    assert info["aesthetic"] == pytest.approx(1 + 9 * 0.8, abs=0.05) and info["aesthetic_reference"] == 8.0
    env.reset(options={"random_start": 1.0})  # an exploring start is not counted
    env.step(Action.STOP)
    final, ref, n = env.take_counts()
    assert n == 1 and ref == 8.0 and final == pytest.approx(info["aesthetic"])
    assert env.take_counts() == (0.0, 0.0, 0)


def _progress(run) -> list[dict]:
    import csv

    with (run / "progress.csv").open() as f:
        return list(csv.DictReader(f))


def test_stage3_keeps_the_aesthetic_score_and_resumes_with_its_multiplier(bootstrap_run, tmp_path):
    """Real stage-3 runs: progress.csv logs kept and kept_lambda, the multiplier follows the update rule
    from every iteration's kept share, the checkpoint keeps it and --resume goes on from it (with a
    remote env runner: pushed to it and counted from it). A target no crop misses leaves it at 0."""
    import json

    from rayjobs import finetune
    from rlhf.kept import update_multiplier
    from rlhf.reward import with_multiplier

    model_path = _simulated_reward_model(tmp_path, epochs=5)
    run = tmp_path / "kept"

    def stage3(timesteps: int, runners: int, *more: str) -> None:
        argv = ["--policy", str(bootstrap_run), "--human_reward_model", model_path, "--timesteps", str(timesteps),
                "--train_batch_size", "128", "--minibatch_size", "64", "--num_epochs", "1", "--lr", "3e-3",
                "--lr_warmup_steps", "0", "--num_env_runners", str(runners), "--num_envs_per_env_runner", "2",
                "--no-service", "--checkpoint_every", "1", *more]
        finetune.run(*parse_config_given(finetune.FinetuneConfig, argv))

    stage3(256, 0, "--min_kept", "1.0", "--kept_lr", "10", "--out", str(run))
    reference = json.loads((run / "aesthetic_reference.json").read_text())
    assert sorted(k.rsplit("/", 1)[-1] for k in reference) == ["chelsea.jpg", "coffee.jpg"]
    saved = json.loads((run / "checkpoints" / "ckpt_000002" / "photographer_state.json").read_text())
    stage3(512, 1, "--min_kept", "1.0", "--kept_lr", "10", "--out", str(run), "--resume")
    rows = _progress(run)
    assert len(rows) == 4 and {"kept", "kept_lambda"} <= rows[0].keys()
    kept = [float(r["kept"]) for r in rows]
    lam = [float(r["kept_lambda"]) for r in rows]
    assert all(0.5 < k < 1.5 for k in kept), kept
    assert saved["kept_lambda"] == pytest.approx(lam[1])
    for i, (k, m) in enumerate(zip(kept, lam, strict=True)):
        assert m == pytest.approx(update_multiplier(lam[i - 1] if i else 0.0, k, 1.0, 10.0)), (i, kept, lam)
    if min(kept) < 1.0:
        assert max(lam) > 0
    # A lookahead policy is shown the reward it was trained on last: the weights with the final multiplier.
    config = json.loads((run / "config.json").read_text())
    weighted = with_multiplier(RewardSpec(kind="combined", human_reward_model=model_path), lam[-1])
    assert config["kept_lambda"] == pytest.approx(lam[-1]) and lam[-1] > 0
    assert config["reward"]["w_nima"] == pytest.approx(weighted.w_nima) and weighted.w_nima > 0.7

    stage3(128, 0, "--min_kept", "0.05", "--out", str(tmp_path / "easy"))
    assert [float(r["kept_lambda"]) for r in _progress(tmp_path / "easy")] == [0.0]
