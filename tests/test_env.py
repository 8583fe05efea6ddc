"""The crop environment: gymnasium's checker, action geometry, episode rules, dense reward."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rlhf.env import Action, CropEnv
from rlhf.images import bundled_photos, load_collection


def area_reward(photo, boxes):
    """A known reward for plumbing tests: prefers crops near 40% of the photo's area."""
    out = []
    for l, t, r, b in boxes:
        frac = (r - l) * (b - t) / (photo.width * photo.height)
        out.append(1.0 - abs(frac - 0.4))
    return np.array(out)


def left_reward(photo, boxes):
    """A known reward for lookahead tests: pays for crops further left (moves and shrinks differ in sign)."""
    return np.array([1.0 - (b[0] + b[2]) / (2 * photo.width) for b in boxes])


@pytest.fixture(scope="module")
def photos():
    return load_collection(bundled_photos(["chelsea", "coffee"]))


def make(photos, **cfg):
    return CropEnv(cfg, reward_fn=area_reward, photos=photos)


def test_check_env(photos):
    check_env(make(photos), skip_render_check=True)
    check_env(make(photos, aspect="4:3"), skip_render_check=True)


def test_box_mask_channel_marks_the_box(photos):
    env = make(photos, grid=10, box_mask=True, obs_size=40)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"photo_index": 0})
    assert obs["photo"].shape == obs["crop"].shape == (40, 40, 5)
    assert (obs["photo"][..., 4] == 255).all()  # the episode starts from the whole photo
    env.step(Action.SHRINK)
    obs, *_ = env.step(Action.LEFT)  # box [0.0, 0.1, 0.8, 0.9]
    mask = obs["photo"][..., 4]
    assert (mask[4:36, 0:32] == 255).all() and mask[:4].max() == 0 and mask[:, 32:].max() == 0
    assert (obs["crop"][..., 4] == 255).all()
    plain, _ = make(photos, obs_size=40).reset(seed=0, options={"photo_index": 0})
    np.testing.assert_array_equal(plain["photo"], obs["photo"][..., :4])  # the other channels as before


def test_actions_move_the_box(photos):
    env = make(photos, grid=10)
    env.reset(seed=0, options={"photo_index": 0})
    env.step(Action.SHRINK)
    assert np.allclose(env.box, [0.1, 0.1, 0.9, 0.9])
    env.step(Action.LEFT)
    assert np.allclose(env.box, [0.0, 0.1, 0.8, 0.9])
    env.step(Action.LEFT)  # blocked at the border: the box keeps its size
    assert np.allclose(env.box, [0.0, 0.1, 0.8, 0.9])
    env.step(Action.SQUASH_Y)
    assert np.allclose(env.box, [0.0, 0.2, 0.8, 0.8])
    env.step(Action.SHRINK_TOP_LEFT)
    assert np.allclose(env.box, [0.0, 0.2, 0.7, 0.7])


def test_episode_ends_on_stop_cap_and_min_area(photos):
    env = make(photos, max_steps=5)
    env.reset(seed=0)
    _, _, term, trunc, _ = env.step(Action.STOP)
    assert term and not trunc
    env.reset(seed=0)
    for _ in range(5):
        _, _, term, trunc, _ = env.step(Action.LEFT)  # blocked moves: nothing happens
    assert trunc and not term
    env = make(photos, min_area=0.5, max_steps=16)
    env.reset(seed=0)
    done, n = False, 0
    while not done:
        _, _, term, trunc, info = env.step(Action.SHRINK)
        done, n = term or trunc, n + 1
    assert term
    l, t, r, b = env.box
    assert (r - l) * (b - t) >= 0.5 - 1e-9 and n < 16


