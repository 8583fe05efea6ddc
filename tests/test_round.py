"""`photographer round`: one improvement round from a real (tiny) bootstrap, a real store, real training,
answered by a SIMULATED annotator or waiting for a person; resumed after a kill; a second round."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from rayjobs import round as round_job
from rayjobs.round import TABLE, RoundConfig, read_state, round_folder, run
from rlhf.images import bundled_photos
from rlhf.pairs import load_pairs
from rlhf.store import PreferenceStore
from tests.test_pairs_job import tiny_bootstrap

PHOTOS = [str(p) for p in bundled_photos(["chelsea", "coffee", "rocket"])]
HELDOUT = [str(p) for p in bundled_photos(["astronaut", "camera"])]


@pytest.fixture(scope="module")
def policy(ray_local, tmp_path_factory) -> Path:
    return tiny_bootstrap(tmp_path_factory)


def _cfg(run_dir: Path, policy: Path | None, **kw) -> RoundConfig:
    settings = dict(run=str(run_dir), policy=str(policy) if policy else None, pairs=8, simulate="wide", noise=0.0,
                    image=PHOTOS, heldout=HELDOUT, reward_args=["--epochs=20"])
    return RoundConfig(**{**settings, **kw})


def _table_rows(run_dir: Path) -> list[list[str]]:
    lines = (run_dir / TABLE).read_text().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ") and
            line[2].isdigit()]


@pytest.fixture(scope="module")
def first(policy, tmp_path_factory) -> Path:
    """A run folder after one round answered by a SIMULATED 'wide' taste."""
    out = tmp_path_factory.mktemp("rounds") / "run"
    run(_cfg(out, policy))
    return out


def test_a_simulated_round_writes_its_folder_and_table(first, policy):
    folder = round_folder(first, 1)
    state = read_state(folder)
    assert set(state) == set(round_job.STEPS)
    assert state["pairs"]["select"] == "diverse" and state["pairs"]["from"]["kind"] == "bootstrap"
    assert state["answers"] == {"annotator": "simulated:wide", "answers": 8, "seconds": state["answers"]["seconds"]}
    assert state["policy"]["kind"] == "steered" and state["policy"]["policy"] == str(policy_ckpt(policy))
    assert 0.0 <= state["evaluate"]["preferred"] <= 1.0 and state["evaluate"]["aesthetic_kept"] > 0.5
    import json

    config = json.loads((folder / "config.json").read_text())
    assert (config["round"], config["bootstrap"], config["pairs"]) == (1, str(policy_ckpt(policy)), 8)
    assert (folder / "eval" / "report.md").is_file() and (folder / "reward" / "human_reward_model.pth").is_file()
    store = PreferenceStore(first / round_job.STORE)
    assert len(store) == 8 and len(store.pairs(answered=True, annotator="simulated:wide")) == 8
    (row,) = _table_rows(first)
    assert row[:3] == ["1", "8", "steered"]
    assert row[4] == f"{state['evaluate']['preferred']:.3f}" and row[5] == f"{state['evaluate']['aesthetic_kept']:.3f}"
    assert 0.0 <= state["evaluate"]["changed"] <= 1.0 and row[6] == f"{state['evaluate']['changed']:.3f}"


def policy_ckpt(policy: Path) -> Path:
    from rlhf.policy import latest_checkpoint

    return latest_checkpoint(policy)


def test_a_person_round_waits_then_resumes_after_a_kill(policy, tmp_path, capsys, monkeypatch):
    """Without --simulate the round stops at the answers and says how to give them; after they are given, a
    kill mid-way (the reward step raising; then a kill between the pairs file and its record) resumes
    without proposing pairs again or answering twice."""
    out = tmp_path / "run"
    cfg = _cfg(out, policy, simulate=None)
    assert run(cfg) == round_folder(out, 1)
    said = capsys.readouterr().out
    assert f"photographer annotate --store {out / round_job.STORE}" in said and "8 of 8 pairs wait" in said
    assert set(read_state(round_folder(out, 1))) == {"pairs"}
    with pytest.raises(ValueError, match="was started with --pairs 8"):
        run(replace(cfg, pairs=9))
    from rlhf.simulated import SimulatedAnnotator

    store = PreferenceStore(out / round_job.STORE)
    SimulatedAnnotator("wide", noise=0.0).annotate_store(store)  # stands in for the person's answers

    def killed(r):
        raise RuntimeError("killed")

    monkeypatch.setitem(round_job.STEP_FUNCTIONS, "reward", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg)
    state = read_state(round_folder(out, 1))
    assert set(state) == {"pairs", "answers"}
    monkeypatch.undo()
    # As if killed after the pairs file was written, before state.json recorded it.
    (round_folder(out, 1) / round_job.STATE).write_text("{}")
    from rayjobs import pairs as pairs_job

    def proposed_again(cfg):
        raise AssertionError("the pairs were proposed again")

    monkeypatch.setattr(pairs_job, "run", proposed_again)
    run(cfg)
    state = read_state(round_folder(out, 1))
    assert set(state) == set(round_job.STEPS) and state["answers"]["answers"] == 8
    assert len(store) == 8
    with sqlite3.connect(store.path) as con:
        assert con.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 8  # each pair answered once
    (row,) = _table_rows(out)
    assert row[:3] == ["1", "8", "steered"] and row[4] == "—"


def test_a_second_round_asks_the_uncertain_pairs_and_compares_with_the_first(first, policy):
    """Round 2 proposes pairs from round 1's policy (the bootstrap steered by round 1's reward model),
    chosen where that model is least sure; with --finetune_from at its answers it fine-tunes (stage 3),
    and is evaluated against round 1's policy."""
    with pytest.raises(ValueError, match="is another policy"):
        run(_cfg(first, sorted((policy / "checkpoints").glob("ckpt_*"))[0]))
    tiny_ppo = ["--finetune_args=--timesteps=128", "--finetune_args=--train_batch_size=128",
                "--finetune_args=--minibatch_size=64", "--finetune_args=--num_epochs=1",
                "--finetune_args=--num_env_runners=0", "--finetune_args=--augment_variants=0"]
    from rlhf.config import parse_config

    cfg = parse_config(RoundConfig, ["--run", str(first), "--pairs", "8", "--simulate", "wide", "--noise", "0",
                                     "--image", *PHOTOS, "--heldout", *HELDOUT, "--reward_args=--epochs=20",
                                     "--finetune_from", "16", *tiny_ppo])
    folder = run(cfg)
    assert folder == round_folder(first, 2)
    state = read_state(folder)
    first_state = read_state(round_folder(first, 1))
    assert state["pairs"]["select"] == "uncertain" and state["pairs"]["from"] == first_state["policy"]
    made = load_pairs(folder / "pairs" / "preference_pairs.json")
    assert len(made) == 8 and all("margin" in p.extra for p in made)
    assert state["answers"]["answers"] == 16 and len(PreferenceStore(first / round_job.STORE)) == 16
    assert state["policy"]["kind"] == "fine-tuned" and (folder / "finetune" / "checkpoints").is_dir()
    # It crops as `crop --human_reward_model` does: the reward model chooses among its candidates, each keeping
    # 0.95 of its bootstrap's crop (CropPolicy.steered).
    assert state["policy"]["human_reward_model"] == state["reward"]["model"]
    assert (state["policy"]["w_human"], state["policy"]["photo_min_kept"]) == (1.0, 0.95)
    steered = round_job.load_policy(state["policy"])
    assert steered.steering is not None and steered.steering.anchor is not None
    # Stage 3 towards the taste alone (--finetune_w_human 1), the aesthetic score kept by its constraint.
    tuned = json.loads((folder / "finetune" / "config.json").read_text())
    assert (tuned["w_human"], tuned["w_nima"], tuned["stage3"]["min_kept"]) == (cfg.finetune_w_human, 0.0, cfg.min_kept)
    report = (folder / "eval" / "report.md").read_text()
    assert "| round 1 |" in report and "| round 2 |" in report
    rows = _table_rows(first)
    assert [r[:3] for r in rows] == [["1", "8", "steered"], ["2", "16", "fine-tuned"]]
