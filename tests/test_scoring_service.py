"""The scoring actor: same numbers as in-process scoring, batching, caches, bad input, and faults.

Everything here is real: a local Ray, the default (proxy) aesthetic scorer with the shipped
EfficientNet-Lite0 weights, a human reward model trained on a few synthetic preferences, and a
short real PPO run whose scoring actor is killed in the middle.
"""

import threading
import time

import numpy as np
import pytest
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rlhf.images import bundled_photos, clip_box, load_collection
from rlhf.reward import LocalReward, RewardSpec, build_reward
from rlhf.serving import (
    ScoringServiceError,
    ServiceReward,
    clip_boxes,
    ensure_service,
    service_name,
)

TOL = 1e-6  # the actor scores with one torch thread; float32 sums may differ in the last bits


@pytest.fixture(scope="module")
def photos():
    return load_collection(bundled_photos(["chelsea", "coffee"]))


def grid_boxes(photo, n, seed=0):
    """n distinct boxes of 40-100% of each side."""
    rng = np.random.default_rng(seed)
    out = set()
    while len(out) < n:
        w = int(photo.width * rng.uniform(0.4, 1.0))
        h = int(photo.height * rng.uniform(0.4, 1.0))
        l = int(rng.integers(0, photo.width - w + 1))
        t = int(rng.integers(0, photo.height - h + 1))
        out.add((l, t, l + w, t + h))
    return sorted(out)


@pytest.fixture(scope="module")
def local():
    return LocalReward(RewardSpec())


@pytest.fixture(scope="module")
def service(ray_local):
    """The stage-1 service under its default name (the PPO test below finds the same actor)."""
    name = ensure_service(RewardSpec(), cache_size=64)
    assert name == service_name(RewardSpec())
    yield name
    ray.kill(ray.get_actor(name), no_restart=True)


def wait_for_stats(name, ok, timeout=10.0):
    """The actor's stats once ok(stats) holds (or the last ones after timeout)."""
    deadline = time.time() + timeout
    while True:
        stats = ray.get(ray.get_actor(name).stats.remote())
        if ok(stats) or time.time() > deadline:
            return stats
        time.sleep(0.1)


def spec_for(name, **kw):
    return RewardSpec(service=name, **kw)


def test_clip_boxes_is_clip_box_for_many():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(-50, 700, size=(500, 4))
    boxes[:50] = np.round(boxes[:50]) + 0.5  # halves round to even in both
    want = np.array([clip_box(b, 640, 427) for b in boxes])
    assert np.array_equal(clip_boxes(boxes, 640, 427), want)
    with pytest.raises(ValueError, match="photo 'x'"):
        clip_boxes([(0, 0, np.nan, 5)], 10, 10, "photo 'x'")


def test_service_equals_local_batched_and_unbatched(service, photos, local):
    reward = build_reward(spec_for(service).to_dict())
    assert isinstance(reward, ServiceReward)
    for p in photos:
        boxes = [p.full_box] + grid_boxes(p, 5)
        expected = local(p, boxes)
        assert np.allclose(reward(p, boxes), expected, atol=TOL)              # one call, 6 boxes
        fresh = ServiceReward(spec_for(service), cache_size=0)
        assert np.allclose([fresh(p, [b])[0] for b in boxes], expected, atol=TOL)  # 6 calls
        assert set(fresh.terms(p, boxes)) == {"aesthetic"}


def test_concurrent_single_requests_are_batched(service, photos, local):
    actor = ray.get_actor(service)
    ray.get(actor.reset_stats.remote())
    p = photos[0]
    ref = [ray.put(p.pixels)]
    boxes = grid_boxes(p, 12, seed=1)
    # 12 requests in flight at once, one box each: the actor scores them in few batches.
    got = ray.get([actor.aesthetic.remote(p.id, ref, [b]) for b in boxes])
    stats = ray.get(actor.stats.remote())
    assert stats["requests"] == 12
    assert stats["batches"] < 12 and stats["largest_batch"] > 1, stats
    expected_scores = local.scorer.score_boxes(p, boxes)
    assert np.allclose(np.concatenate(got), expected_scores, atol=1e-5)


def test_a_lone_client_is_not_kept_waiting_for_a_batch(service, photos):
    """Requests name their client: with one client sending, the batch window is skipped."""
    actor = ray.get_actor(service)
    ray.get(actor.configure.remote(batch_wait_s=0.5))
    try:
        client = ServiceReward(spec_for(service), cache_size=0)
        p = photos[0]
        boxes = grid_boxes(p, 6, seed=7)
        client(p, boxes[:1])
        t0 = time.time()
        for b in boxes[1:]:
            client(p, [b])
        assert time.time() - t0 < 2.0, "5 requests must not wait 0.5 s each for company"
    finally:
        ray.get(actor.configure.remote(batch_wait_s=0.005))