def test_dense_reward_telescopes_to_score_gain(photos):
    env = make(photos)
    _, info = env.reset(seed=1)
    start = info["score"]
    total = 0.0
    rng = np.random.default_rng(0)
    done = False
    noops = 0
    while not done:
        before = env.box.copy()
        _, r, term, trunc, info = env.step(int(rng.integers(1, 14)))
        noops += np.allclose(before, env.box) and not term
        total += r
        done = term or trunc
    assert total == pytest.approx(info["score"] - start - noops * env.cfg.noop_penalty)


def test_aspect_lock_keeps_ratio(photos):
    env = make(photos, aspect="16:9")
    env.reset(seed=0, options={"photo_index": 1})
    rng = np.random.default_rng(1)
    for _ in range(12):
        _, _, term, trunc, info = env.step(int(rng.integers(1, 14)))
        l, t, r, b = info["box"]
        assert (r - l) / (b - t) == pytest.approx(16 / 9, rel=0.03)
        if term or trunc:
            break


def test_augmented_variants_are_new_framings(photos):
    env = make(photos, augment_variants=3)
    assert len(env.photos) == 2 * 4
    ids = {p.id for p in env.photos}
    assert len(ids) == 8
    assert all(p.pixels.shape[0] >= 0.69 * photos[0].height for p in env.photos if "chelsea" in p.id)


def test_random_start_explores_and_inference_starts_whole(photos):
    env = make(photos, random_start=1.0, min_area=0.3)
    starts = set()
    for i in range(10):
        _, info = env.reset(seed=i)
        l, t, r, b = env.box
        assert (r - l) * (b - t) >= 0.3 - 1e-9
        starts.add(tuple(env.box))
    assert len(starts) > 5
    env.reset(options={"random_start": 0.0, "photo_index": 0})
    assert np.allclose(env.box, [0, 0, 1, 1])


def test_slivers_are_refused(photos):
    env = make(photos, min_area=0.05, max_aspect=2.0, max_steps=40)
    env.reset(options={"photo_index": 1})  # coffee, 600x400: aspect 1.5
    for _ in range(30):
        env.step(Action.SQUASH_Y)
    l, t, r, b = env.pixel_box()
    assert (r - l) / (b - t) <= 2.0 + 1e-6


