"""rlhf.boxstats (box sums, framing cues, colour cues, IoU, saliency) and rlhf.cache (the bounded LRU)."""

import threading

import numpy as np
import pytest

from rlhf.boxstats import (
    box_iou,
    box_means,
    box_sums,
    colour_cues,
    colour_sat,
    edge_strips,
    framing_cues,
    moment_sat,
    spectral_residual,
    summed_area,
)
from rlhf.cache import LRUCache


def test_box_sums_match_brute_force_on_integer_boxes():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 17, 23))
    sat = summed_area(m)
    assert sat.shape == (2, 18, 24)
    x = np.sort(rng.integers(0, 24, size=(200, 2)), 1)
    y = np.sort(rng.integers(0, 18, size=(200, 2)), 1)
    got = box_sums(sat, x[:, 0], y[:, 0], x[:, 1], y[:, 1])
    want = np.array([m[:, t:b, l:r].sum((1, 2))
                     for l, r, t, b in zip(x[:, 0], x[:, 1], y[:, 0], y[:, 1], strict=True)]).T
    np.testing.assert_allclose(got, want, atol=1e-9)
    # scalars give one value per channel
    np.testing.assert_allclose(box_sums(sat, 2, 3, 9, 11), m[:, 3:11, 2:9].sum((1, 2)))


@pytest.mark.parametrize("shape", [(7, 9), (3, 7, 9), (2, 2, 7, 9), (40, 7, 9)])
def test_summed_area_of_any_leading_shape(shape):
    """Few channels go through cv2.integral, many through numpy: the same table either way."""
    m = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    sat = summed_area(m)
    assert sat.shape == (*shape[:-2], 8, 10) and sat.dtype == np.float64
    assert not sat[..., 0, :].any() and not sat[..., :, 0].any()
    np.testing.assert_allclose(sat[..., 1:, 1:], m.astype(np.float64).cumsum(-2).cumsum(-1), atol=1e-9)


def test_box_sums_are_exact_at_fractional_coordinates():
    rng = np.random.default_rng(1)
    m = rng.uniform(size=(9, 12))
    sat = summed_area(m)
    # Upsample the piecewise-constant map 4x: quarter-cell boxes become integer boxes there.
    fine = np.kron(m, np.ones((4, 4))) / 16
    fsat = summed_area(fine)
    q = np.sort(rng.integers(0, 48, size=(100, 2)), 1), np.sort(rng.integers(0, 36, size=(100, 2)), 1)
    (x0, x1), (y0, y1) = q[0].T, q[1].T
    got = box_sums(sat, x0 / 4, y0 / 4, x1 / 4, y1 / 4)
    np.testing.assert_allclose(got, box_sums(fsat, x0, y0, x1, y1), atol=1e-9)
    # integer and float coordinates of the same boxes agree
    np.testing.assert_allclose(box_sums(sat, 1.0, 2.0, 7.0, 8.0), box_sums(sat, 1, 2, 7, 8))
    # coordinates beyond the map are clipped to it
    assert box_sums(sat, -5.0, -5.0, 100.0, 100.0) == pytest.approx(m.sum())
    assert box_means(sat, 0.0, 0.0, 12.0, 9.0) == pytest.approx(m.mean())


def test_iou_by_hand():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_framing_cues_on_a_known_map():
    # A 100 x 100 map, uniform 1, with a bright 10 x 10 block (value 11) at x 20-30, y 40-50.
    m = np.ones((100, 100))
    m[40:50, 20:30] = 11.0
    msat = moment_sat(m)
    total = 10_000 + 1_000
    c = framing_cues(msat, 20, 40, 30, 50)  # the block itself
    assert c.kept == pytest.approx(1_100 / total)
    assert (c.cx, c.cy) == (pytest.approx(0.5), pytest.approx(0.5))
    # A box whose left strip (0.06 * 50 = 3 cells deep) lies inside the block, the rest on the floor.
    c = framing_cues(msat, 27, 0, 77, 100)
    mean = total / 10_000
    assert c.edges[0] == pytest.approx((3 * 10 * 11 + 3 * 90) / 300 / mean)
    assert c.edges[1] == pytest.approx(1 / mean)  # top strip: floor only
    assert c.edges[2] == pytest.approx(1 / mean)
    assert c.cx < 0.5  # the block pulls the centroid left
    # Vectorised over boxes, with fractional coordinates, and a strip of at least min_strip cells.
    c = framing_cues(msat, np.array([0.0, 20.0]), np.array([0.0, 40.0]), np.array([100.0, 30.0]),
                     np.array([100.0, 50.0]), strip=0.04, min_strip=0.5)
    assert c.edges.shape == (4, 2) and c.kept[0] == pytest.approx(1.0)
    sx0, sy0, sx1, sy1 = edge_strips(20.0, 40.0, 30.0, 50.0, strip=0.01, min_strip=0.5)
    np.testing.assert_allclose(sx1 - sx0, [0.5, 10, 0.5, 10])
    np.testing.assert_allclose(sy1 - sy0, [10, 0.5, 10, 0.5])


