"""Evaluation: agreement and accuracy on hand-made examples; `photographer evaluate` on two real policies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlhf.boxstats import box_iou
from rlhf.evaluation import (
    agreement_counts,
    evaluate_policy,
    preference_agreement,
    reward_model_accuracy,
)
from rlhf.images import Photo, bundled_photos, load_collection
from rlhf.pairs import Pair, pair_id, save_pairs
from tests.test_pairs_job import tiny_bootstrap

UNSEEN = [str(p) for p in bundled_photos(["flower", "grace_hopper"])]


def _pair(image: str, a, b, pref) -> Pair:
    return Pair(pair_id(image, a, b), image, a, b, pref)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_agreement_on_a_hand_made_example(tmp_path):
    x, y = str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")
    policy = {x: (0, 0, 50, 50)}
    near, far = (0, 0, 50, 60), (50, 50, 100, 100)
    both_far = ((60, 0, 100, 40), (0, 60, 40, 100))  # IoU 0 with the policy's box on both sides
    pairs = [
        _pair(x, near, far, 1),                         # prefers the crop near the policy's: agrees
        _pair(x, near, far, 2),                         # prefers the far one: disagrees
        _pair(x.replace("/x.jpg", "/./x.jpg"), far, near, 2),  # same photo spelled differently: agrees
        _pair(x, *both_far, 1),                          # equally far from both: half
        _pair(x, near, far, 0),                          # no preference: excluded
        _pair(x, near, far, None),                       # not answered: excluded
        _pair(y, near, far, 1),                          # a photo the policy did not crop: excluded
    ]
    assert agreement_counts(policy, pairs) == (2.5, 4)
    assert preference_agreement(policy, pairs) == pytest.approx(2.5 / 4)
    assert math.isnan(preference_agreement(policy, pairs[4:6]))


class AreaReward:
    """A known reward for the counting test (not a model): bigger crops are better, rounded to 1000 px."""

    def reward(self, photo, boxes):
        return np.array([round((b[2] - b[0]) * (b[3] - b[1]), -3) for b in boxes], dtype=float)


def test_reward_model_accuracy_counts_ties_half():
    photo = Photo("/virtual/p.jpg", np.zeros((100, 100, 3), np.uint8))
    big, small, small2 = (0, 0, 100, 100), (0, 0, 50, 50), (50, 50, 100, 100)
    pairs = [_pair(photo.id, big, small, 1), _pair(photo.id, small, big, 2),   # right, right
             _pair(photo.id, big, small, 2),                                   # wrong
             _pair(photo.id, small, small2, 1),                                # equal rewards: half
             _pair(photo.id, big, small, 0)]                                   # tie: excluded
    acc, n = reward_model_accuracy(AreaReward(), pairs, {photo.id: photo})
    assert (acc, n) == (pytest.approx(2.5 / 4), 4)


def _random_box(rng, photo, lo=0.3):
    w, h = rng.uniform(lo, 1.0) * photo.width, rng.uniform(lo, 1.0) * photo.height
    l, t = rng.uniform(0, photo.width - w), rng.uniform(0, photo.height - h)
    return (int(l), int(t), int(l + w), int(t + h))


@pytest.fixture(scope="module")
def setup(ray_local, tmp_path_factory):
    """Two real policies (checkpoints 1 and 2 of a tiny bootstrap), a reward model trained on a SIMULATED
    'wide' taste, and held-out answered pairs on the unseen photos."""
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model
    from rlhf.simulated import SimulatedAnnotator

    run = tiny_bootstrap(tmp_path_factory)
    ckpts = sorted((run / "checkpoints").glob("ckpt_*"))
    assert len(ckpts) == 2
    folder = tmp_path_factory.mktemp("eval_data")
    photos = load_collection(UNSEEN)
    rng = np.random.default_rng(0)
    taste = SimulatedAnnotator("wide", noise=0.0)

    def answered(n):
        out = []
        for i in range(n):
            p = photos[i % len(photos)]
            a, b = _random_box(rng, p), _random_box(rng, p)
            out.append(Pair(pair_id(p.id, a, b), p.id, a, b, taste.choose(p, a, b)))
        return out

    model, _ = train_reward_model(examples_from_pairs(answered(30)), RewardTrainConfig(
        epochs=30, val_fraction=0.0, embed_dim=4), log=None)
    model_path = model.save(folder / "human_reward_model.pth")
    heldout = save_pairs(folder / "heldout.json", answered(24), relative_to=folder)
    return run, ckpts, model_path, heldout, photos


def test_evaluate_two_policies_writes_report_and_plots(setup, tmp_path, capsys):
    from rayjobs.evaluate import EvalConfig, run
    from rlhf.pairs import load_pairs
    from rlhf.preference import PreferenceRewardModel
    from rlhf.simulated import SimulatedAnnotator, preferred_rate

    _, ckpts, model_path, heldout, photos = setup
    out = run(EvalConfig(policies=[str(c) for c in ckpts], names=["early", "late"], image=UNSEEN,
                         preference_data=str(heldout), human_reward_model=str(model_path), taste="wide",
                         out=str(tmp_path / "ev")))
    assert out == (tmp_path / "ev").resolve()
    for name in ("report.md", "comparison.png", "scores.png", "eval.json", "config.json"):
        assert (out / name).is_file(), name
    data = json.loads((out / "eval.json").read_text())
    assert [p["name"] for p in data["policies"]] == ["early", "late"]
    pairs = load_pairs(heldout)
    model = PreferenceRewardModel.load(model_path)
    by_id = {p.id: p for p in photos}
    for ev in data["policies"]:
        assert ev["photo_ids"] == [p.id for p in photos]
        for pid, box in ev["boxes"].items():
            ph = by_id[pid]
            assert 0 <= box[0] < box[2] <= ph.width and 0 <= box[1] < box[3] <= ph.height
            assert 1.0 <= ev["aesthetic"][pid] <= 10.0
            assert ev["human"][pid] == pytest.approx(float(model.human_score(ph, [box])[0]), abs=1e-6)
        assert ev["aesthetic_mean"] == pytest.approx(np.mean(list(ev["aesthetic"].values())))
        # Agreement, recomputed here the plain way from the boxes and the held-out answers.
        votes = []
        for p in pairs:
            if p.preference not in (1, 2):
                continue
            box = ev["boxes"][p.image]
            pref, other = (p.crop_a, p.crop_b) if p.preference == 1 else (p.crop_b, p.crop_a)
            d = box_iou(box, pref) - box_iou(box, other)
            votes.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
        assert ev["agreement_pairs"] == len(votes) > 10
        assert ev["agreement"] == pytest.approx(np.mean(votes))
        # The reward model ranks the held-out pairs of the simple 'wide' taste well.
        assert ev["reward_model_pairs"] == len(votes)
        assert ev["reward_model_accuracy"] >= 0.75
    report = (out / "report.md").read_text()
    for ev in data["policies"]:
        assert f"| {ev['name']} | {ev['aesthetic_mean']:.3f} |" in report
    assert "Reward model's accuracy on the held-out pairs" in report
    assert "![side by side](comparison.png)" in report
    # The SIMULATED taste's verdict on the later policy's crops, beside the reward model's score.
    early, late = data["policies"]
    verdict = preferred_rate(SimulatedAnnotator("wide", noise=0.0), photos, early["boxes"], late["boxes"])
    kept = late["aesthetic_mean"] / early["aesthetic_mean"]  # the aesthetic score kept, against the first policy
    assert late["extra"] == {"preferred_by_simulated:wide": pytest.approx(verdict), "aesthetic_kept": pytest.approx(kept)}
    assert early["extra"] == {"aesthetic_kept": 1.0}
    assert f"| late | {late['aesthetic_mean']:.3f} | {kept:.3f} |" in report and "**aesthetic kept**" in report
    printed = capsys.readouterr().out
    assert f"late: aesthetic {late['aesthetic_mean']:.3f} (whole photo" in printed
    assert f"aesthetic kept {kept:.3f} of early's" in printed
    assert (f"simulated:wide (SIMULATED person, noiseless) prefers late's crop to early's on {verdict:.3f} "
            "of 2 unseen photos") in printed
    assert f"simulated:wide (SIMULATED) prefers late's crop to early's on **{verdict:.3f}** of 2 photos" in report
    with Image.open(out / "comparison.png") as im:
        assert im.height > 2 * 200  # one row per photo
    assert (out / "scores.png").stat().st_size > 10_000


def test_evaluate_policy_library_call(setup):
    from rlhf.policy import CropPolicy
    from rlhf.scorers import create_scorer

    _, ckpts, _, _, photos = setup
    ev = evaluate_policy(CropPolicy.load(ckpts[-1]), photos, create_scorer("default"), name="late")
    assert ev.human is None and ev.human_mean is None and ev.agreement is None
    assert set(ev.boxes) == {p.id for p in photos}
    assert ev.aesthetic_mean == pytest.approx(np.mean(list(ev.aesthetic.values())))
    # Same boxes in, same scores out: the library call is deterministic for a greedy policy.
    again = evaluate_policy(CropPolicy.load(ckpts[-1]), photos, create_scorer("default"),
                            boxes=[ev.boxes[p.id] for p in photos])
    assert again.aesthetic == ev.aesthetic


def test_default_output_is_the_policy_run_eval_folder(setup):
    from rayjobs.evaluate import EvalConfig, run

    run_folder, _, _, _, _ = setup
    out = run(EvalConfig(policies=[str(run_folder)], image=UNSEEN[:1]))
    assert out == (run_folder / "eval").resolve()
    assert (out / "report.md").is_file() and (out / "comparison.png").is_file()


def test_bad_input_is_refused_clearly(setup, tmp_path):
    from rayjobs.evaluate import EvalConfig

    run_folder, _, _, _, _ = setup
    with pytest.raises(ValueError, match="--policies"):
        EvalConfig()
    with pytest.raises(ValueError, match="2 names for 1 policies"):
        EvalConfig(policies=[str(run_folder)], names=["a", "b"])
    with pytest.raises(ValueError, match="missing.json"):
        EvalConfig(policies=[str(run_folder)], preference_data=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="--human_reward_model"):
        EvalConfig(policies=[str(run_folder)], human_reward_model=str(tmp_path / "nope.pth"))
    assert Path(run_folder).is_dir()


def test_sheet_photos_limits_the_contact_sheet_not_the_figures(setup, tmp_path):
    """The personalization bench judges 216 framings but draws two framings a photo."""
    from rayjobs.evaluate import EvalConfig, write_outputs
    from rlhf.policy import CropPolicy
    from rlhf.scorers import create_scorer

    _, ckpts, _, _, photos = setup
    ev = evaluate_policy(CropPolicy.load(ckpts[-1]), photos, create_scorer("default"), name="late")
    cfg = EvalConfig(policies=[str(ckpts[-1])], image=UNSEEN, out=str(tmp_path))
    heights = []
    for sub, sheet in (("all", None), ("one", photos[:1])):
        (tmp_path / sub).mkdir()
        write_outputs([ev], photos, cfg, tmp_path / sub, sheet_photos=sheet)
        assert json.loads((tmp_path / sub / "eval.json").read_text())["photos"] == [p.id for p in photos]
        with Image.open(tmp_path / sub / "comparison.png") as im:
            heights.append(im.height)
    assert len(photos) > 1 and heights[1] < heights[0]


def test_a_lookahead_policy_crops_with_its_own_reward():
    """A policy that observes what each move pays (lookahead) needs its reward at inference:
    policy_env builds it, in process, from the spec its run recorded, and says so when none was."""
    from types import SimpleNamespace

    from rlhf.env import BOX_FEATURES
    from rlhf.evaluation import policy_env

    photos = load_collection(UNSEEN[:1])
    spec = {"kind": "aesthetic", "scorer": "default", "service": "photographer-scoring-gone"}
    policy = SimpleNamespace(env_config={"lookahead": True, "grid": 10, "images": ["x.jpg"], "reward": spec},
                             reward=spec, source=Path("run/ckpt"))
    env = policy_env(policy, photos)
    obs, info = env.reset(options={"photo_index": 0})
    assert 0.0 < info["score"] < 1.0  # the real default scorer, not a scoring actor that is gone
    assert not np.allclose(obs["box"][BOX_FEATURES:], 0.5)
    with pytest.raises(ValueError, match="names none"):
        policy_env(SimpleNamespace(env_config=policy.env_config, reward=None, source=Path("run/ckpt")), photos)
    plain = policy_env(SimpleNamespace(env_config={"grid": 10}, reward=spec, source=Path("x")), photos)
    assert plain.reset(options={"photo_index": 0})[1]["score"] == 0.0  # others still pay nothing


def test_an_unknown_taste_fails_fast():
    from rayjobs.evaluate import EvalConfig

    with pytest.raises(ValueError, match="--taste"):
        EvalConfig(policies=["x"], taste="sour")


def test_evaluate_steer_adds_the_first_policy_steered_by_the_reward_model(setup, tmp_path):
    """--steer: the first policy, steered by --human_reward_model (the few-pairs path), as one more policy,
    cropping as the steered policy does (CropPolicy.steered) and as `crop --human_reward_model` would."""
    from rayjobs.evaluate import EvalConfig, run
    from rlhf.evaluation import policy_boxes
    from rlhf.kept import PHOTO_MIN_KEPT, SteeringSettings
    from rlhf.policy import CropPolicy

    run_dir, ckpts, model_path, _, photos = setup
    with pytest.raises(ValueError, match="--steer needs --human_reward_model"):
        EvalConfig(policies=[str(run_dir)], steer=True)
    out = run(EvalConfig(policies=[str(run_dir)], names=["boot"], image=UNSEEN, human_reward_model=str(model_path),
                         steer=True, steering=SteeringSettings(w_human=0.8), taste="wide", out=str(tmp_path / "ev")))
    data = json.loads((out / "eval.json").read_text())
    assert [p["name"] for p in data["policies"]] == ["boot", "boot+steered"]
    steered = CropPolicy.load(run_dir).steered(model_path, 0.8, PHOTO_MIN_KEPT)  # with crop's default floor
    assert steered.reward["kind"] == "combined" and steered.reward["w_nima"] == pytest.approx(0.2)
    boxes = policy_boxes(steered, photos)[0]
    assert data["policies"][1]["boxes"] == {p.id: list(b) for p, b in zip(photos, boxes, strict=True)}
    assert "preferred_by_simulated:wide" in data["policies"][1]["extra"]
