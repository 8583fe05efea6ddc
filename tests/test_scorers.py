"""Aesthetic scorers on the real bundled photos: the proxy's rankings, its guards, speed and caches;
the BRISQUE region form against OpenCV; NIMA checkpoints (own and pyiqa layout)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from rlhf.backbone import BackboneWeightsError, preprocess
from rlhf.brisque import BrisqueRegions, brisque_features, brisque_score
from rlhf.images import Photo, bundled_photos, load_image, photo_id
from rlhf.scorers import (
    AestheticScorer,
    NimaModel,
    NimaScorer,
    ProxyAestheticScorer,
    create_scorer,
    list_scorers,
    nima_mean_score,
    save_nima_checkpoint,
)

torch.set_num_threads(1)

# Boxes chosen by looking at the photos: (good framing of the subject, [crops that cut it or show
# mostly background]).
CASES = {
    "chelsea": ((80, 20, 390, 290), [(0, 0, 200, 300), (330, 150, 451, 300)]),       # cat face | left half, fur corner
    "coffee": ((70, 0, 490, 400), [(300, 0, 600, 400), (0, 200, 150, 400)]),        # cup+saucer | half cup, table
    "astronaut": ((20, 0, 380, 512), [(0, 0, 220, 512), (280, 340, 512, 512), (0, 0, 100, 250)]),  # person | half, helmet, flag
    "rocket": ((200, 80, 440, 427), [(0, 0, 320, 427), (0, 0, 250, 200)]),          # rocket | half rocket, sky+tower
    "grace_hopper": ((40, 0, 480, 480), [(0, 300, 512, 600), (0, 0, 150, 400)]),     # head+shoulders | lower half, flag
}


@pytest.fixture(scope="module")
def scorer() -> ProxyAestheticScorer:
    s = create_scorer("default")
    assert isinstance(s, ProxyAestheticScorer)
    return s


@pytest.fixture(scope="module")
def photos() -> dict[str, Photo]:
    return {p.stem: Photo(photo_id(p), load_image(p)) for p in bundled_photos()}


@pytest.mark.parametrize("name", list(CASES))
def test_framing_the_subject_beats_cutting_it_or_background(scorer, photos, name):
    good, bads = CASES[name]
    s = scorer.score_boxes(photos[name], [good, *bads])
    for bad, sb in zip(bads, s[1:], strict=True):
        assert s[0] > sb + 0.5, f"{name}: subject {good} {s[0]:.2f} vs {bad} {sb:.2f}"


def test_whole_photo_is_not_trivially_the_best(scorer, photos):
    for name in ("chelsea", "coffee", "rocket"):
        good = CASES[name][0]
        p = photos[name]
        full, crop = scorer.score_boxes(p, [p.full_box, good])
        assert crop > full, f"{name}: crop {crop:.2f} <= whole photo {full:.2f}"
    # and over a coarse grid of boxes, the best one is a real crop on most photos
    beaten = 0
    for p in photos.values():
        xs = np.linspace(0, p.width, 5).round().astype(int)
        ys = np.linspace(0, p.height, 5).round().astype(int)
        boxes = [(a, c, b, d) for i, a in enumerate(xs) for b in xs[i + 1:]
                 for j, c in enumerate(ys) for d in ys[j + 1:]]
        s = scorer.score_boxes(p, boxes)
        beaten += bool(s.max() > scorer.score_boxes(p, [p.full_box])[0] + 1e-9)
    assert beaten >= len(photos) - 2


def test_slivers_and_tiny_patches_score_low(scorer, photos):
    cases = {
        "chelsea": [(0, 140, 451, 170), (160, 100, 200, 140)],   # 15:1 sliver, 40 px eye patch
        "coffee": [(330, 250, 380, 300), (0, 0, 600, 40)],       # spoon patch, top sliver
        "rocket": [(290, 100, 350, 427), (300, 200, 330, 230)],  # 5.5:1 rocket sliver, tiny patch
    }
    for name, boxes in cases.items():
        s = scorer.score_boxes(photos[name], boxes)
        assert (s < 2.0).all(), f"{name}: {dict(zip(boxes, s.round(2), strict=True))}"


def test_scores_stay_in_range(scorer, photos):
    rng = np.random.default_rng(0)
    for p in photos.values():
        xy = rng.uniform(0, 1, size=(40, 4))
        boxes = [(min(a, b) * p.width, min(c, d) * p.height, max(a, b) * p.width + 1, max(c, d) * p.height + 1)
                 for a, b, c, d in xy]
        s = scorer.score_boxes(p, boxes + [p.full_box, (0, 0, 1, 1)])
        assert np.isfinite(s).all() and (s >= 1.0).all() and (s <= 10.0).all()
    e = scorer.explain(photos["coffee"], CASES["coffee"][0])
    for k in ("content", "quality", "kept", "focus", "border", "thirds", "exposure", "penalty"):
        assert 0.0 <= e[k] <= 1.0, (k, e[k])
    assert e["score"] == pytest.approx(scorer.score_boxes(photos["coffee"], [CASES["coffee"][0]])[0])


def test_content_term_follows_the_subject(scorer, photos):
    cup = scorer.explain(photos["coffee"], (150, 10, 440, 340))["content"]
    table = scorer.explain(photos["coffee"], (0, 200, 150, 400))["content"]
    assert cup > 0.8 and table < 0.3
    # people are the subject where there are faces
    astro = photos["astronaut"]
    assert scorer.explain(astro, (110, 0, 370, 300))["content"] > 0.9
    assert scorer.explain(astro, (280, 340, 512, 512))["content"] < 0.1


def test_score_of_crops_without_photo(scorer, photos):
    coffee, cat = photos["coffee"].pixels, photos["chelsea"].pixels
    crops = [coffee[0:400, 70:490], coffee[200:400, 0:150], cat[20:290, 80:390], cat[150:300, 330:451],
             cat[140:170, :], cat[100:120, 160:180]]
    s = scorer.score(crops)
    assert s.shape == (6,) and ((s >= 1) & (s <= 10)).all()
    assert s[0] > s[1] and s[2] > s[3]          # subject above background
    assert s[4] == pytest.approx(1.0)           # 15:1 sliver
    assert s[5] < 5.0                           # 20 px patch
    same = scorer.score(np.stack([cat[0:100, 0:100], cat[100:200, 100:200]]))
    assert same.shape == (2,)
    assert scorer.distribution(crops) is None
    assert scorer.score([]).shape == (0,)


def test_box_scores_are_cached_and_bounded(photos):
    from rlhf.context import context_of

    s = ProxyAestheticScorer(box_cache_size=8)
    p = photos["coffee"]
    boxes = [(i * 10, 0, 300 + i * 10, 300) for i in range(12)]
    first = s.score_boxes(p, boxes)
    assert len(s._boxes) == 8
    # The per-photo tables are derived once and kept with the photo's context (bounded there).
    assert s._key in context_of(p)._derived
    np.testing.assert_array_equal(s.score_boxes(p, boxes), first)
    # one at a time gives the same numbers as a batch
    np.testing.assert_allclose([s.score_boxes(p, [b])[0] for b in boxes[:3]], first[:3])


def test_speed_per_box(scorer, photos):
    """RL asks for one box per step: warm per-box cost must stay in milliseconds."""
    p = photos["motorcycle"]
    scorer.score_boxes(p, [p.full_box])  # per-photo work, once
    rng = np.random.default_rng(1)
    boxes = [(x, y, x + w, y + h) for x, y, w, h in zip(
        rng.integers(0, 300, 200), rng.integers(0, 200, 200), rng.integers(150, 400, 200),
        rng.integers(120, 280, 200), strict=True)]
    t = time.perf_counter()
    for b in boxes:
        scorer.score_boxes(p, [b])
    ms = (time.perf_counter() - t) / len(boxes) * 1000
    print(f"proxy score_boxes: {ms:.2f} ms per uncached box")
    assert ms < 25.0  # generous: a few ms on an idle 2-core machine, CI may be shared


def test_factory_and_registry(scorer):
    assert {"default", "nima"} <= set(list_scorers())
    assert "not NIMA" in scorer.name and "proxy" in scorer.name.lower()
    assert "NOT NIMA" in (ProxyAestheticScorer.__doc__ or "")
    assert isinstance(create_scorer("proxy", box_cache_size=1), ProxyAestheticScorer)
    with pytest.raises(ValueError, match="unknown scorer"):
        create_scorer("nope")
    with pytest.raises(ValueError, match="needs weights"):
        create_scorer("nima")
    assert issubclass(NimaScorer, AestheticScorer)


# ---------------------------------------------------------------------------------------------------
# BRISQUE
# ---------------------------------------------------------------------------------------------------
def test_brisque_regions_match_opencv(photos):
    import cv2

    for name in ("coffee", "rocket", "astronaut"):
        img = photos[name].pixels
        want = np.asarray(cv2.quality.QualityBRISQUE_computeFeatures(np.ascontiguousarray(img[..., ::-1]))).ravel()
        np.testing.assert_allclose(brisque_features(img), want, atol=1e-3)
        regions = BrisqueRegions(img)
        h, w = img.shape[:2]
        boxes = np.array([[0, 0, w, h], [w // 4, h // 4, 3 * w // 4, 3 * h // 4], [0, 0, w // 2, h // 2],
                          [w // 3, 0, w, h]])
        got = regions.scores(boxes)
        ref = [brisque_score(img[t:b, l:r]) for l, t, r, b in boxes]
        assert abs(got[0] - ref[0]) < 0.1, name
        # crops differ only by how their outer 3 pixels are padded
        np.testing.assert_allclose(got[1:], ref[1:], atol=4.0, err_msg=name)


def test_brisque_tracks_degradation(photos):
    import cv2

    img = photos["coffee"].pixels[:, :400]
    blurred = cv2.GaussianBlur(img, (0, 0), 3)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    clean = brisque_score(img)
    assert brisque_score(blurred) > clean + 20 and brisque_score(noisy) > clean + 20
    both = BrisqueRegions(np.concatenate([img, blurred], axis=1)).scores(
        np.array([[20, 20, 380, 380], [420, 20, 780, 380]]))
    assert both[1] > both[0] + 20  # the blurred half of one photo scores worse


# ---------------------------------------------------------------------------------------------------
# NIMA
# ---------------------------------------------------------------------------------------------------
def test_nima_checkpoint_round_trip(tmp_path, photos):
    """Plumbing test: an untrained head on the real backbone, saved and loaded back."""
    nima = NimaScorer(input_size=96)
    crops = [photos["coffee"].pixels, photos["chelsea"].pixels]
    dist = nima.distribution(crops)
    assert dist.shape == (2, 10)
    np.testing.assert_allclose(dist.sum(1), 1.0, atol=1e-5)
    path = save_nima_checkpoint(tmp_path / "nima.pth", nima.model, 96, note="plumbing")
    loaded = create_scorer("nima", weights=str(path))
    assert isinstance(loaded, NimaScorer) and loaded.input_size == 96 and loaded.meta["note"] == "plumbing"
    np.testing.assert_allclose(loaded.distribution(crops), dist, atol=1e-5)
    s = loaded.score(crops)
    np.testing.assert_allclose(s, nima_mean_score(dist), atol=1e-4)
    assert ((s >= 1) & (s <= 10)).all()
    b = loaded.score_boxes(photos["coffee"], [(0, 0, 300, 300), photos["coffee"].full_box])
    assert b.shape == (2,) and np.isfinite(b).all()


def test_nima_loads_pyiqa_state_dicts(tmp_path, photos):
    """pyiqa's layout: base_model = timm features_only backbone, classifier.2 = the 10-way linear.
    Plumbing test with random weights in that layout (pyiqa's own files need a download)."""
    src = NimaModel("mobilenetv2_100", 0.0, "pyiqa")
    path = tmp_path / "pyiqa_nima.pth"
    torch.save({"params": src.state_dict()}, path)
    assert any(k.startswith("base_model.") for k in src.state_dict()) and "classifier.2.weight" in src.state_dict()
    s = create_scorer("nima", weights=str(path))  # backbone found from the keys
    assert s.model.backbone_name == "mobilenetv2_100" and s.input_size == 224
    crop = [photos["rocket"].pixels]
    with torch.no_grad():
        want = src.eval()(preprocess(crop, 224, s.model.mean, s.model.std))
    np.testing.assert_allclose(s.distribution(crop), want.numpy(), atol=1e-5)
    # explicit backbone name works too
    assert create_scorer("nima:mobilenetv2_100", weights=str(path)).model.backbone_name == "mobilenetv2_100"


def test_nima_clear_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="no such NIMA checkpoint"):
        create_scorer("nima", weights=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(BackboneWeightsError, match="junk.pth"):
        create_scorer("nima", weights=str(junk))
    other = tmp_path / "other.pth"
    torch.save({"a": torch.zeros(1)}, other)
    with pytest.raises(BackboneWeightsError, match="neither an rlhf-nima checkpoint nor a pyiqa"):
        create_scorer("nima", weights=str(other))
    src = NimaModel("mobilenetv2_100", 0.0, "pyiqa").state_dict()
    src["classifier.2.weight"] = torch.zeros(10, 99)
    bad = tmp_path / "bad_head.pth"
    torch.save({"params": src}, bad)
    with pytest.raises(BackboneWeightsError, match=r"bad_head\.pth: weights do not fit .*another shape"):
        create_scorer("nima:mobilenetv2_100", weights=str(bad))
    unknown = tmp_path / "unknown_backbone.pth"
    torch.save({"params": NimaModel("test_efficientnet", 0.0, "pyiqa").state_dict()}, unknown)
    with pytest.raises(BackboneWeightsError, match="match none of vgg16"):
        create_scorer("nima", weights=str(unknown))
    assert create_scorer("nima:test_efficientnet", weights=str(unknown)).model.backbone_name == "test_efficientnet"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nima_on_gpu_with_autocast(tmp_path, photos):
    cpu = NimaScorer(input_size=128)
    path = save_nima_checkpoint(tmp_path / "n.pth", cpu.model, 128)
    gpu = create_scorer("nima", weights=str(path), device="cuda")
    crops = [photos["flower"].pixels, photos["china"].pixels]
    np.testing.assert_allclose(gpu.score(crops), cpu.score(crops), atol=0.05)
    proxy_gpu = create_scorer("default", device="cuda")
    p = photos["coffee"]
    assert proxy_gpu.score_boxes(p, [CASES["coffee"][0]])[0] == pytest.approx(
        create_scorer("default").score_boxes(p, [CASES["coffee"][0]])[0], abs=0.05)
