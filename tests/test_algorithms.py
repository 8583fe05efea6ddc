"""--algo: APPO and DQN train the same policy module into the same checkpoints folder, resume from it, and
their policies crop through `photographer crop`; stage 3 continues a bootstrap of its own kind and refuses
clearly what it cannot do. PPO's own runs are tests/test_bootstrap.py's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rlhf.images import bundled_photos

PHOTOS = [str(p) for p in bundled_photos(["chelsea", "coffee"])]


def _bootstrap(out: Path, algo: str, timesteps: int, **kw) -> Path:
    from rayjobs.bootstrap import BootstrapConfig, run
    from rlhf.config import from_flat

    return run(from_flat(BootstrapConfig, algo=algo, timesteps=timesteps, train_batch_size=128, minibatch_size=64,
                         num_epochs=1, checkpoint_every=1, num_env_runners=0, num_envs_per_env_runner=2,
                         service=False, augment_variants=0, max_steps=8, image=PHOTOS, out=str(out), **kw))


def _rows(run: Path) -> list[dict]:
    with (run / "progress.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", params=["appo", "dqn"])
def stopped_and_resumed(request, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    _bootstrap(out, request.param, 128)
    first = sorted(p.name for p in (out / "checkpoints").glob("ckpt_*"))
    before = _rows(out)
    _bootstrap(out, request.param, 256, resume=True)
    return request.param, out, first, before


def test_trains_and_resumes_from_its_checkpoint(stopped_and_resumed):
    algo, out, first, before = stopped_and_resumed
    assert first and json.loads((out / "config.json").read_text())["ppo"]["algo"] == algo
    rows = _rows(out)
    iters = [int(r["iteration"]) for r in rows]
    assert iters == list(range(1, len(iters) + 1)) and len(rows) > len(before)
    assert rows[:len(before)] == before  # the resumed run went on from the checkpoint, not from scratch
    assert int(rows[-1]["timesteps"]) >= 256


def test_its_policy_loads_and_crops(stopped_and_resumed, tmp_path):
    from rayjobs.crop import CropConfig, run
    from rlhf.policy import CropPolicy, CropPolicyModule, CropQModule

    algo, out, *_ = stopped_and_resumed
    module = CropPolicy.load(out).module
    assert isinstance(module, CropQModule if algo == "dqn" else CropPolicyModule)
    assert not hasattr(module, "_target")  # the target copy lives in the learner only
    crop_out = run(CropConfig(policy=str(out), image=[PHOTOS[0]], out=str(tmp_path / "crops"), ray=False,
                              sheet_rows=2))
    (record,) = [json.loads(line) for line in (crop_out / "crops.jsonl").read_text().splitlines()]
    left, top, right, bottom = record["box"]
    assert 0 <= left < right and 0 <= top < bottom and 1.0 <= record["score"] <= 10.0


def _stage3(tmp_path: Path, policy: Path, algo: str, *more: str) -> Path:
    from rayjobs import finetune
    from rlhf.config import parse_config_given
    from tests.test_finetune import _simulated_reward_model

    model = tmp_path / "human_reward_model.pth"
    if not model.exists():
        _simulated_reward_model(tmp_path, epochs=2)
    argv = ["--policy", str(policy), "--human_reward_model", str(model), "--algo", algo, "--timesteps", "128",
            "--train_batch_size", "128", "--minibatch_size", "64", "--num_epochs", "1", "--lr_warmup_steps", "0",
            "--num_env_runners", "0", "--num_envs_per_env_runner", "2", "--no-service", "--checkpoint_every", "1",
            "--out", str(tmp_path / f"stage3_{algo}"), *more]
    return finetune.run(*parse_config_given(finetune.FinetuneConfig, argv))


def test_stage3_continues_a_bootstrap_of_its_kind_and_refuses_the_other(stopped_and_resumed, tmp_path):
    """Stage 3 with the same algorithm (its aesthetic-kept constraint on, as by default) trains and logs the
    multiplier; the other kind of head, or a reference KL for DQN, fails before training with what to do."""
    algo, out, *_ = stopped_and_resumed
    if algo == "appo":
        _stage3(tmp_path, out, "appo", "--ref_kl", "0.1")
        (row,) = _rows(tmp_path / "stage3_appo")
        assert float(row["kept_lambda"]) >= 0 and float(row["ref_kl"]) >= 0
        with pytest.raises(ValueError, match="trained with ppo or appo .* use --algo ppo or appo"):
            _stage3(tmp_path, out, "dqn")
    else:
        _stage3(tmp_path, out, "dqn")
        (row,) = _rows(tmp_path / "stage3_dqn")
        assert float(row["kept_lambda"]) >= 0 and float(row["trained"]) > 0
        with pytest.raises(ValueError, match="--ref_kl is a KL term of a policy loss, which dqn has not"):
            _stage3(tmp_path, out, "dqn", "--ref_kl", "0.1")
        with pytest.raises(ValueError, match="trained with dqn .*Q-values.* use --algo dqn"):
            _stage3(tmp_path, out, "ppo")


def test_an_unknown_algorithm_fails_at_the_command_line():
    from rayjobs.bootstrap import BootstrapConfig
    from rlhf.config import parse_config

    with pytest.raises((SystemExit, ValueError)):
        parse_config(BootstrapConfig, ["--algo", "sac"], prog="photographer bootstrap")


@pytest.mark.parametrize("algo", ["appo", "dqn"])
def test_resumes_after_a_kill(algo, tmp_path):
    """As tests/test_bootstrap.py's PPO run: killed (driver and local Ray) once a checkpoint is on disk,
    then --resume goes on from it (DQN's replay buffer is not checkpointed: it refills from the resumed
    policy)."""
    import os
    import signal

    from tests.test_bootstrap import _bootstrap as bootstrap_process
    from tests.test_bootstrap import _wait_for_checkpoint

    proc = bootstrap_process(tmp_path, "--algo", algo)
    _wait_for_checkpoint(proc, tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt_*"))[-1].split("_")[1])
    resumed = bootstrap_process(tmp_path, "--algo", algo, "--resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and f"at iteration {killed_at}" in log, log
    iters = [int(r["iteration"]) for r in _rows(tmp_path)]
    assert iters == list(range(1, len(iters) + 1)) and int(_rows(tmp_path)[-1]["timesteps"]) >= 768
