"""Crop new photos with a trained policy.

    photographer crop --policy results/bootstrap-... --image photos/ --out results/crops

Writes each crop (`<name>_crop.jpg`), `crops.json` ([{"image", "box": [l, t, r, b], "score"}], boxes in
pixels of the photo as loaded, EXIF orientation applied) and `contact_sheet.png` (pages
`contact_sheet_001.png`, ... when there are many photos).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from rlhf.config import parse_config, run_dir, save_config
from rlhf.contact_sheet import contact_sheet, crop_row
from rlhf.evaluation import policy_env
from rlhf.images import HELDOUT_PHOTOS, Photo, bundled_photos, load_collection
from rlhf.policy import CropPolicy


def _heldout() -> list[str]:
    return [str(p) for p in bundled_photos(HELDOUT_PHOTOS)]


@dataclass
class CropConfig:
    """Crop photos with a trained policy and score the crops."""

    policy: str = field(default="", metadata={"help": "policy checkpoint or run folder (newest checkpoint)"})
    image: list[str] = field(default_factory=_heldout, metadata={"help": "photos: files, folders or globs",
                                                                         "help_default": "the bundled held-out photos"})
    out: str | None = field(default=None, metadata={"help": "output folder (default results/crop-<time>)"})
    scorer: str = field(default="default", metadata={"help": "aesthetic scorer for the reported score"})
    scorer_weights: str | None = field(default=None, metadata={"help": "local weights for the scorer"})
    deterministic: bool = field(default=True, metadata={"help": "greedy actions (else sample the policy)"})
    seed: int = field(default=0, metadata={"help": "seed when sampling"})

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("--policy is required: a checkpoint or a run folder")


def crop_photos(policy: CropPolicy, photos: list[Photo], deterministic: bool = True,
                seed: int = 0) -> tuple[list[tuple[int, int, int, int]], float]:
    """The policy's final box for each photo, and the mean seconds per photo."""
    env = policy_env(policy, photos)
    rng = np.random.default_rng(seed)
    policy.rollout(env, 0, deterministic, rng)  # warm-up: the first forward pass is slow
    t0 = time.perf_counter()
    boxes = [policy.rollout(env, i, deterministic, rng)[-1] for i in range(len(photos))]
    return boxes, (time.perf_counter() - t0) / max(1, len(photos))


def run(cfg: CropConfig) -> Path:
    from rlhf.scorers import create_scorer

    out = run_dir(cfg.out, "crop")
    save_config(cfg, out)
    policy = CropPolicy.load(cfg.policy)
    photos = load_collection(cfg.image)
    boxes, sec = crop_photos(policy, photos, cfg.deterministic, cfg.seed)
    scorer = create_scorer(cfg.scorer, weights=cfg.scorer_weights)
    records, rows = [], []
    for photo, box in zip(photos, boxes, strict=True):
        score = float(scorer.score_boxes(photo, [box])[0])
        whole = float(scorer.score_boxes(photo, [photo.full_box])[0])
        stem = Path(photo.id).stem
        Image.fromarray(photo.crop(box)).save(out / f"{stem}_crop.jpg", quality=92)
        records.append({"image": photo.id, "box": [int(v) for v in box], "score": round(score, 4),
                        "whole_photo_score": round(whole, 4)})
        rows.append(crop_row(photo.pixels, [box], [f"crop {score:.2f}  (whole photo {whole:.2f})"], stem))
        print(f"{stem}: box {list(box)} score {score:.2f} (whole photo {whole:.2f})", flush=True)
    (out / "crops.json").write_text(json.dumps(records, indent=2) + "\n")
    sheets = contact_sheet(rows, out / "contact_sheet.png",
                           title=f"{policy.source}  ({cfg.scorer} scorer, 1-10)")
    print(f"{len(photos)} photos, {sec * 1000:.1f} ms per photo (policy); contact sheet: "
          f"{', '.join(map(str, sheets))}", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(CropConfig, argv, prog="photographer crop"))


if __name__ == "__main__":
    main()