def test_framing_cues_without_mass_put_the_centroid_in_the_middle():
    msat = moment_sat(np.zeros((10, 10)))
    c = framing_cues(msat, 2, 2, 8, 8)
    assert (float(c.cx), float(c.cy), float(c.mass)) == (0.5, 0.5, 0.0)


def test_spectral_residual_finds_a_blob():
    rgb = np.full((64, 64, 3), 90, np.uint8)
    rgb[40:52, 8:20] = (250, 30, 30)
    m = spectral_residual(rgb, blur_sigma=2.0)
    assert m is not None and m.shape == (64, 64) and m.dtype == np.float32
    y, x = np.unravel_index(np.argmax(m), m.shape)
    assert 30 <= y <= 60 and 0 <= x <= 30


def test_lru_evicts_the_least_recently_used():
    c = LRUCache(3)
    for i in range(10):
        c.put(i, i)
    assert len(c) == 3 and c.get(0) is None and c.get(9) == 9
    c.get(7)
    c.put(10, 10)  # evicts 8, not 7
    assert c.get(7) == 7 and c.get(8) is None and 10 in c
    assert c.hits >= 2 and c.misses >= 2
    c.resize(1)
    assert len(c) == 1 and c.get(7) == 7
    off = LRUCache(0)
    off.put(1, 1)
    assert len(off) == 0 and off.get(1) is None


def test_lru_bounded_by_weight_keeps_the_newest():
    c = LRUCache(max_weight=10, weight=len)
    c.put("a", "xxxx")
    c.put("b", "xxxx")
    assert len(c) == 2 and c.weight == 8
    c.put("c", "xxxx")  # 12 > 10: "a" goes
    assert c.get("a") is None and c.weight == 8
    c.put("b", "x")  # replacing an entry replaces its weight
    assert c.weight == 5
    c.put("big", "x" * 50)  # over the bound alone, but the newest stays
    assert len(c) == 1 and c.get("big") is not None and c.weight == 50
    c.clear()
    assert len(c) == 0 and c.weight == 0


def test_lru_is_thread_safe():
    c = LRUCache(50)

    def work(k: int) -> None:
        for i in range(2_000):
            c.put((k, i % 80), i)
            c.get((k, (i * 7) % 80))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 50


def test_colour_cues_on_a_warm_left_and_cool_right_photo():
    """Red left half, blue right half: the crop's mean colour, and the strips beyond and inside each edge
    against it; a strip past the photo's border reads 0.5 (no difference)."""
    px = np.zeros((20, 40, 3), np.uint8)
    px[:, :20, 0] = 255
    px[:, 20:, 2] = 255
    sat = colour_sat(px)
    cues = colour_cues(sat, (10, 0, 30, 20), grid=4)  # the middle half: strips 10 cells wide
    assert cues.shape == (27,)
    np.testing.assert_allclose(cues[:3], [1 / 3, 0.5, 0.25])  # brightness 1/3, warmth 0, G - (R + B) / 2 = -1/2
    outside = cues[3:15].reshape(4, 3)  # left, top, right, bottom
    inside = cues[15:].reshape(4, 3)
    assert outside[0, 1] == pytest.approx(1.0) and outside[2, 1] == pytest.approx(0.0)  # warmth +1 / -1 vs the crop
    np.testing.assert_allclose(outside[[1, 3]], 0.5)  # top and bottom lie past the photo's border
    assert inside[0, 1] == pytest.approx(1.0) and inside[2, 1] == pytest.approx(0.0)


def test_lru_counts_a_value_that_grew_since_it_was_stored():
    """A photo context gains derived tables after it is stored; storing it again counts its new weight."""
    from rlhf.cache import LRUCache

    cache = LRUCache(max_weight=10, weight=len)
    value = [0] * 4
    cache.put("a", value)
    value.extend([0] * 4)  # grew to 8 in place
    cache.put("a", value)
    assert cache.weight == 8
    cache.put("b", [0] * 4)  # 12 > 10: the least recent goes
    assert "a" not in cache and cache.weight == 4
