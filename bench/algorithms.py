"""Which RL algorithm (--algo) to train stage 1 with: PPO, APPO and DQN side by side in one run.

For each algorithm, at the same env steps on the bundled training photos (stage 1's settings, the
default scorer, sampling in process):

  vs_random, vs_center  crop_quality's ratios (bench/crop_quality.py) on the held-out photos and framings
  wall_s                seconds to train the policy (Ray start-up excluded, first iteration's photo
                        features included: the contexts are warmed by the throughput runs first)
  steps_per_s_1/_2      env steps/s with 1 and 2 env runners (short runs; first iteration excluded)
  updates_per_s_1/_2    the learner's gradient updates/s in the same runs (PPO: minibatches x epochs;
                        APPO: one per train batch; DQN: one per replay batch)

`best` is the algorithm with the highest vs_center; one within 0.01 of it that trained in less wall
time wins (quality per wall-clock second). `appo_steps_vs_ppo` = APPO's env steps/s over PPO's with 2
env runners: what asynchronous sampling buys where a runner waits.

    python bench/algorithms.py                       # 20000 steps each (about an hour on 2 cores)
    python bench/algorithms.py --timesteps 2000 --throughput_steps 600   # a smoke run
    python bench/algorithms.py --out DIR             # continue a run: finished parts are kept

Writes DIR/algorithms.json (each part as it finishes), DIR/table.md and DIR/<algo>/ (the policies).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.crop_quality import held_out_photos, measure  # noqa: E402
from rayjobs.algorithms import ALGOS  # noqa: E402
from rlhf.images import HELDOUT_PHOTOS  # noqa: E402

RUNNERS = (1, 2)


def _settings(algo: str, timesteps: int, runners: int, seed: int):
    from rayjobs.bootstrap import stage1_ppo

    return dataclasses.replace(stage1_ppo(), algo=algo, timesteps=timesteps, num_env_runners=runners, seed=seed)


def _config(ppo, out: Path, photos: list[str] | None):
    """Stage 1's config with these settings, on the bundled photos `photos` (default: the training ones)."""
    from rayjobs.bootstrap import BootstrapConfig, stage1_env
    from rlhf.images import bundled_photos

    env = stage1_env()
    if photos:
        env = dataclasses.replace(env, images=[str(p) for p in bundled_photos(photos)])
    return BootstrapConfig(ppo=ppo, env=env, out=str(out))


def update_size(ppo) -> int:
    """Samples in one gradient update of ppo.algo (rayjobs/algorithms.py maps the settings)."""
    return ppo.train_batch_size if ppo.algo == "appo" else ppo.minibatch_size


def throughput(algo: str, runners: int, steps: int, seed: int, out: Path, photos: list[str] | None) -> dict[str, float]:
    """A short stage-1 run with `runners` env runners: env steps/s and learner updates/s after its first
    iteration (which computes the photos' features)."""
    from rayjobs.bootstrap import env_config, reward_spec
    from rayjobs.training import CheckpointSettings, train
    from rlhf.reward import AESTHETIC

    ppo = _settings(algo, steps, runners, seed)
    cfg = _config(ppo, out, photos)
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < runners and time.time() < deadline:
        time.sleep(0.5)  # the previous run's env runners are released lazily
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, float]] = []
    train(ppo, env_config(cfg, reward_spec(cfg.scoring, kind=AESTHETIC)), out,
          checkpoints=CheckpointSettings(checkpoint_every=10**6, keep_checkpoints=1), title=f"{algo} x{runners}",
          on_iteration=lambda row, _: rows.append(row))
    timed = rows[1:] or rows
    seconds = sum(r["seconds"] for r in timed)
    steps_done = (rows[-1]["timesteps"] - rows[0]["timesteps"]) if len(rows) > 1 else rows[0]["timesteps"]
    trained = sum(r.get("trained", 0.0) for r in timed)
    return {"steps_per_s": steps_done / seconds, "updates_per_s": trained / update_size(ppo) / seconds}


