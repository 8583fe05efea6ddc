"""Stage 1 end to end on real photos: train, get killed, resume from the last checkpoint, crop."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.images import bundled_photos

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--timesteps", "768", "--train_batch_size", "128", "--minibatch_size", "64", "--num_epochs", "1",
        "--checkpoint_every", "1", "--num_env_runners", "0", "--no-service", "--augment_variants", "0",
        "--anneal_lr", "--entropy_coeff", "0.01", "--entropy_coeff_final", "0",
        "--image", *[str(p) for p in bundled_photos(["chelsea", "coffee"])]]


def _env():
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _bootstrap(out: Path, *extra: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rayjobs.bootstrap", *TINY, "--out", str(out), *extra],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "checkpoints").glob("ckpt_*")):
        if proc.poll() is not None:
            pytest.fail(f"bootstrap exited early:\n{proc.stdout.read()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("bootstrap")
    proc = _bootstrap(out)
    # Kill the whole process group (driver + local Ray) as soon as a checkpoint is on disk.
    _wait_for_checkpoint(proc, out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = sorted(p.name for p in (out / "checkpoints").glob("ckpt_*"))
    assert first, "no checkpoint written before the kill"
    resumed = _bootstrap(out, "--resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    return out, first, log


def test_resume_continues_from_last_checkpoint(killed_and_resumed):
    out, first, log = killed_and_resumed
    assert "resumed from" in log
    killed_at = int(first[-1].split("_")[1])
    assert f"at iteration {killed_at}" in log
    rows = (out / "progress.csv").read_text().splitlines()[1:]
    iters = [int(r.split(",")[0]) for r in rows]
    assert iters == list(range(1, len(iters) + 1)), "iterations must continue without gaps or repeats"
    assert int(rows[-1].split(",")[1]) >= 768
    assert (out / "curves.png").stat().st_size > 1000
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["env"]["grid"] == 10 and cfg["reward"]["kind"] == "aesthetic"


def test_schedules_run_on_through_a_resume(killed_and_resumed):
    import csv

    out, _, _ = killed_and_resumed
    with (out / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    lr, ent = [float(r["lr"]) for r in rows], [float(r["entropy_coeff"]) for r in rows]
    # Linear to 0 over --timesteps, by the steps sampled so far: a resume that restarted the schedule
    # would jump back up to the start value.
    assert all(b < a for a, b in zip(lr, lr[1:], strict=False)), lr
    assert all(b < a for a, b in zip(ent, ent[1:], strict=False)), ent
    assert lr[0] < 5e-4 and lr[-1] <= 0.2 * 5e-4 and ent[-1] <= 0.2 * 0.01


def _env_runner_pids(sid: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            if proc.name.isdigit() and "SingleAgentEnvRunner" in cmd and os.getsid(int(proc.name)) == sid:
                pids.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


def _env_runners_after_first_checkpoint(proc: subprocess.Popen, out: Path) -> list[int]:
    _wait_for_checkpoint(proc, out)
    runners = _env_runner_pids(proc.pid)
    assert runners, "no env runner process found"
    return runners


def test_a_killed_env_runner_costs_no_phantom_steps(tmp_path):
    """The env runner is killed mid-run (as Ray's OOM killer does on a loaded machine): RLlib restarts
    it, and the iterations that sampled nothing must not count towards --timesteps (else a run can
    finish 'trained' on fewer steps than asked)."""
    import csv

    proc = _bootstrap(tmp_path, "--num_env_runners", "1")
    runners = _env_runners_after_first_checkpoint(proc, tmp_path)
    for pid in runners:
        os.kill(pid, signal.SIGKILL)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    with (tmp_path / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["timesteps"]) for r in rows]
    # Each recorded iteration sampled real episodes, and the count is of steps actually sampled.
    assert all(r["episode_return_mean"] not in ("", "nan") for r in rows), log
    assert all(b - a >= 100 for a, b in zip([0, *steps], steps, strict=False)), steps
    assert steps[-1] >= 768
    return log


def test_a_stalled_env_runner_is_waited_for(tmp_path):
    """An env runner that is alive but returns nothing within --sample_timeout_s (stopped here with
    SIGSTOP, as a starved one on a busy machine) is slow, not dead: the run waits for it and finishes."""
    proc = _bootstrap(tmp_path, "--num_env_runners", "1", "--sample_timeout_s", "4")
    runners = _env_runners_after_first_checkpoint(proc, tmp_path)
    for pid in runners:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(10)  # more than two sample timeouts, fewer than SLOW_SAMPLING_PATIENCE
    for pid in runners:
        os.kill(pid, signal.SIGCONT)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "the env runners are slow" in log, log


def test_crop_writes_json_crops_and_contact_sheet(killed_and_resumed, tmp_path):
    out, _, _ = killed_and_resumed
    from rayjobs.crop import CropConfig, run

    photos = bundled_photos(["flower", "grace_hopper"])
    crop_out = run(CropConfig(policy=str(out), image=[str(p) for p in photos], out=str(tmp_path / "crops")))
    records = [json.loads(line) for line in (crop_out / "crops.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["flower.jpg", "grace_hopper.jpg"]
    for r in records:
        l, t, r_, b = r["box"]
        assert 0 <= l < r_ and 0 <= t < b and 1.0 <= r["score"] <= 10.0
        assert (crop_out / r["crop"]).exists()
    assert (crop_out / "contact_sheet_001.png").stat().st_size > 10_000