# The spectral residual also fires on the pasted photo's edges, so its centroid lies further right.
@pytest.mark.parametrize("saliency, max_cx", [("subject", 0.3), ("spectral", 0.4)])
def test_saliency_channel_and_cues_find_the_subject(photos, saliency, max_cx):
    """A real photo (the cat) pasted into the left part of a flat canvas: the saliency the policy sees
    lies on it, and the framing cues say so (share of saliency kept, centroid inside the box)."""
    from rlhf.images import Photo

    cat = photos[0].pixels[::2, ::2]
    canvas = np.full((cat.shape[0] * 2, cat.shape[1] * 3, 3), 128, np.uint8)
    top = cat.shape[0] // 2
    canvas[top:top + cat.shape[0], : cat.shape[1]] = cat
    env = CropEnv({"saliency": saliency}, reward_fn=area_reward, photos=[Photo("pasted", canvas)])
    obs, _ = env.reset(options={"photo_index": 0})
    sal = obs["photo"][..., 3].astype(float)
    assert sal[:, : sal.shape[1] // 3].sum() > 0.6 * sal.sum()  # the cat covers the left third only
    kept, area, cx, cy = obs["box"][5:9]
    assert kept == pytest.approx(1.0) and area == pytest.approx(1.0)
    assert cx < max_cx and 0.3 < cy < 0.7


def test_bad_saliency_setting_fails_fast(photos):
    with pytest.raises(ValueError, match="saliency must be"):
        make(photos, saliency="nope")


def test_envs_of_one_process_share_their_local_reward(photos):
    """An env runner steps several envs; they must share one scorer (and its ~19 MB photo contexts)."""
    envs = [CropEnv({"reward": {"kind": "aesthetic"}}, photos=photos) for _ in range(3)]
    assert envs[0].reward_fn is envs[1].reward_fn is envs[2].reward_fn
    other = CropEnv({"reward": {"kind": "aesthetic", "scorer": "default", "device": "cpu", "w_nima": 0.5}},
                    photos=photos)
    assert other.reward_fn is not envs[0].reward_fn  # another spec, another reward
    envs[0].reset(seed=0)
    envs[1].reset(seed=0)
    assert envs[0].score == envs[1].score  # the same photo, the same scorer: the same score


def test_lite0_features_pool_the_photo_feature_map(photos):
    """features="lite0": the frozen Lite0's feature map of the photo (real ImageNet weights), pooled over the box."""
    import torch

    from rlhf.feature_map import FEATURE_DIM, feature_map, feature_sat, frozen_lite0, pooled_features

    env = make(photos, features="lite0", grid=10)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"photo_index": 0})
    crop, whole = obs["feat"][:FEATURE_DIM], obs["feat"][FEATURE_DIM:]
    np.testing.assert_array_equal(crop, whole)  # the episode starts from the whole photo
    from rlhf.context import context_of

    work = context_of(photos[0]).work  # the photo's working pixels (rlhf.context): the map is of those
    sat = feature_sat(feature_map(work))
    fh, fw = sat.shape[1] - 1, sat.shape[2] - 1
    assert 6 <= max(fh, fw) <= 12  # ~320 px at stride 32
    direct = sat[:, fh, fw] / (fh * fw)  # the map's mean, from the table's corner
    np.testing.assert_allclose(whole, direct, rtol=1e-5, atol=1e-6)
    obs, *_ = env.step(Action.SHRINK_TOP_LEFT)  # box [0, 0, 0.9, 0.9]
    assert not np.allclose(obs["feat"][:FEATURE_DIM], whole)
    np.testing.assert_allclose(obs["feat"][:FEATURE_DIM], pooled_features(sat, env.box), rtol=1e-5, atol=1e-6)
    # The features say what is in the photo: the pooled map through Lite0's own classifier names the cat.
    head = frozen_lite0().get_classifier()
    logits = head(torch.from_numpy(whole)[None])[0]
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cats (chelsea is a tabby)


def test_colour_cues_say_what_lies_beyond_each_edge():
    """A photo warm (red) on its left half and cool (blue) on its right: from a box on the middle, the
    strip beyond the left edge is warmer than the crop, the one beyond the right edge cooler, and
    shrinking the right edge would give up the crop's coolest part."""
    from rlhf.env import BOX_FEATURES, COLOUR_CUES
    from rlhf.images import Photo

    px = np.zeros((200, 300, 3), np.uint8)
    px[:, :150, 0] = 220
    px[:, 150:, 2] = 220
    env = CropEnv({"colour_cues": True, "grid": 10}, reward_fn=area_reward, photos=[Photo("halves.png", px)])
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"photo_index": 0})
    assert obs["box"].shape == (BOX_FEATURES + COLOUR_CUES,)
    env.step(Action.SHRINK)  # box [0.1, 0.1, 0.9, 0.9]: as much red as blue inside
    obs, *_ = env.step(Action.SHRINK)  # [0.2, 0.2, 0.8, 0.8]
    cues = obs["box"][BOX_FEATURES:]
    warmth = cues[1]
    outside = {side: cues[3 + 3 * i + 1] for i, side in enumerate(("left", "top", "right", "bottom"))}
    inside = {side: cues[15 + 3 * i + 1] for i, side in enumerate(("left", "top", "right", "bottom"))}
    assert abs(warmth - 0.5) < 0.02  # half red, half blue
    assert outside["left"] > 0.7 and outside["right"] < 0.3  # beyond the left edge: warmer
    assert abs(outside["top"] - 0.5) < 0.02 and abs(outside["bottom"] - 0.5) < 0.02  # the same mix
    assert inside["right"] < 0.3 and inside["left"] > 0.7
    # At the photo's border there is no strip beyond the edge: no difference.
    obs, _ = env.reset(seed=0, options={"photo_index": 0})
    assert np.allclose(obs["box"][BOX_FEATURES + 3:BOX_FEATURES + 15], 0.5)
    plain, _ = CropEnv({"grid": 10}, reward_fn=area_reward, photos=[Photo("halves.png", px)]).reset(seed=0)
    assert plain["box"].shape == (BOX_FEATURES,)  # off by default: run configs from before it still load


