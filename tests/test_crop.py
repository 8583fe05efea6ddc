"""`photographer crop` over a folder: streamed results, paged sheets, resume after kill -9, bad files, Ray Data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayjobs.crop import JOURNAL, CropConfig, read_journal, run
from rlhf.images import bundled_photos, load_image
from rlhf.kept import SteeringSettings
from tests.test_pairs_job import tiny_bootstrap

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 8


@pytest.fixture(scope="module")
def policy(ray_local, tmp_path_factory) -> Path:
    return tiny_bootstrap(tmp_path_factory)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """8 small photos: sub-framings of bundled photos, 96-160 px on their long side."""
    out = tmp_path_factory.mktemp("library")
    rng = np.random.default_rng(0)
    sources = bundled_photos(["coffee", "flower", "chelsea", "rocket"])
    for i in range(N_PHOTOS):
        px = load_image(sources[i % len(sources)])
        h, w = px.shape[:2]
        fw, fh = rng.uniform(0.6, 1.0, size=2)
        x0, y0 = int(rng.integers(0, w - int(w * fw) + 1)), int(rng.integers(0, h - int(h * fh) + 1))
        sub = Image.fromarray(px[y0:y0 + int(h * fh), x0:x0 + int(w * fw)])
        sub.thumbnail((96 + 8 * i, 96 + 8 * i))
        sub.save(out / f"p{i:02d}.jpg", quality=90)
    return out


@pytest.fixture(scope="module")
def reference(policy, folder, tmp_path_factory) -> Path:
    """An uninterrupted single-process crop of the folder, 3 photos a contact-sheet page."""
    return run(CropConfig(policy=str(policy), image=[str(folder)], out=str(tmp_path_factory.mktemp("ref")),
                          sheet_rows=3, ray=False))


def _boxes(out: Path) -> dict[str, tuple]:
    return {r["image"]: (tuple(r["box"]), r["size"]) for r in read_journal(out / JOURNAL) if "error" not in r}


def _without_scores(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "score" not in k} for r in records]


def test_streams_one_line_per_photo_and_paged_sheets(reference, folder):
    lines = (reference / JOURNAL).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [Path(r["image"]).name for r in records] == [f"p{i:02d}.jpg" for i in range(N_PHOTOS)]
    for r in records:
        l, t, r_, b = r["box"]
        w, h = r["size"]
        assert 0 <= l < r_ <= w and 0 <= t < b <= h and 1.0 <= r["score"] <= 10.0
        assert Image.open(reference / r["crop"]).size == (r_ - l, b - t)
    # 8 photos at 3 a page: pages 1, 2 full, page 3 the last two
    assert [r["sheet"] for r in records] == [1, 1, 1, 2, 2, 2, 3, 3]
    assert sorted(p.name for p in reference.glob("contact_sheet_*.png")) == \
        ["contact_sheet_001.png", "contact_sheet_002.png", "contact_sheet_003.png"]
    assert json.loads((reference / "config.json").read_text())["sheet_rows"] == 3


def test_boxes_only_writes_no_crop_files_and_the_same_boxes(policy, folder, reference, tmp_path):
    out = run(CropConfig(policy=str(policy), image=[str(folder)], out=str(tmp_path / "boxes"), sheet_rows=3,
                         ray=False, write_crops=False))
    assert _boxes(out) == _boxes(reference)
    assert all("crop" not in r for r in read_journal(out / JOURNAL))
    assert not list(out.glob("*_crop.jpg")) and len(list(out.glob("contact_sheet_*.png"))) == 3


def test_resume_after_kill_9_crops_every_photo_once(policy, folder, reference, tmp_path):
    """A run killed with SIGKILL right after its third crop file is written (before that photo's line),
    then a torn line as a kill mid-write leaves; --resume finishes with each photo once, same boxes."""
    out = tmp_path / "killed"
    hook = ("import os, signal, sys; from pathlib import Path; import rayjobs.crop as c; "
            "orig = Path.write_bytes; n = [0]\n"
            "def write_bytes(self, data):\n"
            "    orig(self, data); n[0] += 1\n"
            "    if n[0] == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
            "Path.write_bytes = write_bytes\n"
            "c.main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", hook, "--policy", str(policy), "--image", str(folder), "--out",
                           str(out), "--sheet_rows", "3", "--no-ray"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len((out / JOURNAL).read_text().splitlines()) == 2
    assert (out / "p02_crop.jpg").exists()  # written, but no line: it is not done
    with open(out / JOURNAL, "a") as f:
        f.write('{"image": "' + str(folder / "p02.jpg")[:12])  # a torn last line
    resume = CropConfig(policy=str(policy), image=[str(folder)], out=str(out), sheet_rows=3, ray=False, resume=True)
    run(resume)
    records = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in folder.glob("*.jpg"))
    assert _boxes(out) == _boxes(reference)
    assert [r["score"] for r in records] == [r["score"] for r in read_journal(reference / JOURNAL)]
    assert [r["sheet"] for r in records] == [1, 1, 1, 2, 2, 2, 3, 3]
    assert len(list(out.glob("contact_sheet_*.png"))) == 3
    # resuming a finished run does nothing
    run(resume)
    assert len((out / JOURNAL).read_text().splitlines()) == N_PHOTOS


def test_a_corrupt_file_is_recorded_and_skipped(policy, folder, tmp_path, capsys):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("p00.jpg", "p01.jpg"):
        (lib / name).write_bytes((folder / name).read_bytes())
    good = (folder / "p02.jpg").read_bytes()
    (lib / "p01b_truncated.jpg").write_bytes(good[: len(good) // 3])
    (lib / "p01c_text.jpg").write_text("not a photo")
    out = run(CropConfig(policy=str(policy), image=[str(lib)], out=str(tmp_path / "out"), ray=False, score=False))
    records = {Path(r["image"]).name: r for r in read_journal(out / JOURNAL)}
    assert set(records) == {"p00.jpg", "p01.jpg", "p01b_truncated.jpg", "p01c_text.jpg"}
    assert "corrupt or truncated" in records["p01b_truncated.jpg"]["error"]
    assert "not an image" in records["p01c_text.jpg"]["error"]
    assert "box" in records["p00.jpg"] and "score" not in records["p00.jpg"]
    err = capsys.readouterr().err
    assert err.count("skipped ") == 2 and "Traceback" not in err


def test_ray_data_with_two_actors_equals_one_process(policy, folder, reference, tmp_path, ray_local):
    out = run(CropConfig(policy=str(policy), image=[str(folder)], out=str(tmp_path / "ray"), sheet_rows=3,
                         ray=True, actors=2, batch_size=2))
    assert ray_local.is_initialized()  # it joined the Ray it found and left it running
    assert _boxes(out) == _boxes(reference)
    ref = [json.loads(line) for line in (reference / JOURNAL).read_text().splitlines()]
    got = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    assert _without_scores(got) == _without_scores(ref)  # same order, boxes and pages
    # Scores agree to float noise: an actor's torch runs on its own number of threads.
    for key in ("score", "whole_photo_score"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], abs=2e-3)
    for r in got:
        assert (out / r["crop"]).read_bytes() == (reference / r["crop"]).read_bytes()


def test_one_folder_never_mixes_two_runs(policy, folder, reference, tmp_path):
    with pytest.raises(ValueError, match="--policy is required"):
        CropConfig(ray=False)
    with pytest.raises(ValueError, match="add --resume to continue it"):
        run(CropConfig(policy=str(policy), image=[str(folder)], out=str(reference), ray=False))
    with pytest.raises(ValueError, match="was cropped with --deterministic True, --seed 0"):
        run(CropConfig(policy=str(policy), image=[str(folder)], out=str(reference), ray=False, resume=True,
                       deterministic=False, seed=3))
    assert len((reference / JOURNAL).read_text().splitlines()) == N_PHOTOS


def test_help_shows_each_default():
    proc = subprocess.run([sys.executable, "-m", "rayjobs.crop", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--resume" in text and "(default: on when RAY_ADDRESS is set)" in text
    assert "photos per contact-sheet page (default: 16)" in text


# --- the few-pairs path: the bootstrap steered by a reward model, no fine-tuning ---------------------

@pytest.fixture(scope="module")
def wide_model(folder, tmp_path_factory) -> Path:
    """A real reward model of a SIMULATED 'wide' taste, trained on random crop pairs of the library."""
    from rlhf.images import load_collection
    from rlhf.pairs import Pair, pair_id
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model
    from rlhf.simulated import SimulatedAnnotator

    photos = load_collection([str(folder)])
    rng = np.random.default_rng(0)
    taste = SimulatedAnnotator("wide", noise=0.0)

    def box(p):
        w, h = rng.uniform(0.3, 1.0) * p.width, rng.uniform(0.3, 1.0) * p.height
        x, y = rng.uniform(0, p.width - w), rng.uniform(0, p.height - h)
        return (int(x), int(y), int(x + w), int(y + h))

    pairs = []
    for i in range(32):
        p = photos[i % len(photos)]
        a, b = box(p), box(p)
        pairs.append(Pair(pair_id(p.id, a, b), p.id, a, b, taste.choose(p, a, b)))
    model, _ = train_reward_model(examples_from_pairs(pairs), RewardTrainConfig(
        epochs=30, val_fraction=0.0, cv_folds=0, l1=[1.0], label_noise=[0.0], embed_dim=2), log=None)
    return model.save(tmp_path_factory.mktemp("wide") / "human_reward_model.pth")


def _area(out: Path) -> float:
    return float(np.mean([(r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1]) / (r["size"][0] * r["size"][1])
                          for r in read_journal(out / JOURNAL)]))


def test_few_pairs_crop_is_steered_and_records_its_steering(policy, folder, reference, wide_model, tmp_path):
    """crop --human_reward_model: the bootstrap's lookahead observes the reward model too, so a 'wide' taste
    at full weight widens its crops; the steering is recorded in config.json, and --resume refuses a change.
    (--photo_min_kept 0: no floor on each photo, tested below.)"""
    steered = CropConfig(policy=str(policy), image=[str(folder)], out=str(tmp_path / "steered"), sheet_rows=3,
                         ray=False, human_reward_model=str(wide_model),
                         steering=SteeringSettings(w_human=1.0, photo_min_kept=0.0))
    out = run(steered)
    records = read_journal(out / JOURNAL)
    assert len(records) == N_PHOTOS and all(1.0 <= r["score"] <= 10.0 for r in records)
    assert _boxes(out) != _boxes(reference)
    assert _area(out) > _area(reference)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["human_reward_model"], saved["steering"]["w_human"]) == (str(wide_model), 1.0)
    from dataclasses import replace

    with pytest.raises(ValueError, match="was cropped with --w_human 1.0"):
        run(replace(steered, resume=True, steering=SteeringSettings(w_human=0.5, photo_min_kept=0.0)))
    with pytest.raises(ValueError, match="was cropped with --human_reward_model None"):
        run(CropConfig(policy=str(policy), image=[str(folder)], out=str(reference), sheet_rows=3, ray=False,
                       resume=True, human_reward_model=str(wide_model)))
    run(replace(steered, resume=True))  # the same steering resumes (nothing left to do)
    assert len(read_journal(out / JOURNAL)) == N_PHOTOS


def test_each_steered_crop_keeps_photo_min_kept_of_its_photos_unsteered_crop(policy, folder, reference, wide_model,
                                                                         tmp_path):
    """--photo_min_kept is a floor on every crop of the few-pairs path: the reward model chooses only among
    candidates keeping that share of the unsteered crop's aesthetic score, so every crop keeps it; a photo
    whose choice is the unsteered crop says so ("unsteered" in the journal, weight 0)."""
    def crop(name: str, floor: float) -> list[dict]:
        return read_journal(run(CropConfig(
            policy=str(policy), image=[str(folder)], out=str(tmp_path / name), sheet_rows=3, ray=False,
            human_reward_model=str(wide_model), steering=SteeringSettings(w_human=1.0, photo_min_kept=floor))) / JOURNAL)

    records, free = crop("strict", 1.0), crop("free", 0.0)
    base = {r["image"]: r for r in read_journal(reference / JOURNAL)}
    assert len(records) == N_PHOTOS
    for r in records:
        b = base[r["image"]]
        assert r["score"] >= b["score"] - 1e-4  # the floor holds on every photo (scores rounded to 4 places)
        if r.get("unsteered"):
            assert r["box"] == b["box"] and r["w_human"] == 0.0
        else:
            assert r["w_human"] == 1.0 and r["box"] != b["box"]
    # Without the floor a 'wide' taste alone gives up some photos' score, and takes wider crops than with it.
    assert any(u["score"] < base[u["image"]]["score"] - 1e-4 for u in free)
    assert _area(tmp_path / "free") > _area(tmp_path / "strict")


def test_a_steered_crop_is_the_reward_models_best_candidate_that_keeps_the_floor(policy, folder, wide_model):
    """CropPolicy.steered: on each photo, the chosen crop is one of the policy's candidate crops (drawn from a
    seed of the photo's content), the greedy crop stays among them, and no candidate that keeps the floor is
    more likely, by the reward model's prediction, to be preferred to the greedy crop."""
    from rlhf.candidates import PERTURB, candidate_boxes
    from rlhf.evaluation import policy_env
    from rlhf.images import load_collection
    from rlhf.policy import CropPolicy
    from rlhf.reward import AESTHETIC

    photos = load_collection([str(folder)])[:3]
    boot = CropPolicy.load(policy)
    steered = boot.steered(wide_model, 1.0, 0.97)
    env = policy_env(steered, photos)
    own = env.reward_fn
    for k, photo in enumerate(photos):
        chosen = steered.rollout(env, k)[-1]
        env.reward_fn = steered.steering.reward_fn
        boxes = [c.box for c in candidate_boxes(boot, env, k, steered.steering.rollouts, PERTURB,
                                                np.random.default_rng(int(photo.digest(), 16)), env.cfg.min_area)]
        env.reward_fn = own
        assert boxes[0] == tuple(boot.rollout(policy_env(boot, [photo]), 0)[-1]) and chosen in boxes
        aesthetic = np.asarray(own.terms(photo, boxes)[AESTHETIC])
        preferred = own.human.preference(photo, boxes, [boxes[0]] * len(boxes))
        keeps = aesthetic >= 0.97 * aesthetic[0]
        assert preferred[boxes.index(chosen)] == pytest.approx(preferred[keeps].max())
        assert steered.rollout(env, k)[-1] == chosen  # the same photo, the same crop


@pytest.fixture(scope="module")
def finetuned(policy, wide_model, tmp_path_factory) -> Path:
    """A stand-in for a stage-3 run towards the 'wide' taste alone: the bootstrap's checkpoint in a run folder
    whose config.json gives the reward stage 3 would train on (the lookahead observes it, so it crops wider
    at once) and names `policy` as the bootstrap it started from: stage 3 before its first update."""
    import shutil

    out = tmp_path_factory.mktemp("finetuned")
    shutil.copytree(policy / "checkpoints", out / "checkpoints")
    cfg = json.loads((policy / "config.json").read_text())
    reward = {**cfg["reward"], "kind": "combined", "human_reward_model": str(wide_model), "w_nima": 0.0, "w_human": 1.0}
    (out / "config.json").write_text(json.dumps({**cfg, "reward": reward, "stage3": {"policy": str(policy)}}))
    return out


def test_each_finetuned_crop_keeps_photo_min_kept_of_its_bootstraps_crop(finetuned, folder, reference, tmp_path):
    """A fine-tuned policy's crop is held to --photo_min_kept of its bootstrap's crop of the same photo (the
    bootstrap stage 3 recorded): below it the photo is cropped with the human score at lower weights, else it
    gets the bootstrap's crop ("bootstrap_crop" in the journal). Without its bootstrap the floor cannot be
    held: a clear error before any photo is cropped."""
    import shutil

    def crop(name: str, floor: float, policy: Path = finetuned) -> dict[str, dict]:
        cfg = CropConfig(policy=str(policy), image=[str(folder)], out=str(tmp_path / name), sheet_rows=3,
                         ray=False, steering=SteeringSettings(photo_min_kept=floor))
        return {r["image"]: r for r in read_journal(run(cfg) / JOURNAL)}

    floored, free = crop("floored", 1.0), crop("free", 0.0)
    base = {r["image"]: r for r in read_journal(reference / JOURNAL)}
    assert len(floored) == N_PHOTOS and not any("bootstrap_crop" in r for r in free.values())
    held = 0
    for image, r in floored.items():
        b, u = base[image], free[image]
        assert r["score"] >= b["score"] - 1e-4  # the floor holds on every photo
        if r.get("bootstrap_crop"):
            assert r["box"] == b["box"] and r["w_human"] == 0.0 and u["score"] <= b["score"]
        elif r["w_human"] == 1.0:  # its own crop kept all of the score
            assert r["box"] == u["box"]
        held += r["w_human"] < 1.0
    assert held > 0  # a 'wide' taste alone costs some photos' score
    moved = tmp_path / "moved"
    shutil.copytree(finetuned, moved)
    cfg = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**cfg, "stage3": {"policy": str(tmp_path / "gone")}}))
    with pytest.raises(FileNotFoundError, match="was fine-tuned from .*give --photo_min_kept 0"):
        crop("gone", 0.95, moved)
    assert len(crop("unfloored", 0.0, moved)) == N_PHOTOS