def test_crops_are_refused_by_a_photo_aware_scorer(service, photos):
    with pytest.raises(ValueError, match="needs whole photos"):
        ray.get(ray.get_actor(service).aesthetic_crops.remote(np.zeros((1, 224, 224, 3), np.uint8)))
    with pytest.raises(ValueError, match="aesthetic reward only"):
        ServiceReward(RewardSpec(kind="human", human_reward_model="x.pth", service=service), transport="crops")


def test_caches_hit_on_revisits_and_stay_bounded(service, photos):
    actor = ray.get_actor(service)
    p = photos[1]
    boxes = grid_boxes(p, 4, seed=2)
    a = ServiceReward(spec_for(service))
    first = a(p, boxes)
    assert np.array_equal(a(p, boxes), first)
    assert a.cache.hits == 4 and a.calls == 1  # the revisit never left the env runner
    ray.get(actor.reset_stats.remote())
    b = ServiceReward(spec_for(service), cache_size=0)  # another runner asks the same boxes
    assert np.array_equal(b(p, boxes), first)
    stats = ray.get(actor.stats.remote())
    assert stats["cache_hits"] == 4 and stats["batches"] == 0, stats
    # The fixture's actor keeps 64 entries: more distinct boxes than that must evict.
    b(p, grid_boxes(p, 80, seed=3))
    stats = ray.get(actor.stats.remote())
    assert stats["cache_entries"] == 64, stats
    assert stats["photos"] >= 1 and stats["photo_fetches"] <= 2, stats  # pixels fetched once per photo


def test_bad_input_is_refused_clearly(service, photos, tmp_path):
    p = photos[0]
    with pytest.raises(ValueError, match="spec.service"):
        ServiceReward(RewardSpec())
    with pytest.raises(ValueError, match="boxes must be"):
        ray.get(ray.get_actor(service).aesthetic.remote(p.id, [ray.put(p.pixels)], [(1, 2, 3)]))
    with pytest.raises(ValueError, match="not 'human'"):
        ray.get(ray.get_actor(service).human.remote(p.id, [ray.put(p.pixels)], [p.full_box]))
    missing = tmp_path / "nope.pth"
    with pytest.raises(ScoringServiceError, match="nope.pth"):
        ensure_service(RewardSpec(kind="combined", human_reward_model=str(missing)))
    # No actor of that name: the client gives up at its deadline with an error, never a reward.
    ghost = ServiceReward(spec_for("photographer-scoring-nobody"), deadline_s=1.0)
    t0 = time.time()
    with pytest.raises(ScoringServiceError, match="unreachable"):
        ghost(p, [p.full_box])
    assert ghost.retries >= 2 and time.time() - t0 < 10


def test_client_retries_until_the_actor_is_back(service, photos, local):
    p = photos[0]
    boxes = grid_boxes(p, 3, seed=4)
    expected = local(p, boxes)
    client = ServiceReward(spec_for(service), cache_size=0)
    assert np.allclose(client(p, boxes[:1]), expected[:1], atol=TOL)
    pid0 = ray.get(ray.get_actor(service).ping.remote())

    # Killed for good, then started again a little later (as a new job step would): the client waits.
    victim = ray.get_actor(service)
    ray.kill(victim, no_restart=True)
    # ray.kill only asks: a call sent before the actor is gone can still be answered by it, and the
    # client would then rightly never retry. Wait until it is dead, as an outside kill would be.
    for _ in range(200):
        try:
            ray.get(victim.ping.remote(), timeout=5)
        except RayActorError:
            break
        except GetTimeoutError:
            continue
        time.sleep(0.05)
    else:
        pytest.fail("ray.kill did not stop the service")
    restarter = threading.Timer(1.0, lambda: ensure_service(RewardSpec(), cache_size=64))
    restarter.start()
    got = client(p, boxes[:2])
    restarter.join()
    assert client.retries > 0, "the client must have retried while no actor was there"
    assert np.allclose(got, expected[:2], atol=TOL)

    stats = wait_for_stats(service, lambda st: st["client_recoveries"] >= 1)  # reported fire-and-forget
    assert stats["pid"] != pid0 and stats["client_recoveries"] == 1 and stats["client_retries"] == client.retries


