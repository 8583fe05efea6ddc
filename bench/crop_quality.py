"""How much better than chance are the policy's crops?

On held-out bundled photos (never seen in training) plus fixed sub-photo/mirror framings of them,
with the default scorer:

  vs_random  = mean score(policy crop) / mean score(random crop)
               random crop: uniform random size (area >= the env's min_area) and position, 16 per photo
  vs_center  = mean score(policy crop) / mean score(centre crop of the same area and aspect)
  vs_random_same_area = ... / random position with the policy crop's size (reported, no target)
  ms_per_photo = the policy's time per photo (greedy rollout, after warm-up), scoring excluded

Targets: vs_random > 1.10, vs_center > 1.0.

    python bench/crop_quality.py [--policy RUN_DIR]   # without --policy, trains stage 1 (100k steps) first

Held-out photos: rlhf.images.HELDOUT_PHOTOS, each with 4 fixed framings (9 x 5 = 45 photos). The figures of
coffee, flower and grace_hopper alone are printed too (the held-out set of the early runs in docs/experiments.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayjobs.crop import crop_photos  # noqa: E402
from rlhf.images import (  # noqa: E402
    HELDOUT_PHOTOS,
    Photo,
    augmented_variants,
    bundled_photos,
    clip_box,
    load_collection,
)
from rlhf.policy import CropPolicy  # noqa: E402
from rlhf.scorers import create_scorer  # noqa: E402


def random_boxes(photo: Photo, n: int, min_area: float, rng: np.random.Generator) -> list:
    boxes = []
    while len(boxes) < n:
        fw, fh = rng.uniform(np.sqrt(min_area) * 0.6, 1.0, size=2)
        if fw * fh < min_area or max(fw / fh, fh / fw) > 3:
            continue
        x0, y0 = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
        boxes.append(clip_box((x0 * photo.width, y0 * photo.height, (x0 + fw) * photo.width,
                               (y0 + fh) * photo.height), photo.width, photo.height))
    return boxes


def same_size_boxes(photo: Photo, box, n: int, rng: np.random.Generator, centre: bool = False) -> list:
    w, h = box[2] - box[0], box[3] - box[1]
    if centre:
        x0, y0 = (photo.width - w) // 2, (photo.height - h) // 2
        return [(x0, y0, x0 + w, y0 + h)]
    xs = rng.integers(0, photo.width - w + 1, size=n)
    ys = rng.integers(0, photo.height - h + 1, size=n)
    return [(int(x), int(y), int(x) + w, int(y) + h) for x, y in zip(xs, ys, strict=True)]


def held_out_photos(names: list[str], variants: int, rng: np.random.Generator) -> list[Photo]:
    """The bundled photos `names`, then `variants` fixed sub-photo/mirror framings of each."""
    photos = load_collection(bundled_photos(names))
    return photos + [v for p in photos for v in augmented_variants(p, variants, rng)]


def measure(policy: CropPolicy, photos: list[Photo], rng: np.random.Generator,
            verbose: bool = False) -> tuple[list[float], list[float], list[float], list[float], float]:
    """Per photo, the default scorer's score of the policy's crop, of random crops (mean of 16), of the
    centred crop of the same size and of random positions at that size (mean of 16); and the policy's
    seconds per photo."""
    boxes, sec = crop_photos(policy, photos)
    scorer = create_scorer("default")
    min_area = float(policy.env_config.get("min_area", 0.25))
    pol, rand, cent, same = [], [], [], []
    for photo, box in zip(photos, boxes, strict=True):
        pol.append(scorer.score_boxes(photo, [box])[0])
        rand.append(scorer.score_boxes(photo, random_boxes(photo, 16, min_area, rng)).mean())
        cent.append(scorer.score_boxes(photo, same_size_boxes(photo, box, 1, rng, centre=True))[0])
        same.append(scorer.score_boxes(photo, same_size_boxes(photo, box, 16, rng)).mean())
        if verbose:
            print(f"{Path(photo.id).name:<40} policy {pol[-1]:.2f}  random {rand[-1]:.2f}  centre {cent[-1]:.2f}"
                  f"  random same size {same[-1]:.2f}  box {list(box)}")
    return pol, rand, cent, same, sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="stage-1 run folder or checkpoint (default: train one now)")
    ap.add_argument("--timesteps", type=int, default=100000, help="stage-1 env steps when training here (no --policy); "
                    "default 100000")
    ap.add_argument("--variants", type=int, default=4, help="framings per held-out photo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", nargs="+", help="bundled photo names to crop (default: the held-out ones; "
                    "give the training ones to see how much of the gap is generalisation)")
    args = ap.parse_args()
    policy_path = args.policy
    if not policy_path:
        from rayjobs.bootstrap import BootstrapConfig, run
        from rlhf.config import from_flat

        out = Path("results") / f"bench-crop-quality-{time.strftime('%Y%m%d-%H%M%S')}"
        # In process (no scoring actor): this bench is about the crops, bench/scoring.py about the actor.
        run(from_flat(BootstrapConfig, timesteps=args.timesteps, out=str(out), seed=args.seed, service=False))
        policy_path = str(out)
    policy = CropPolicy.load(policy_path)
    rng = np.random.default_rng(args.seed)
    photos = held_out_photos(args.photos or HELDOUT_PHOTOS, args.variants, rng)
    pol, rand, cent, same, sec = measure(policy, photos, rng, verbose=True)
    vs_random, vs_center, vs_same = np.mean(pol) / np.mean(rand), np.mean(pol) / np.mean(cent), np.mean(pol) / np.mean(same)
    stems = [Path(p.id.split("#")[0]).stem for p in photos]
    pol, rand, cent = np.array(pol), np.array(rand), np.array(cent)
    print("\nper photo (all its framings): vs_random, vs_center")
    for stem in dict.fromkeys(stems):
        m = np.array([s == stem for s in stems])
        print(f"  {stem:<16} {pol[m].mean() / rand[m].mean():.3f}  {pol[m].mean() / cent[m].mean():.3f}")
    m = np.isin(stems, ["coffee", "flower", "grace_hopper"])
    if m.any() and not m.all():
        print(f"  coffee, flower, grace_hopper only: vs_random {pol[m].mean() / rand[m].mean():.3f}, "
              f"vs_center {pol[m].mean() / cent[m].mean():.3f}")
    print(f"{len(photos)} held-out photos; policy {policy.source}")
    print(f"mean score: policy {np.mean(pol):.3f}, random {np.mean(rand):.3f}, centre {np.mean(cent):.3f}, "
          f"random same size {np.mean(same):.3f}; targets vs_random > 1.10, vs_center > 1.0")
    print(f"crop_quality: vs_random={vs_random:.3f} vs_center={vs_center:.3f} "
          f"vs_random_same_area={vs_same:.3f} ms_per_photo={sec * 1000:.1f}")


if __name__ == "__main__":
    main()
