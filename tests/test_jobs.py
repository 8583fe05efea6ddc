"""Stages as Ray jobs: a real Ray head on 127.0.0.1, `ray job submit` of a tiny stage 1, its outputs.

Also checks that every job command in README.md names a real stage and flags it accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the cluster's Python is this venv's, as on a real node
DOCS = (ROOT / "README.md", ROOT / "docs" / "cluster.md")  # the docs whose commands a user runs
HEAD_PORTS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
              "object-manager-port")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(args: list[str], env: dict[str, str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          **kw)


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on 127.0.0.1 with its own ports, temp dir and auth token; stopped afterwards.

    The head runs with --block in its own session, so stopping it is a signal to that one process
    (it takes its GCS, raylet and dashboard down with it): other Ray instances on this machine are
    left alone, which `ray stop` would not do.
    """
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths live under it
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    ports = {name: _free_port() for name in HEAD_PORTS}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
           "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--temp-dir", str(tmp / "ray"),
           "--disable-usage-stats", "--min-worker-port", "0", "--max-worker-port", "0",
           *[f"--{name}={port}" for name, port in ports.items()]]
    log = (tmp / "head.log").open("w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 120
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited:\n{(tmp / 'head.log').read_text()}")
            if _ray(["job", "list", "--address", address], env, timeout=60).returncode == 0:
                break
            if time.time() > deadline:
                pytest.fail(f"the head's job API did not answer within 120 s:\n{(tmp / 'head.log').read_text()}")
            time.sleep(1)
        yield address, env, tmp / "ray"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own session: only the head's processes
            head.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _submit(address: str, env: dict[str, str], entrypoint: list[str], timeout: float
            ) -> tuple[str, subprocess.CompletedProcess]:
    """`ray job submit --working-dir .` from the repo root, as README.md says; waits for the end."""
    job_id = f"photographer-test-{uuid.uuid4().hex[:8]}"
    try:
        done = _ray(["job", "submit", "--address", address, "--working-dir", ".", "--submission-id", job_id,
                     "--", *entrypoint], env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        _ray(["job", "stop", "--address", address, job_id], env, timeout=60)
        raise
    return job_id, done


def _status(address: str, env: dict[str, str], job_id: str) -> str:
    out = _ray(["job", "status", "--address", address, job_id], env, timeout=60)
    text = out.stdout + out.stderr
    # "Job 'ID' succeeded" once finished, "Status for job 'ID': RUNNING" before.
    m = re.search(r"Job '[^']+' (\w+)", text) or re.search(r"Status for job '[^']+': (\w+)", text)
    assert m, text
    return m.group(1).upper()


def test_tiny_bootstrap_job_succeeds_and_writes_its_run(ray_head, tmp_path):
    from rlhf.policy import MODULE_SUBDIR, CropPolicy

    address, env, temp_dir = ray_head
    out = tmp_path / "boot"
    job_id, done = _submit(address, env, [
        "python", "-m", "rayjobs.bootstrap", "--timesteps", "256", "--train_batch_size", "128",
        "--minibatch_size", "64", "--num_epochs", "1", "--num_env_runners", "1", "--augment_variants", "0",
        "--max_steps", "8", "--image", "rlhf/data/photos/chelsea.jpg", "rlhf/data/photos/coffee.jpg",
        "--out", str(out)], timeout=480)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs
    assert _status(address, env, job_id) == "SUCCEEDED"
    # The driver joined the running cluster (RAY_ADDRESS from the job) instead of starting its own Ray.
    assert "Connected to Ray cluster" in logs and "stage 1 (bootstrap)" in logs
    ckpts = sorted((out / "checkpoints").glob("ckpt_*"))
    assert ckpts and (ckpts[-1] / MODULE_SUBDIR).is_dir(), logs
    rows = (out / "progress.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,timesteps") and len(rows) - 1 == 2
    assert int(rows[-1].split(",")[1]) >= 256
    cfg = json.loads((out / "config.json").read_text())
    # Rewards were scored in the env runner from the photo contexts (the default), not through an actor.
    assert cfg["scoring"]["service"] is False and not cfg["reward"].get("service")
    policy = CropPolicy.load(out)  # what the job wrote is a policy this machine can use
    assert policy.env_config["max_steps"] == 8
    # What `--working-dir .` uploaded (unpacked by the head): the code, not .git, .venv or results/.
    uploads = [p for p in temp_dir.glob("session_2*/runtime_resources/working_dir_files/_ray_pkg_*") if p.is_dir()]
    assert len(uploads) == 1, uploads
    listing = {p.name for p in uploads[0].iterdir()}
    assert {"rayjobs", "rlhf", "pyproject.toml"} <= listing
    assert not {".git", ".venv", "results"} & listing, listing
    size = sum(p.stat().st_size for p in uploads[0].rglob("*") if p.is_file())
    assert size < 20e6, f"the job uploaded {size / 1e6:.0f} MB"


# --- README.md: every job command names a real stage and flags it takes -----------------------

def _stage_config(module_name: str) -> type:
    """The stage's config dataclass: the most derived *Config dataclass its module holds."""
    mod = importlib.import_module(module_name)
    found = [v for v in vars(mod).values()
             if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__name__.endswith("Config")]
    assert found, f"{module_name}: no *Config dataclass"
    leaves = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
    own = [c for c in leaves if c.__module__ == module_name]
    assert len(own or leaves) == 1, f"{module_name}: which config? {own or leaves}"
    return (own or leaves)[0]


def _doc_commands() -> list[tuple[str, list[str]]]:
    text = "\n".join(p.read_text() for p in DOCS)
    # Pair fences with their language tag so that a ```json block is skipped, not misread.
    blocks = [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if lang in ("", "bash", "sh", "shell")]
    cmds = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            # The flags run to the end of the line, a closing quote (`ray exec "..."`), a pipe or a redirect.
            m = re.search(r"(?:python -m (rayjobs\.\w+|annotator\.\w+)|\bphotographer ([\w-]+))([^\"|&>]*)", line)
            if not m or line.startswith("#"):
                continue
            if m.group(1):
                module = m.group(1)
            else:
                from rlhf.cli import COMMANDS

                assert m.group(2) in COMMANDS, f"docs: unknown command `photographer {m.group(2)}`"
                module = COMMANDS[m.group(2)][0]
            cmds.append((module, shlex.split(m.group(3))))
    return cmds


def test_docs_job_commands_name_real_stages_and_flags():
    from rlhf.config import add_dataclass_arguments

    cmds = _doc_commands()
    modules = {m for m, _ in cmds}
    expected = {"rayjobs.bootstrap", "rayjobs.pairs", "rayjobs.train_reward", "rayjobs.finetune",
                "rayjobs.tune_weights", "rayjobs.evaluate", "annotator.app"}
    assert expected <= modules, f"README.md lacks commands for {expected - modules}"
    for module, args in cmds:
        parser = argparse.ArgumentParser(prog=module, exit_on_error=False)
        add_dataclass_arguments(parser, _stage_config(module))
        try:
            parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as e:
            pytest.fail(f"README.md: `{module} {shlex.join(args)}`: {e}")


def test_list_flags_take_several_values_and_repeat():
    from rayjobs.bootstrap import BootstrapConfig
    from rlhf.config import parse_config

    cfg = parse_config(BootstrapConfig, ["--image", "a.jpg", "b.jpg", "--image=c.jpg"])
    assert cfg.env.images == ["a.jpg", "b.jpg", "c.jpg"]  # a repeated flag adds; one flag takes several values
    assert parse_config(BootstrapConfig, []).env.images == BootstrapConfig().env.images  # the default when not given


def test_every_help_is_readable(capsys):
    """No command prints the bundled photos' paths as a default, and no flag says its default twice."""
    from rlhf.cli import COMMANDS, main

    for cmd in COMMANDS:
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "rlhf/data" not in text, cmd
        for option in re.split(r"\n(?=  -)", text):
            assert " ".join(option.split()).count("(default") <= 1, (cmd, option)
