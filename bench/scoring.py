"""Is the scoring actor fast? Every ratio below is measured side by side in one run.

1. bare vs actor: boxes/s of the scorer called in process (`score_boxes`, the limit) and of the same
   scorer behind the actor (one request of B boxes, all caches off), at B = 1, 16, 64; calls alternate
   bare / actor on the same boxes and each rate is B / the median call time.
   Target: actor / bare >= 0.8 at B = 64.
2. k = 1, 2, 4, 8 concurrent clients (processes, each with its own ServiceReward, like env runners)
   sending one box per request, for a fixed time: the actor batching (max_batch_size 64, 5 ms wait)
   vs not (max 1).
   Target: batched / unbatched >= 4 at k = 8.
3. (crop-based scorer only) what travels: box + photo ref vs crops resized on the client.
4. stage-1 env steps/s: 1, 2, 4 env-runner actors, each a CropEnv with the stage-1 settings (the training
   photos, 4 sub-photo variants each, the default grid) taking random actions, scored through the actor, with
   the (photo, box) caches on (client + actor) and off.

Scorers: "default" (the stage-1 proxy: per-photo network pass + per-box BRISQUE/saliency terms) and,
unless --no-nima, NIMA on EfficientNet-Lite0 at 224 px. No NIMA weights ship offline, so NIMA runs here
with the real ImageNet backbone and an UNTRAINED head: its scores are meaningless, its speed is real
(throughput only). Both the bare scorer and the actor use one torch thread (the actor's one CPU).

    python bench/scoring.py            # about 4-5 minutes on 2 cores
    python bench/scoring.py --quick    # fewer repetitions, no NIMA

The last line is `scoring: key=value ...`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
import torch  # noqa: E402

from rlhf.images import TRAIN_PHOTOS, Photo, bundled_photos, load_collection  # noqa: E402
from rlhf.reward import RewardSpec  # noqa: E402
from rlhf.serving import ServiceReward, ensure_service  # noqa: E402

BATCHES = (1, 16, 64)
CLIENTS = (1, 2, 4, 8)
RUNNERS = (1, 2, 4)


def random_boxes(photo: Photo, n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """n random boxes of 40-100% of each side (the range the env's crops span)."""
    out = []
    for _ in range(n):
        w = int(photo.width * rng.uniform(0.4, 1.0))
        h = int(photo.height * rng.uniform(0.4, 1.0))
        l = int(rng.integers(0, photo.width - w + 1))
        t = int(rng.integers(0, photo.height - h + 1))
        out.append((l, t, l + w, t + h))
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ----------------------------------------------------------------------------------------------------
# 1. bare vs actor
# ----------------------------------------------------------------------------------------------------
def bare_vs_actor(scorer, client: ServiceReward, photos: list[Photo], pairs: int, seed: int,
                  max_boxes: int | None = None) -> dict[int, dict[str, float]]:
    """{B: boxes/s bare and through the actor}, from the median time of `pairs` calls each.

    Calls alternate bare / actor on the same boxes, so both see the same load on a shared machine.
    Also by CPU time (bare: this process; actor: this process + the actor's), which other
    processes' load does not change: the rate an idle machine of this size would reach.
    """
    actor = ray.get_actor(client.spec.service)
    rng = np.random.default_rng(seed)
    out = {}
    for b in BATCHES:
        bare, act, bare_cpu, act_cpu = [], [], 0.0, 0.0
        n_pairs = pairs if max_boxes is None else max(2, min(pairs, max_boxes // b))
        for _ in range(n_pairs):
            p = photos[int(rng.integers(len(photos)))]
            boxes = random_boxes(p, b, rng)
            c0, t0 = time.process_time(), time.perf_counter()
            scorer.score_boxes(p, boxes)
            c1, t1 = time.process_time(), time.perf_counter()
            a0 = ray.get(actor.cpu_seconds.remote())
            c2, t2 = time.process_time(), time.perf_counter()
            client.terms(p, boxes)
            c3, t3 = time.process_time(), time.perf_counter()
            a1 = ray.get(actor.cpu_seconds.remote())
            bare.append(t1 - t0)
            act.append(t3 - t2)
            bare_cpu += c1 - c0
            act_cpu += (c3 - c2) + (a1 - a0)
        out[b] = {"bare": b / median(bare), "actor": b / median(act),
                  "bare_cpu": b * n_pairs / bare_cpu, "actor_cpu": b * n_pairs / act_cpu}
    return out


@ray.remote(num_cpus=0)  # 8 clients on 2 cores: oversubscribed on purpose, as 8 env runners would be
class Client:
    """A separate process sending single-box requests back to back, as an env runner does."""

    def __init__(self, spec: dict, photo_paths: list[str], transport: str, seed: int):
        self.client = ServiceReward(RewardSpec(**spec), cache_size=0, transport=transport)
        self.photos = load_collection(photo_paths)
        self.rng = np.random.default_rng(seed)
        for p in self.photos:  # photos into the object store and the actor before any clock
            self.client.terms(p, [p.full_box])

    def run(self, seconds: float) -> tuple[int, float]:
        """(requests sent, CPU seconds this process used) in `seconds`."""
        n = 0
        c0 = time.process_time()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            p = self.photos[int(self.rng.integers(len(self.photos)))]
            self.client.terms(p, random_boxes(p, 1, self.rng))
            n += 1
        return n, time.process_time() - c0


def clients_throughput(clients: list, seconds: float, actor=None) -> tuple[float, float]:
    """(requests/s, requests per CPU-second of clients + actor) of these clients running at once."""
    a0 = ray.get(actor.cpu_seconds.remote()) if actor is not None else 0.0
    t0 = time.perf_counter()
    res = ray.get([c.run.remote(seconds) for c in clients])
    dt = time.perf_counter() - t0
    a1 = ray.get(actor.cpu_seconds.remote()) if actor is not None else 0.0
    n = sum(r[0] for r in res)
    return n / dt, n / (sum(r[1] for r in res) + a1 - a0)


def make_clients(spec: RewardSpec, k: int, seed: int, transport: str = "ref") -> list:
    paths = [str(p) for p in bundled_photos(TRAIN_PHOTOS)]
    clients = [Client.remote(spec.to_dict(), paths, transport, seed + i) for i in range(k)]
    ray.get([c.run.remote(0.05) for c in clients])  # started and warm
    return clients


def batched_vs_unbatched(spec: RewardSpec, seconds: float, seed: int) -> dict[int, dict[str, float]]:
    """{k: req/s and req per CPU-second, unbatched and batched, and the mean batch size}."""
    actor = ray.get_actor(spec.service)
    clients = make_clients(spec, max(CLIENTS), seed)
    out = {}
    for k in CLIENTS:
        ray.get(actor.configure.remote(max_batch_size=1))
        unbatched, unbatched_cpu = clients_throughput(clients[:k], seconds, actor)
        ray.get(actor.configure.remote(max_batch_size=64))
        ray.get(actor.reset_stats.remote())
        batched, batched_cpu = clients_throughput(clients[:k], seconds, actor)
        stats = ray.get(actor.stats.remote())
        out[k] = {"unbatched": unbatched, "batched": batched, "unbatched_cpu": unbatched_cpu,
                  "batched_cpu": batched_cpu, "mean_batch": stats["mean_batch"]}
    for c in clients:
        ray.kill(c)
    return out


# ----------------------------------------------------------------------------------------------------
# 4. env steps/s through the actor
# ----------------------------------------------------------------------------------------------------
@ray.remote(num_cpus=0)  # 4 runners on 2 cores: oversubscribed on purpose, as num_env_runners=4 would be
class EnvProbe:
    """An env runner stand-in: a CropEnv scored through the actor, stepping with random actions."""

    def __init__(self, env_config: dict, spec: dict, client_cache: int, seed: int):
        torch.set_num_threads(1)
        from rlhf.env import CropEnv

        self.reward = ServiceReward(RewardSpec(**spec), cache_size=client_cache)
        self.env = CropEnv(env_config, reward_fn=self.reward)
        self.rng = np.random.default_rng(seed)
        self.env.reset(seed=seed)

    def run(self, seconds: float) -> dict:
        steps = episodes = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            _, _, term, trunc, _ = self.env.step(int(self.rng.integers(self.env.action_space.n)))
            steps += 1
            if term or trunc:
                episodes += 1
                self.env.reset()
        return {"steps": steps, "episodes": episodes, **self.reward.stats()}


def env_steps(spec: RewardSpec, env_config: dict, runners: int, cache: bool, seconds: float, seed: int) -> dict:
    actor = ray.get_actor(spec.service)
    ray.get(actor.configure.remote(max_batch_size=64, cache_size=100_000 if cache else 0))
    ray.get(actor.clear_cache.remote())
    ray.get(actor.reset_stats.remote())
    probes = [EnvProbe.remote(env_config, spec.to_dict(), 20_000 if cache else 0, seed + i) for i in range(runners)]
    ray.get([p.run.remote(0.2) for p in probes])  # started and warm
    t0 = time.perf_counter()
    results = ray.get([p.run.remote(seconds) for p in probes])
    dt = time.perf_counter() - t0
    stats = ray.get(actor.stats.remote())
    for p in probes:
        ray.kill(p)
    hits = sum(r["cache_hits"] for r in results)
    asked = hits + sum(r["cache_misses"] for r in results)
    return {"steps_per_s": sum(r["steps"] for r in results) / dt,
            "client_hit_rate": hits / asked if asked else 0.0,
            "actor_hit_rate": stats["cache_hits"] / max(1, stats["cache_hits"] + stats["cache_misses"]),
            "mean_batch": stats["mean_batch"]}


# ----------------------------------------------------------------------------------------------------
def section_scorer(label: str, spec: RewardSpec, scorer, photos: list[Photo], args, results: dict,
                   max_boxes: int | None = None) -> None:
    client = ServiceReward(spec, cache_size=0)
    for p in photos:  # warm both: photo contexts, first calls, photos into the object store
        scorer.score_boxes(p, [p.full_box])
        client.terms(p, [p.full_box])
    print(f"\n[{label}] 1. bare scorer vs actor, boxes/s (one request of B boxes; caches off)")
    print(f"  {'B':>3} {'bare':>9} {'actor':>9} {'actor/bare':>11} | by CPU time: {'bare':>9} {'actor':>9} "
          f"{'actor/bare':>11}")
    ba = bare_vs_actor(scorer, client, photos, args.pairs, args.seed, max_boxes)
    for b, r in ba.items():
        print(f"  {b:>3} {r['bare']:9.1f} {r['actor']:9.1f} {r['actor'] / r['bare']:11.2f} |"
              f"              {r['bare_cpu']:9.1f} {r['actor_cpu']:9.1f} {r['actor_cpu'] / r['bare_cpu']:11.2f}")
    results[label]["actor_vs_bare_b64"] = ba[64]["actor"] / ba[64]["bare"]
    results[label]["actor_vs_bare_b64_cpu"] = ba[64]["actor_cpu"] / ba[64]["bare_cpu"]
    print(f"\n[{label}] 2. k client processes sending single boxes, requests/s ({args.seconds:.0f} s each)")
    print(f"  {'k':>3} {'unbatched':>10} {'batched':>9} {'ratio':>6} {'mean batch':>11} | per CPU-second: "
          f"{'unbatched':>10} {'batched':>9} {'ratio':>6}")
    bu = batched_vs_unbatched(spec, args.seconds, args.seed)
    for k, r in bu.items():
        print(f"  {k:>3} {r['unbatched']:10.1f} {r['batched']:9.1f} {r['batched'] / r['unbatched']:6.2f} "
              f"{r['mean_batch']:11.1f} |                 {r['unbatched_cpu']:10.1f} {r['batched_cpu']:9.1f} "
              f"{r['batched_cpu'] / r['unbatched_cpu']:6.2f}")
    results[label]["batched_vs_unbatched_k8"] = bu[8]["batched"] / bu[8]["unbatched"]
    results[label]["batched_vs_unbatched_k8_cpu"] = bu[8]["batched_cpu"] / bu[8]["unbatched_cpu"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and shorter runs, no NIMA")
    ap.add_argument("--no-nima", dest="nima", action="store_false", help="skip the NIMA (crop-based) scorer")
    ap.add_argument("--pairs", type=int, default=40, help="bare/actor call pairs per batch size")
    ap.add_argument("--seconds", type=float, default=2.5, help="duration of each client measurement "
                    "(env measurements run twice as long)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.seconds, args.nima = 15, 1.5, False
    t_start = time.time()
    torch.set_num_threads(1)  # the same as the actor (1 CPU): ratios compare like with like
    import cv2

    cv2.setNumThreads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from rlhf.scorers import create_scorer

    photos = load_collection(bundled_photos(TRAIN_PHOTOS))
    results: dict[str, dict[str, float]] = {"default": {}, "nima": {}}
    print(f"scoring benchmark: {os.cpu_count()} CPUs, torch {torch.__version__}, cuda "
          f"{torch.cuda.is_available()}, ray {ray.__version__}; bare and actor use 1 torch thread")

    # The stage-1 scorer, its own box cache off so every box is computed (the actor's cache is
    # switched per measurement instead).
    spec = RewardSpec()
    spec.service = ensure_service(spec, name="bench-scoring-default", cache_size=0, num_cpus=1,
                                  scorer_kwargs={"box_cache_size": 0})
    device = "cuda" if torch.cuda.is_available() else "cpu"  # bare runs where the actor's models run
    bare = create_scorer("default", box_cache_size=0, device=device)
    section_scorer("default", spec, bare, photos, args, results)
    del bare

    if args.nima:
        from rlhf.scorers import NimaModel, save_nima_checkpoint

        ckpt = Path(tempfile.mkdtemp()) / "nima_lite0_untrained_head_THROUGHPUT_ONLY.pth"
        save_nima_checkpoint(ckpt, NimaModel("efficientnet_lite0", 0.0, "rlhf"), 224)
        nspec = RewardSpec(scorer="nima", scorer_weights=str(ckpt))
        nspec.service = ensure_service(nspec, name="bench-scoring-nima", cache_size=0, num_cpus=0)
        nbare = create_scorer("nima", weights=str(ckpt), device=device)
        # ~15 crops/s on one CPU thread: 128 crops per batch size and side keep this part to a minute.
        section_scorer("nima", nspec, nbare, photos, args, results, max_boxes=128)
        print("\n[nima] 3. what travels: box + photo ref vs crops resized by the client, requests/s")
        print(f"  {'k':>3} {'ref':>8} {'crops':>8} {'crops/ref':>10}")
        for k in (1, 4):
            by = {}
            for transport in ("ref", "crops"):
                clients = make_clients(nspec, k, args.seed, transport)
                by[transport] = clients_throughput(clients, args.seconds)[0]
                for c in clients:
                    ray.kill(c)
            print(f"  {k:>3} {by['ref']:8.1f} {by['crops']:8.1f} {by['crops'] / by['ref']:10.2f}")
            results["nima"][f"crops_vs_ref_k{k}"] = by["crops"] / by["ref"]
        ray.kill(ray.get_actor(nspec.service))
        del nbare

    from rayjobs.bootstrap import BootstrapConfig, env_config
    from rlhf.config import from_flat

    cfg = from_flat(BootstrapConfig, num_env_runners=1)
    env = env_config(cfg, spec)
    print(f"\n[default] 4. stage-1 env steps/s (random actions; {len(env['images'])} photos x "
          f"{1 + cfg.env.augment_variants} framings, grid {cfg.env.grid})")
    from rlhf.env import CropEnv

    warm = ServiceReward(spec, cache_size=0)
    for p in CropEnv(env, reward_fn=warm).photos:  # each framing's photo context, before any clock
        warm.terms(p, [p.full_box])
    print(f"  {'runners':>7} {'cache on':>9} {'cache off':>10} {'on/off':>7} {'client hits':>12} "
          f"{'actor hits':>11} {'mean batch (off)':>17}")
    for n in RUNNERS:
        on = env_steps(spec, env, n, True, args.seconds * 2, args.seed)
        off = env_steps(spec, env, n, False, args.seconds * 2, args.seed)
        print(f"  {n:>7} {on['steps_per_s']:9.1f} {off['steps_per_s']:10.1f} "
              f"{on['steps_per_s'] / off['steps_per_s']:7.2f} {on['client_hit_rate']:12.0%} "
              f"{on['actor_hit_rate']:11.0%} {off['mean_batch']:17.1f}")
        results["default"][f"env_steps_per_s_{n}"] = on["steps_per_s"]
        results["default"][f"env_steps_per_s_{n}_nocache"] = off["steps_per_s"]
        results["default"][f"cache_speedup_{n}"] = on["steps_per_s"] / off["steps_per_s"]
    ray.shutdown()

    d, nm = results["default"], results["nima"]
    print(f"\n({time.time() - t_start:.0f} s in all)")
    line = (f"scoring: actor_vs_bare_b64={d['actor_vs_bare_b64']:.2f} "
            f"batched_vs_unbatched_k8={d['batched_vs_unbatched_k8']:.2f} "
            + (f"nima_actor_vs_bare_b64={nm['actor_vs_bare_b64']:.2f} "
               f"nima_batched_vs_unbatched_k8={nm['batched_vs_unbatched_k8']:.2f} "
               f"nima_crops_vs_ref_k4={nm['crops_vs_ref_k4']:.2f} " if nm else "")
            + f"cache_speedup={d['cache_speedup_1']:.2f} "
            f"env_steps_per_s_1={d['env_steps_per_s_1']:.1f} env_steps_per_s_2={d['env_steps_per_s_2']:.1f} "
            f"env_steps_per_s_4={d['env_steps_per_s_4']:.1f}")
    print(line)
    return results


if __name__ == "__main__":
    main()