def test_a_finetuned_policy_steered_by_its_reward_model_keeps_the_bootstraps_floor(finetuned, folder, reference,
                                                                               wide_model, tmp_path):
    """crop --policy FINE_TUNED --human_reward_model: the reward model chooses among the fine-tuned policy's
    candidates, the floor measured against its bootstrap's crop (the crop stage 3 started from), which is a
    candidate too ("bootstrap_crop" in the journal where it stays)."""
    out = run(CropConfig(policy=str(finetuned), image=[str(folder)], out=str(tmp_path / "ft"), sheet_rows=3,
                         ray=False, human_reward_model=str(wide_model),
                         steering=SteeringSettings(w_human=1.0, photo_min_kept=0.9)))
    base = {r["image"]: r for r in read_journal(reference / JOURNAL)}
    records = read_journal(out / JOURNAL)
    assert len(records) == N_PHOTOS
    for r in records:
        b = base[r["image"]]
        assert r["score"] >= 0.9 * b["score"] - 1e-4
        if r.get("bootstrap_crop"):
            assert r["box"] == b["box"] and r["w_human"] == 0.0
        else:
            assert r["w_human"] == 1.0 and "unsteered" not in r
    assert not all(r.get("bootstrap_crop") for r in records)  # a 'wide' taste finds wider crops that keep it