def quality(algo: str, timesteps: int, seed: int, variants: int, out: Path, photos: list[str] | None
            ) -> dict[str, float]:
    """Stage 1 with `algo` for `timesteps` env steps (env runners: the machine's default), then
    crop_quality's ratios of its policy on the held-out photos."""
    from rayjobs.bootstrap import run
    from rayjobs.training import default_env_runners
    from rlhf.policy import CropPolicy

    t = time.time()
    run(_config(_settings(algo, timesteps, default_env_runners(), seed), out, photos))
    wall = time.time() - t
    rng = np.random.default_rng(seed)
    pol, rand, cent, _, sec = measure(CropPolicy.load(out), held_out_photos(HELDOUT_PHOTOS, variants, rng), rng)
    return {"wall_s": wall, "vs_random": float(np.mean(pol) / np.mean(rand)),
            "vs_center": float(np.mean(pol) / np.mean(cent)), "ms_per_photo": sec * 1000}


def best(results: dict[str, dict[str, float]]) -> str:
    """The highest vs_center; within 0.01 of it, the shortest wall time."""
    top = max(r["vs_center"] for r in results.values())
    near = [a for a, r in results.items() if r["vs_center"] >= top - 0.01]
    return min(near, key=lambda a: results[a]["wall_s"])


def table(results: dict[str, dict[str, float]], timesteps: int) -> str:
    cols = ["vs_random", "vs_center", "wall_s", *(f"{k}_{n}" for n in RUNNERS
                                                 for k in ("steps_per_s", "updates_per_s"))]
    lines = [f"{timesteps} env steps each on the bundled training photos; quality on the held-out photos", "",
             "| algo | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for algo, r in results.items():
        lines.append(f"| {algo} | " + " | ".join(f"{r.get(c, float('nan')):.3f}" if c.startswith("vs_")
                                                  else f"{r.get(c, float('nan')):.1f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS), help="algorithms (default: all)")
    ap.add_argument("--timesteps", type=int, default=20000, help="env steps each algorithm trains for; default 20000")
    ap.add_argument("--throughput_steps", type=int, default=3000,
                    help="env steps of each 1- and 2-runner throughput run; default 3000")
    ap.add_argument("--variants", type=int, default=4, help="framings per held-out photo; default 4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train_photos", nargs="+", help="bundled photos to train on (default: the training ones)")
    ap.add_argument("--out", help="run folder (default results/bench-algorithms-<time>); an existing one is continued")
    args = ap.parse_args()
    # Ray counts a CPU per env runner: on a 2-core machine it would refuse the 2-runner runs (the learner
    # trains in this process, outside its count).
    ray.init(num_cpus=max(os.cpu_count() or 1, max(RUNNERS) + 1), include_dashboard=False)
    out = Path(args.out or f"results/bench-algorithms-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    store = out / "algorithms.json"
    results: dict[str, dict[str, float]] = json.loads(store.read_text()) if store.is_file() else {}

    def save() -> None:
        store.write_text(json.dumps(results, indent=1) + "\n")

    # Throughput first: its runs also compute the photos' features once, so no algorithm's wall time
    # pays for them.
    for n in RUNNERS:
        for algo in args.algos:
            r = results.setdefault(algo, {})
            if f"steps_per_s_{n}" not in r:
                m = throughput(algo, n, args.throughput_steps, args.seed, out / f"throughput-{algo}-{n}",
                               args.train_photos)
                r.update({f"{k}_{n}": v for k, v in m.items()})
                save()
            print(f"{algo} with {n} env runner(s): {r[f'steps_per_s_{n}']:.1f} env steps/s, "
                  f"{r[f'updates_per_s_{n}']:.2f} updates/s", flush=True)
    for algo in args.algos:
        r = results[algo]
        if "vs_center" not in r:
            r.update(quality(algo, args.timesteps, args.seed, args.variants, out / algo, args.train_photos))
            save()
        print(f"{algo}: vs_random {r['vs_random']:.3f}  vs_center {r['vs_center']:.3f}  wall {r['wall_s']:.0f}s",
              flush=True)
    text = table({a: results[a] for a in args.algos}, args.timesteps)
    (out / "table.md").write_text(text)
    print("\n" + text)
    ratio = (results.get("appo", {}).get("steps_per_s_2", float("nan"))
             / results.get("ppo", {}).get("steps_per_s_2", float("nan")))
    print(f"algorithms: best={best({a: results[a] for a in args.algos})} "
          + " ".join(f"{a}_vs_center={results.get(a, {}).get('vs_center', float('nan')):.3f}" for a in ALGOS)
          + f" appo_steps_vs_ppo={ratio:.2f}")


if __name__ == "__main__":
    main()
