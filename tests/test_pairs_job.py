"""`photographer pairs`: crop pairs from a real (tiny) trained policy, into JSON, thumbnails and the store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayjobs.pairs import PairsConfig, candidate_pairs, fair_shares, run, select_uncertain
from rlhf.boxstats import box_iou
from rlhf.images import bundled_photos, load_collection
from rlhf.pairs import load_pairs
from rlhf.store import PreferenceStore, StoreError

PHOTOS = [str(p) for p in bundled_photos(["chelsea", "coffee", "rocket"])]


def tiny_bootstrap(tmp_path_factory) -> Path:
    """A real bootstrap run, as small as PPO allows: 2 iterations of 128 steps on 2 photos.

    Grid 20 (not the default 10): the pairs tests want many distinct boxes from a barely trained policy.

    Trained once per test session (test_evaluate.py reuses the same folder under the session's
    base temp dir), with a marker written only after training finished.
    """
    out = tmp_path_factory.getbasetemp() / "tiny_bootstrap_shared"
    if not (out / "DONE").exists():
        import shutil

        from rayjobs.bootstrap import BootstrapConfig
        from rayjobs.bootstrap import run as bootstrap
        from rlhf.config import from_flat

        shutil.rmtree(out, ignore_errors=True)
        bootstrap(from_flat(BootstrapConfig, timesteps=256, train_batch_size=128, minibatch_size=64, num_epochs=1,
                                  checkpoint_every=1, num_env_runners=0, service=False, augment_variants=0,
                                  max_steps=8, grid=20, image=[str(p) for p in bundled_photos(["chelsea", "coffee"])],
                                  out=str(out)))
        (out / "DONE").write_text("")
    return out


@pytest.fixture(scope="module")
def policy(ray_local, tmp_path_factory) -> Path:
    return tiny_bootstrap(tmp_path_factory)


@pytest.fixture(scope="module")
def diverse(policy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    return run(PairsConfig(policy=str(policy), image=PHOTOS, num_pairs=24, rollouts=4, out=str(out), seed=1))


def _key(p):
    return (p.image, frozenset((tuple(p.crop_a), tuple(p.crop_b))))


def test_pairs_file_is_valid_spread_and_distinct(diverse):
    pairs = load_pairs(diverse, check_images=True)
    assert len(pairs) == 24
    assert len({p.id for p in pairs}) == 24 and len({_key(p) for p in pairs}) == 24
    photos = {p.id: p for p in load_collection(PHOTOS)}
    for p in pairs:
        assert p.preference is None
        assert box_iou(p.crop_a, p.crop_b) < 0.5, p
        assert abs(p.extra["iou"] - box_iou(p.crop_a, p.crop_b)) < 1e-3
        ph = photos[p.image]
        for box in (p.crop_a, p.crop_b):
            assert 0 <= box[0] < box[2] <= ph.width and 0 <= box[1] < box[3] <= ph.height
    # Even spread over the photos, listed round-robin.
    assert Counter(Path(p.image).stem for p in pairs) == {"chelsea": 8, "coffee": 8, "rocket": 8}
    assert [Path(p.image).stem for p in pairs[:3]] == ["chelsea", "coffee", "rocket"]
    # Crop types: more than one size class, and more than one combination asked about.
    kinds = Counter(k.split()[0] for p in pairs for k in (p.extra["type_a"], p.extra["type_b"]))
    assert len(kinds) >= 2, kinds
    assert len({frozenset((p.extra["type_a"], p.extra["type_b"])) for p in pairs}) >= 3
    # A/B order is shuffled: neither side is systematically the larger crop.
    a_larger = sum(_area(p.crop_a) > _area(p.crop_b) for p in pairs)
    assert 5 <= a_larger <= 19, a_larger


def _area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def test_thumbnails_and_sheet(diverse):
    out = diverse.parent
    pairs = load_pairs(diverse)
    for p in pairs[:6]:
        for side, box in (("a", p.crop_a), ("b", p.crop_b)):
            thumb = out / p.extra[f"thumb_{side}"]
            with Image.open(thumb) as im:
                w, h = im.size
            assert max(w, h) <= 320
            assert abs(w / h - (box[2] - box[0]) / (box[3] - box[1])) < 0.05
    assert (out / "pairs_sheet.png").stat().st_size > 10_000
    assert (out / "config.json").is_file()


def test_store_filled_and_second_round_adds_only_new_pairs(diverse, policy, tmp_path):
    store = PreferenceStore(diverse.parent / "preferences.sqlite")
    pairs = load_pairs(diverse)
    assert store.pair_ids() == [p.id for p in pairs]
    assert store.progress("alice") == (0, 24)
    # A second round into the same store: new pairs only, none repeating a first-round comparison.
    again = run(PairsConfig(policy=str(policy), image=PHOTOS, num_pairs=12, rollouts=4, seed=1,
                            out=str(tmp_path / "round2"), store=str(store.path)))
    second = load_pairs(again)
    assert len(second) == 12
    assert not {_key(p) for p in second} & {_key(p) for p in pairs}
    assert len(store) == 36


def test_uncertain_picks_the_smallest_margins():
    # Photo 0 has 4 candidate pairs, photo 1 has 3: (i, j, iou) with hand-made margins.
    pairs = [[(0, 1, 0.1), (0, 2, 0.2), (1, 2, 0.3), (2, 3, 0.1)], [(0, 1, 0.2), (1, 2, 0.1), (0, 2, 0.4)]]
    margins = [[0.5, 0.05, 0.9, 0.2], [0.01, 0.3, 0.6]]
    assert select_uncertain(pairs, margins, 3) == [(1, 0, 1), (0, 0, 2), (0, 2, 3)]
    # A cap of 1 per photo spreads the picks; the second pass fills up by margin when asked for more.
    assert select_uncertain(pairs, margins, 2, per_photo_cap=1) == [(1, 0, 1), (0, 0, 2)]
    assert select_uncertain(pairs, margins, 3, per_photo_cap=1) == [(1, 0, 1), (0, 0, 2), (0, 2, 3)]
    # One crop in at most max_box_uses pairs: crop 0 of photo 0 may not be in both of its best pairs.
    pairs = [[(0, 1, 0.1), (0, 2, 0.1), (1, 2, 0.1)], [(0, 1, 0.1)]]
    margins = [[0.05, 0.06, 0.5], [0.3]]
    assert select_uncertain(pairs, margins, 2, per_photo_cap=9) == [(0, 0, 1), (0, 0, 2)]
    assert select_uncertain(pairs, margins, 2, per_photo_cap=9, max_box_uses=1) == [(0, 0, 1), (1, 0, 1)]


def test_helpers():
    assert fair_shares([10, 10, 10], 7) == [3, 2, 2]
    assert fair_shares([1, 10, 10], 7) == [1, 3, 3]
    assert fair_shares([1, 2], 9) == [1, 2]
    from rayjobs.pairs import Candidate

    cands = [Candidate((0, 0, 10, 10), "x", "tight"), Candidate((0, 0, 9, 10), "x", "tight"),
             Candidate((5, 5, 20, 20), "x", "wide")]
    assert [(i, j) for i, j, _ in candidate_pairs(cands, 0.5)] == [(0, 2), (1, 2)]


def test_uncertain_selection_with_a_real_reward_model(diverse, policy, tmp_path):
    """Train a reward model on the first round (SIMULATED 'wide' taste), then ask what it is unsure of."""
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model
    from rlhf.simulated import SimulatedAnnotator

    photos = load_collection(PHOTOS)
    answered = SimulatedAnnotator("wide", noise=0.0).annotate_pairs(load_pairs(diverse), {p.id: p for p in photos})
    model, _ = train_reward_model(examples_from_pairs(answered), RewardTrainConfig(
        epochs=20, val_fraction=0.0, embed_dim=4), log=None)
    model_path = model.save(tmp_path / "human_reward_model.pth")
    out = run(PairsConfig(policy=str(policy), image=PHOTOS, num_pairs=9, rollouts=4, seed=2, select="uncertain",
                          human_reward_model=str(model_path), out=str(tmp_path / "uncertain")))
    chosen = load_pairs(out)
    assert len(chosen) == 9
    by_id = {p.id: p for p in photos}
    margins = []
    for p in chosen:
        r = model.reward(by_id[p.image], [p.crop_a, p.crop_b])
        assert abs(p.extra["margin"] - abs(r[0] - r[1])) < 1e-4
        assert box_iou(p.crop_a, p.crop_b) < 0.5
        margins.append(p.extra["margin"])
    assert margins == sorted(margins), "listed most uncertain first"
    # Spread: no photo holds more than twice its even share (9 pairs over 3 photos: 6).
    per_photo = Counter(Path(p.image).stem for p in chosen)
    assert len(per_photo) >= 2 and max(per_photo.values()) <= 6, per_photo
    # The diverse first round, scored by the same model, is more certain on average (by how much depends
    # on how sure this model is everywhere: noiseless answers, a taste its geometry features carry).
    diverse_margins = [abs(float(np.subtract(*model.reward(by_id[p.image], [p.crop_a, p.crop_b]))))
                       for p in answered]
    assert np.mean(margins) < np.mean(diverse_margins)


def test_an_indifferent_reward_model_gets_diverse_pairs(diverse, policy, tmp_path, capsys):
    """A reward model that found no taste (here: its linear head zeroed, as the strongest --l1 leaves
    it) ties every pair at margin 0; uncertainty would then pick by candidate order, so it warns and
    asks diverse pairs instead."""
    from rlhf.preference import RewardTrainConfig, examples_from_pairs, train_reward_model
    from rlhf.simulated import SimulatedAnnotator

    photos = load_collection(PHOTOS)
    answered = SimulatedAnnotator("wide", noise=0.0).annotate_pairs(load_pairs(diverse), {p.id: p for p in photos})
    model, _ = train_reward_model(examples_from_pairs(answered), RewardTrainConfig(
        epochs=2, val_fraction=0.0, cv_folds=0, l1=[1.0], label_noise=[0.0], embed_dim=4), log=None)
    model.head.net.weight.data.zero_()
    model_path = model.save(tmp_path / "indifferent.pth")
    kw = dict(policy=str(policy), image=PHOTOS, num_pairs=9, rollouts=4, seed=2)
    out = run(PairsConfig(**kw, select="uncertain", human_reward_model=str(model_path), out=str(tmp_path / "u")))
    assert "scores every candidate alike" in capsys.readouterr().out
    plain = run(PairsConfig(**kw, out=str(tmp_path / "d")))
    assert [(p.crop_a, p.crop_b) for p in load_pairs(out)] == [(p.crop_a, p.crop_b) for p in load_pairs(plain)]


def test_bad_input_is_refused_clearly(policy, tmp_path):
    with pytest.raises(ValueError, match="--human_reward_model"):
        PairsConfig(policy=str(policy), select="uncertain")
    with pytest.raises(ValueError, match="max_iou"):
        PairsConfig(policy=str(policy), max_iou=1.5)
    with pytest.raises(ValueError, match="--policy is required"):
        PairsConfig()
    not_a_store = tmp_path / "notes.db"
    not_a_store.write_text("my notes, not a database\n")
    with pytest.raises(StoreError, match="notes.db"):
        run(PairsConfig(policy=str(policy), image=PHOTOS[:1], num_pairs=2, store=str(not_a_store),
                        out=str(tmp_path / "p")))
    assert not_a_store.read_text() == "my notes, not a database\n"
    with pytest.raises(FileNotFoundError, match="no_such_policy"):
        run(PairsConfig(policy=str(tmp_path / "no_such_policy"), image=PHOTOS[:1], out=str(tmp_path / "q")))