def test_lookahead_shows_what_each_move_pays(photos):
    """With lookahead the box vector ends in each move's change of the reward (0.5 + 10 x change):
    stepping a move pays exactly what it showed, and moves that change nothing read 0.5."""
    from rlhf.env import BOX_FEATURES, LOOKAHEAD, LOOKAHEAD_SCALE

    env = CropEnv({"lookahead": True, "grid": 10}, reward_fn=left_reward, photos=photos[:1])
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"photo_index": 0})
    ahead = obs["box"][BOX_FEATURES:]
    assert ahead.shape == (LOOKAHEAD,)
    # From the whole photo: LEFT/RIGHT/UP/DOWN and the stretches are blocked, SHRINK keeps the centre.
    for a in (Action.LEFT, Action.RIGHT, Action.UP, Action.DOWN, Action.STRETCH_X, Action.STRETCH_Y,
              Action.SHRINK, Action.SQUASH_X, Action.SQUASH_Y):
        assert ahead[a - 1] == pytest.approx(0.5, abs=1e-3), a
    assert ahead[Action.SHRINK_TOP_LEFT - 1] > 0.5 > ahead[Action.SHRINK_TOP_RIGHT - 1]
    for action in (Action.SHRINK_TOP_LEFT, Action.RIGHT, Action.LEFT, Action.SHRINK_BOTTOM_RIGHT):
        shown = obs["box"][BOX_FEATURES + action - 1]
        obs, reward, *_ = env.step(action)
        assert np.clip(0.5 + LOOKAHEAD_SCALE * reward, 0, 1) == pytest.approx(shown, abs=1e-5), action
        assert reward != 0
    assert not np.allclose(obs["box"][BOX_FEATURES:], 0.5)
    plain, _ = CropEnv({"grid": 10}, reward_fn=left_reward, photos=photos[:1]).reset(seed=0)
    assert plain["box"].shape == (BOX_FEATURES,)  # off by default


def test_a_lookahead_policy_starts_greedy_on_its_objective(photos):
    """CropPolicyModule with lookahead adds gain x each move's shown change to its logit: untrained,
    it takes the move that pays most while one pays clearly."""
    import gymnasium as gym
    import torch
    from ray.rllib.core.columns import Columns

    from rlhf.env import LOOKAHEAD, observation_space
    from rlhf.policy import CropPolicyModule

    env = CropEnv({"lookahead": True, "grid": 10}, reward_fn=left_reward, photos=photos[:1])
    module = CropPolicyModule(observation_space=observation_space(64, lookahead=True),
                              action_space=gym.spaces.Discrete(len(Action)), model_config={"lookahead": True})
    obs, _ = env.reset(seed=0, options={"photo_index": 0})
    moves = 0
    while obs["box"][-LOOKAHEAD:].max() > 0.55:
        batch = {Columns.OBS: {k: torch.from_numpy(np.asarray(v)[None]) for k, v in obs.items()}}
        with torch.no_grad():
            logits = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS][0]
        action = int(logits.argmax())
        assert action != Action.STOP and obs["box"][-LOOKAHEAD + action - 1] == obs["box"][-LOOKAHEAD:].max()
        obs, reward, *_ = env.step(action)
        assert reward > 0
        moves += 1
    assert moves >= 2 and env.box[0] == 0.0 and env.box[2] < 1.0  # shrunk towards the left border
    plain = CropPolicyModule(observation_space=observation_space(64), action_space=gym.spaces.Discrete(len(Action)),
                             model_config={})
    assert not hasattr(plain, "ahead_gain")
