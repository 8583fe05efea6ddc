"""SIMULATED annotators on the real bundled photos: tastes, noise, determinism, store plumbing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rlhf.images import HELDOUT_PHOTOS, TRAIN_PHOTOS, Photo, bundled_photos, load_collection, photo_id
from rlhf.pairs import Pair, pair_id
from rlhf.simulated import TASTES, SimulatedAnnotator, main, preferred_rate, vote
from rlhf.store import PreferenceStore


@pytest.fixture(scope="module")
def photos() -> dict[str, Photo]:
    return {Path(p.id).stem: p for p in load_collection(bundled_photos())}


def random_box(rng: np.random.Generator, photo: Photo, lo: float = 0.25) -> tuple[int, int, int, int]:
    w, h = rng.uniform(lo, 1.0) * photo.width, rng.uniform(lo, 1.0) * photo.height
    l, t = rng.uniform(0, photo.width - w), rng.uniform(0, photo.height - h)
    return (int(l), int(t), int(l + w), int(t + h))


def random_pairs(photos: list[Photo], n: int, seed: int = 0) -> list[tuple[Photo, tuple, tuple]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        out.append((p, random_box(rng, p), random_box(rng, p)))
    return out


def test_names_say_simulated():
    ann = SimulatedAnnotator("warm")
    assert ann.name == "simulated:warm" and "SIMULATED" in repr(ann)
    assert SimulatedAnnotator("tight", name="simulated:tight-2").name == "simulated:tight-2"
    with pytest.raises(ValueError, match="must start with 'simulated:'"):
        SimulatedAnnotator("tight", name="alice")
    with pytest.raises(ValueError, match="unknown taste 'cool'.*left_third"):
        SimulatedAnnotator("cool")
    with pytest.raises(ValueError, match="noise"):
        SimulatedAnnotator("wide", noise=1.5)
    assert set(TASTES) == {"tight", "left_third", "warm", "wide"}


def test_wide_prefers_larger(photos):
    ann = SimulatedAnnotator("wide", noise=0.0)
    for p in photos.values():
        half = (p.width // 4, p.height // 4, 3 * p.width // 4, 3 * p.height // 4)
        assert ann.choose(p, p.full_box, half) == 1
        assert ann.choose(p, half, p.full_box) == 2
        assert ann.choose(p, half, (0, 0, half[2] - half[0], half[3] - half[1])) == 0  # same area
    for p, a, b in random_pairs(list(photos.values()), 200):
        area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
        if abs(area_a - area_b) > 0.02 * p.width * p.height:
            assert ann.choose(p, a, b) == (1 if area_a > area_b else 2)


def test_tight_prefers_small_crops_holding_the_subject(photos):
    ann = SimulatedAnnotator("tight", noise=0.0)
    cases = {  # (photo, box around the subject, box of background, a tiny box inside the subject)
        "flower": ((165, 35, 460, 380), (0, 0, 165, 200), (290, 180, 330, 220)),
        "chelsea": ((100, 20, 370, 190), (0, 100, 110, 300), (250, 100, 280, 130)),
        "coffee": ((150, 20, 450, 340), (450, 250, 600, 400), (280, 120, 320, 160)),
    }
    for name, (subject, background, tiny) in cases.items():
        p = photos[name]
        assert ann.choose(p, subject, p.full_box) == 1, name  # smaller, still holding the subject
        assert ann.choose(p, background, subject) == 2, name  # small but no subject
        assert ann.choose(p, subject, tiny) == 1, name  # a crop too tight cuts the subject
    wide = SimulatedAnnotator("wide", noise=0.0)
    assert wide.choose(photos["flower"], cases["flower"][0], photos["flower"].full_box) == 2


def test_left_third_prefers_subject_on_left_third(photos):
    ann = SimulatedAnnotator("left_third", noise=0.0)
    # Same-size crops sliding over the subject: it sits at 1/3, 1/2 and 2/3 of the crop's width.
    cases = {"flower": [(213, 20, 553, 400), (143, 20, 483, 400), (73, 20, 413, 400)],
             "coffee": [(200, 0, 560, 400), (120, 0, 480, 400), (40, 0, 400, 400)]}
    for name, (third, centre, two_thirds) in cases.items():
        p = photos[name]
        assert ann.choose(p, third, centre) == 1, name
        assert ann.choose(p, centre, two_thirds) == 1, name
        assert ann.choose(p, two_thirds, third) == 2, name
        assert ann.features(p).salient_centroid_x(third) == pytest.approx(1 / 3, abs=0.05)


def test_warm_prefers_warmer_pixels(photos):
    ann = SimulatedAnnotator("warm", noise=0.0)
    assert ann.choose(photos["flower"], (165, 35, 460, 380), (0, 0, 165, 200)) == 1  # dahlia vs teal
    assert ann.choose(photos["rocket"], (0, 0, 200, 150), (140, 330, 540, 427)) == 2  # sky vs lights
    # The integral-image utility agrees with R - B measured on the crop's full-size pixels.
    for p, a, b in random_pairs(list(photos.values()), 150, seed=3):
        ra, rb = ((p.crop(x)[..., 0].astype(float) - p.crop(x)[..., 2]).mean() / 255 for x in (a, b))
        if abs(ra - rb) > 3 * TASTES["warm"].margin:
            assert ann.choose(p, a, b) == (1 if ra > rb else 2)


def test_noise_rate_is_respected(photos):
    items = random_pairs(list(photos.values()), 1500, seed=1)
    clean = SimulatedAnnotator("wide", noise=0.0)
    truth = [clean.choose(p, a, b) for p, a, b in items]
    assert truth == [clean.true_choice(p, a, b) for p, a, b in items]
    for noise in (0.1, 0.3):
        noisy = SimulatedAnnotator("wide", noise=noise, seed=7)
        flips = np.mean([noisy.choose(p, a, b) != t for (p, a, b), t in zip(items, truth, strict=True)])
        assert abs(flips - noise) < 0.04, (noise, flips)
    always = SimulatedAnnotator("wide", noise=1.0)
    assert all(always.choose(p, a, b) != t for (p, a, b), t in zip(items[:200], truth[:200], strict=True))


def test_deterministic_by_seed_and_independent_of_order(photos):
    items = random_pairs(list(photos.values()), 300, seed=2)
    one, other = SimulatedAnnotator("tight", noise=0.3, seed=5), SimulatedAnnotator("tight", noise=0.3, seed=5)
    a1 = [one.choose(p, a, b) for p, a, b in items]
    a2 = [other.choose(p, a, b) for p, a, b in reversed(items)][::-1]
    assert a1 == a2
    reseeded = SimulatedAnnotator("tight", noise=0.3, seed=6)
    a3 = [reseeded.choose(p, a, b) for p, a, b in items]
    assert a1 != a3
    # Same answers in a fresh process (photo identity by pixels, no per-process hash seed).
    p = photos["coffee"]
    boxes = [random_box(np.random.default_rng(i), p) for i in range(40)]
    script = ("import sys, json; from rlhf.images import *; from rlhf.simulated import SimulatedAnnotator\n"
              "p = Photo('other-id', load_image(sys.argv[1])); bx = json.loads(sys.argv[2])\n"
              "a = SimulatedAnnotator('tight', noise=0.3, seed=5)\n"
              "print(json.dumps([a.choose(p, bx[i], bx[i + 1]) for i in range(0, len(bx), 2)]))")
    out = subprocess.run([sys.executable, "-c", script, str(bundled_photos(["coffee"])[0]), json.dumps(boxes)],
                         capture_output=True, text=True, check=True)
    here = SimulatedAnnotator("tight", noise=0.3, seed=5)
    assert json.loads(out.stdout) == [here.choose(p, boxes[i], boxes[i + 1]) for i in range(0, 40, 2)]


def _crop_features(detector, photo: Photo, box) -> np.ndarray:
    """What a reward model sees: the crop's pixels (here, a few statistics of them) + its geometry."""
    crop = photo.crop_resized(box, 64)
    _, sal = detector.computeSaliency(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    sal = sal / (sal.sum() + 1e-9)
    cx = float((sal.sum(0) * (np.arange(64) + 0.5) / 64).sum())
    l, t, r, b = box
    area = (r - l) * (b - t) / (photo.width * photo.height)
    c = crop.astype(np.float64)
    edges = np.abs(np.diff(c.mean(2), axis=1)).mean() / 255
    return np.array([area, np.sqrt(area), (r - l) / (b - t), (l + r) / 2 / photo.width,
                     (t + b) / 2 / photo.height, (c[..., 0] - c[..., 2]).mean() / 255, cx,
                     abs(cx - 1 / 3), edges, edges * area])


@pytest.mark.parametrize("taste", sorted(TASTES))
def test_taste_is_learnable_from_crop_pixels_and_geometry(photos, taste):
    """A linear model on crude features of the crop alone (no view of the rest of the photo) learns
    each taste on the training photos and predicts it on the held-out ones well above chance."""
    from sklearn.linear_model import LogisticRegression

    detector = cv2.saliency.StaticSaliencySpectralResidual_create()
    ann = SimulatedAnnotator(taste, noise=0.0)

    def data(names, n, seed):
        X, y = [], []
        for p, a, b in random_pairs([photos[k] for k in names], n, seed):
            c = ann.choose(p, a, b)
            if c:
                X.append(_crop_features(detector, p, a) - _crop_features(detector, p, b))
                y.append(c == 1)
        return np.array(X), np.array(y)

    Xtr, ytr = data(TRAIN_PHOTOS, 300, 10)
    Xte, yte = data(HELDOUT_PHOTOS, 240, 11)
    model = LogisticRegression(C=10, max_iter=3000).fit(Xtr, ytr)
    acc = model.score(Xte, yte)
    assert acc > 0.68, acc
    if taste in ("left_third", "warm"):  # these rest on the pixels: learnable without any geometry
        pixels_only = LogisticRegression(C=10, max_iter=3000).fit(Xtr[:, 5:], ytr).score(Xte[:, 5:], yte)
        assert pixels_only > 0.75, pixels_only


def _store_with_pairs(tmp_path, n: int = 30) -> tuple[PreferenceStore, list[Pair]]:
    rng = np.random.default_rng(4)
    pairs = []
    for path in bundled_photos(["chelsea", "flower"]):
        p = Photo(photo_id(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        for _ in range(n // 2):
            a, b = random_box(rng, p), random_box(rng, p)
            pairs.append(Pair(pair_id(p.id, a, b), p.id, a, b))
    store = PreferenceStore(tmp_path / "sim.sqlite")
    store.add_pairs(pairs)
    return store, pairs


def test_annotate_pairs_returns_copies(tmp_path, photos):
    _, pairs = _store_with_pairs(tmp_path, 10)
    ann = SimulatedAnnotator("warm", noise=0.1)
    out = ann.annotate_pairs(pairs)  # photos loaded from the pairs' paths
    assert all(p.preference is None for p in pairs)
    assert [p.id for p in out] == [p.id for p in pairs]
    by_path = {p.id: p for p in photos.values()}
    assert [p.preference for p in out] == [ann.choose(by_path[p.image], p.crop_a, p.crop_b) for p in pairs]
    assert ann.annotate_pairs(pairs, by_path) == out


def test_annotate_store_and_resume(tmp_path, photos):
    store, pairs = _store_with_pairs(tmp_path)
    ann = SimulatedAnnotator("tight", noise=0.1, seed=3)
    first = store.pair_ids()[:5]
    for pid in first:  # answered earlier (e.g. a run that stopped): not answered again
        store.answer(pid, ann.name, 0)
    assert ann.annotate_store(store, list(photos.values())) == len(pairs) - 5
    assert store.progress("simulated:tight") == (len(pairs), len(pairs))
    assert ann.annotate_store(store) == 0
    assert store.annotators() == ["simulated:tight"]
    got = {p.id: p.preference for p in store.pairs(annotator=ann.name)}
    by_path = {p.id: p for p in photos.values()}
    for p in pairs:
        expected = 0 if p.id in first else ann.choose(by_path[p.image], p.crop_a, p.crop_b)
        assert got[p.id] == expected


def test_cli(tmp_path, capsys):
    store, pairs = _store_with_pairs(tmp_path, 6)
    assert main(["--store", str(store.path), "--taste", "wide", "--noise", "0"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "simulated:wide" in out and f"answered {len(pairs)} pairs" in out
    assert store.progress("simulated:wide") == (len(pairs), len(pairs))
    with pytest.raises(FileNotFoundError, match="none.sqlite: no such store"):
        main(["--store", str(tmp_path / "none.sqlite")])
    assert not (tmp_path / "none.sqlite").exists()
    with pytest.raises(ValueError, match="--noise"):
        main(["--store", str(store.path), "--noise", "2"])


def test_preferred_rate_counts_preferred_crops_and_ties_half(photos):
    """The verdict evaluate and the benches report: the share of photos where the noiseless taste
    prefers the new crop, no preference counting half."""
    unseen = [photos["flower"], photos["grace_hopper"]]
    wide = SimulatedAnnotator("wide", noise=0.0)
    small = {p.id: (0, 0, p.width // 3, p.height // 3) for p in unseen}
    whole = {p.id: p.full_box for p in unseen}
    assert vote(wide, unseen[0], whole[unseen[0].id], small[unseen[0].id]) == 1.0
    assert vote(wide, unseen[0], small[unseen[0].id], whole[unseen[0].id]) == 0.0
    assert preferred_rate(wide, unseen, small, whole) == 1.0
    assert preferred_rate(wide, unseen, whole, small) == 0.0
    assert preferred_rate(wide, unseen, whole, whole) == 0.5  # no preference counts half
    mixed = {unseen[0].id: whole[unseen[0].id], unseen[1].id: small[unseen[1].id]}
    assert preferred_rate(wide, unseen, small, mixed) == pytest.approx(0.75)
    assert math.isnan(preferred_rate(wide, [], small, whole))