@pytest.fixture(scope="module")
def human_model(tmp_path_factory, photos):
    """A real human reward model trained on a few synthetic preferences (centre crops over corners)."""
    from rlhf.preference import PreferenceExample, RewardTrainConfig, train_reward_model

    examples = []
    for p in photos:
        w, h = p.width, p.height
        centre = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        for i, corner in enumerate([(0, 0, w // 2, h // 2), (w // 2, h // 2, w, h), (0, h // 2, w // 2, h)]):
            examples.append(PreferenceExample(f"{p.id}-{i}", p, centre, corner, 1.0))
    cfg = RewardTrainConfig(epochs=5, embed_dim=2, val_fraction=0.0, patience=0)
    model, _ = train_reward_model(examples, cfg, log=None)
    return str(model.save(tmp_path_factory.mktemp("human") / "human_reward_model.pth"))


def test_combined_reward_costs_one_round_trip(ray_local, photos, human_model):
    spec = RewardSpec(kind="combined", human_reward_model=human_model, w_nima=0.6, w_human=0.4)
    name = ensure_service(spec, num_cpus=0)
    assert name != service_name(RewardSpec())  # stage 3's actor does not collide with stage 1's
    try:
        spec.service = name
        client = ServiceReward(spec)
        local = LocalReward(RewardSpec(kind="combined", human_reward_model=human_model, w_nima=0.6, w_human=0.4))
        p = photos[1]
        boxes = [p.full_box] + grid_boxes(p, 3, seed=5)
        terms = client.terms(p, boxes)
        assert client.calls == 1 and set(terms) == {"aesthetic", "human"}
        want = local.terms(p, boxes)
        assert np.allclose(terms["aesthetic"], want["aesthetic"], atol=TOL)
        assert np.allclose(terms["human"], want["human"], atol=TOL)
        assert np.allclose(client(p, boxes), local(p, boxes), atol=TOL)
        # Other weights, same actor: the client combines with its own spec.
        spec2 = RewardSpec(kind="combined", human_reward_model=human_model, w_nima=0.2, w_human=0.8, service=name)
        assert np.allclose(ServiceReward(spec2)(p, boxes),
                           0.2 * (want["aesthetic"] - 1) / 9 + 0.8 * want["human"], atol=TOL)
    finally:
        ray.kill(ray.get_actor(name), no_restart=True)


def test_stage1_ppo_survives_killing_the_scoring_actor(service, photos, local, tmp_path):
    """A short real PPO run (stage 1 with --service: through the actor); the actor is killed mid-run."""
    from rayjobs import bootstrap
    from rayjobs.training import train
    from rlhf.config import from_flat

    cfg = from_flat(bootstrap.BootstrapConfig,
        image=[p.id for p in photos], augment_variants=0, timesteps=384, train_batch_size=128,
        minibatch_size=64, num_epochs=1, num_env_runners=1, checkpoint_every=100, sample_timeout_s=90,
        service=True, out=str(tmp_path))
    spec = bootstrap.reward_spec(cfg.scoring, kind="aesthetic")
    assert spec.service == service  # --service: stage 1 scores through the shared actor
    env = bootstrap.env_config(cfg, spec)
    actor = ray.get_actor(service)
    pid_before = ray.get(actor.ping.remote())
    ray.get(actor.reset_stats.remote())
    killed = {}

    def kill_mid_run():
        while time.time() - t0 < 120:
            if ray.get(actor.stats.remote())["requests"] >= 40:  # the env runner is busy sampling
                ray.kill(actor, no_restart=False)
                killed["at"] = time.time()
                return
            time.sleep(0.1)

    t0 = time.time()
    killer = threading.Thread(target=kill_mid_run, daemon=True)
    killer.start()
    train(cfg.ppo, env, tmp_path, checkpoints=cfg.checkpoints)
    done = time.time()
    killer.join()
    assert "at" in killed and killed["at"] < done, "the actor was not killed during the run"
    stats = wait_for_stats(service, lambda st: st["client_recoveries"] >= 1)
    assert stats["pid"] != pid_before and stats["restarted"]
    # The env runner's calls failed while the actor restarted; it retried and got through to the
    # restarted actor, which reports the recovery. (ServiceReward has no path that pays a reward
    # not computed by the models: it returns the actor's answer or raises.)
    assert stats["client_recoveries"] >= 1 and stats["client_retries"] >= 1, stats
    assert stats["requests"] > 0, "after the restart the env runner must have been scored by the new actor"
    rows = (tmp_path / "progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert int(last["iteration"]) == 3 and int(last["timesteps"]) >= 384
    for row in rows[1:]:
        r = dict(zip(header, row.split(","), strict=True))
        assert 0.3 < float(r["start_score_mean"]) < 1 and 0.3 < float(r["final_score_mean"]) < 1, r