def test_steering_needs_a_reward_model_file_and_a_policy_that_names_its_reward(policy, folder, wide_model, tmp_path):
    import torch

    from rlhf.policy import CropPolicy

    bare = CropPolicy(torch.nn.Identity(), {"lookahead": False}, Path("run/ckpt"), None)
    with pytest.raises(ValueError, match="names no reward"):
        bare.steered(wide_model)
    bad = tmp_path / "bad.pth"
    bad.write_text("not a model")
    with pytest.raises(ValueError, match="not a readable human reward model"):
        run(CropConfig(policy=str(policy), image=[str(folder)], out=str(tmp_path / "bad"), ray=False,
                       human_reward_model=str(bad)))
    with pytest.raises(ValueError, match="no such file"):
        CropConfig(policy=str(policy), human_reward_model=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="--w_human must be in"):
        CropConfig(policy=str(policy), human_reward_model=str(wide_model), steering=SteeringSettings(w_human=1.5))


def test_a_reward_model_without_a_taste_keeps_every_unsteered_crop(policy, folder, reference, wide_model, tmp_path):
    """A reward model that found no taste in its answers scores every crop alike: the few-pairs path then
    keeps the policy's own crop of every photo, whatever --w_human asks (with w_human < 1 the aesthetic score
    alone would otherwise choose, changing crops with no taste behind the change)."""
    from rlhf.preference import PreferenceRewardModel

    flat = PreferenceRewardModel.load(wide_model)
    for w_ in flat.head.weights():
        w_.data.zero_()
    assert flat.indifferent
    out = run(CropConfig(policy=str(policy), image=[str(folder)], out=str(tmp_path / "flat"), sheet_rows=3, ray=False,
                         human_reward_model=str(flat.save(tmp_path / "flat.pth")),
                         steering=SteeringSettings(w_human=0.5)))
    records = read_journal(out / JOURNAL)
    assert _boxes(out) == _boxes(reference) and all(r["unsteered"] and r["w_human"] == 0.0 for r in records)
