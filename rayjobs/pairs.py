"""Crop pairs from the policy, for a person to compare.

    photographer pairs --policy results/bootstrap-... --image photos/ --num_pairs 100 --out DIR
    photographer pairs --policy ... --select uncertain --human_reward_model DIR/human_reward_model.pth
    photographer pairs --policy BOOT --steer --human_reward_model ...   # from the bootstrap steered by it

Candidates per photo (rlhf.candidates): the policy's greedy crop, the final and a mid-episode box of
stochastic rollouts, the whole photo, and small perturbations of the policy's boxes. Two make a pair only when
they differ clearly (IoU below ``max_iou``), and no pair (in either order) is proposed twice or
repeats one already in the store.

Selection:
- ``diverse``: an even share of pairs per photo; within a photo, greedily the pair whose crops
  overlap least with crops already chosen there, preferring combinations of crop types (tight /
  medium / wide, centred / off-centre) not yet asked about.
- ``uncertain``: the pairs the reward model is least sure about, smallest |r_a - r_b| of its mean head
  first, so the next round asks what teaches the most (bench/pair_choice.py compares it with other
  rules); kept
  spread by a cap of twice the even share per photo and three uses per crop; listed most
  uncertain first. Diverse pairs are listed round-robin over the photos.
A and B are shown in random order so the side never tells which crop the policy liked.

Writes into --out: preference_pairs.json (shared format; extra keys thumb_a/thumb_b, type_a/type_b,
source_a/source_b, iou, and margin for uncertain), thumbs/<id>_a.jpg|_b.jpg, pairs_sheet.png,
config.json; and adds the pairs to the store (default DIR/preferences.sqlite).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from rlhf.boxstats import box_iou
from rlhf.candidates import PERTURB, ROLLOUTS, Candidate, candidate_boxes, crop_type, perturb_box
from rlhf.config import parse_config, run_dir, save_config
from rlhf.contact_sheet import contact_sheet, crop_row
from rlhf.evaluation import policy_env
from rlhf.images import TRAIN_PHOTOS, Box, bundled_photos, load_collection
from rlhf.kept import SteeringSettings
from rlhf.pairs import Pair, pair_id, save_pairs

SELECT_MODES = ("diverse", "uncertain")
MAX_BOX_USES = 3  # in uncertain mode: one crop in at most this many pairs, so answers stay informative


def _default_images() -> list[str]:
    return [str(p) for p in bundled_photos(TRAIN_PHOTOS)]


@dataclass
class PairsConfig:
    """Crop pairs from a policy's rollouts, for annotation (JSON + thumbnails + preference store)."""

    policy: str = field(default="", metadata={"help": "policy checkpoint or run folder (newest checkpoint)"})
    image: list[str] = field(default_factory=_default_images,
                             metadata={"help": "photos: files, folders or globs (default: bundled training photos)"})
    num_pairs: int = field(default=100, metadata={"help": "pairs to propose"})
    out: str | None = field(default=None, metadata={"help": "output folder (default results/pairs-<time>)"})
    store: str | None = field(default=None, metadata={"help": "preference store to add the pairs to "
                                                      "(default: DIR/preferences.sqlite)"})
    max_iou: float = field(default=0.5, metadata={"help": "the two crops of a pair must overlap less than this "
                                                  "(IoU), so they differ clearly"})
    perturb: float = field(default=PERTURB, metadata={"help": "size of the perturbations of the policy's boxes "
                                                   "(shift and zoom, as a fraction of the box; 0 = none)"})
    rollouts: int = field(default=ROLLOUTS, metadata={"help": "stochastic rollouts of the policy per photo"})
    select: str = field(default="diverse", metadata={"help": "diverse: spread over photos and crop types; "
                                                     "uncertain: the pairs the reward model is least sure about "
                                                     "(smallest |r_a - r_b| of its mean head)",
                                                     "choices": list(SELECT_MODES)})
    human_reward_model: str | None = field(default=None, metadata={"help": "human_reward_model.pth "
                                                                   "(needed by --select uncertain and --steer)"})
    steer: bool = field(default=False, metadata={
        "help": "propose crops of the policy steered by --human_reward_model (the few-pairs path's policy, "
                "photographer crop --human_reward_model): its chosen crop beside the policy's samples"})
    steering: SteeringSettings = field(default_factory=SteeringSettings)
    thumb_size: int = field(default=320, metadata={"help": "longest side of the crop thumbnails"})
    sheet_pairs: int = field(default=8, metadata={"help": "pairs shown in pairs_sheet.png"})
    seed: int = field(default=0, metadata={"help": "random seed (rollouts, perturbations, A/B order)"})

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("--policy is required: a checkpoint or a run folder")
        if self.num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {self.num_pairs}")
        if not 0.0 < self.max_iou < 1.0:
            raise ValueError(f"max_iou must be in (0, 1), got {self.max_iou}")
        if not 0.0 <= self.perturb <= 0.5:
            raise ValueError(f"perturb must be in [0, 0.5], got {self.perturb}")
        if self.rollouts < 1:
            raise ValueError(f"rollouts must be >= 1, got {self.rollouts}")
        if self.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {self.select!r}")
        if self.select == "uncertain" or self.steer:
            if not self.human_reward_model:
                raise ValueError(f"--{'select uncertain' if self.select == 'uncertain' else 'steer'} needs "
                                 "--human_reward_model (a trained reward model)")
            if not Path(self.human_reward_model).is_file():
                raise ValueError(f"--human_reward_model {self.human_reward_model}: no such file")
        if self.thumb_size < 32:
            raise ValueError(f"thumb_size must be >= 32, got {self.thumb_size}")


# --- candidates ---------------------------------------------------------------------------------

def candidate_pairs(cands: Sequence[Candidate], max_iou: float) -> list[tuple[int, int, float]]:
    """(i, j, iou) for i < j whose crops overlap less than max_iou."""
    out = []
    for i in range(len(cands)):
        for j in range(i + 1, len(cands)):
            iou = box_iou(cands[i].box, cands[j].box)
            if iou < max_iou:
                out.append((i, j, iou))
    return out


def widen(env, index: int, cands: list[Candidate], cfg: PairsConfig, need: int,
          rng: np.random.Generator, min_area: float) -> list[Candidate]:
    """A peaked policy gives too few clearly different crops: perturb harder until enough pairs exist."""
    photo = env.photos[index]
    w, h = photo.width, photo.height
    known = {c.box for c in cands}
    scale = max(cfg.perturb, 0.1)
    for _ in range(4):
        if len(candidate_pairs(cands, cfg.max_iou)) >= need:
            break
        scale = min(0.5, scale * 1.6)
        for c in list(cands):
            for _ in range(2):
                box = perturb_box(c.box, scale, w, h, rng)
                if (box[2] - box[0]) * (box[3] - box[1]) >= min_area * w * h and box not in known:
                    known.add(box)
                    cands.append(Candidate(box, f"perturbed x{scale:.2f}", crop_type(box, w, h)))
    return cands


def candidate_pool(policy, photos: Sequence, cfg: PairsConfig, rng: np.random.Generator
                   ) -> tuple[list[list[Candidate]], list[list[tuple[int, int, float]]]]:
    """Per photo, the candidate crops and the pairs of them that differ clearly: what `run` chooses from."""
    env = policy_env(policy, photos)
    min_area = float(env.cfg.min_area) * 0.8  # perturbations may go a little below the policy's floor
    need = math.ceil(cfg.num_pairs / len(photos))
    cands, pairs = [], []
    for k in range(len(photos)):
        cs = candidate_boxes(policy, env, k, cfg.rollouts, cfg.perturb, rng, min_area)
        cands.append(widen(env, k, cs, cfg, 3 * need, rng, min_area))
        pairs.append(candidate_pairs(cands[-1], cfg.max_iou))
    return cands, pairs


# --- selection -----------------------------------------------------------------------------------

def fair_shares(available: Sequence[int], n: int) -> list[int]:
    """Split n as evenly as possible over photos, never more than a photo has; leftovers go round."""
    shares = [0] * len(available)
    left = n
    while left > 0:
        open_ = [i for i, a in enumerate(available) if shares[i] < a]
        if not open_:
            break
        for i in open_:
            if left == 0:
                break
            shares[i] += 1
            left -= 1
    return shares


def select_diverse(cands: Sequence[Sequence[Candidate]], pairs: Sequence[Sequence[tuple[int, int, float]]],
                   n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(photo, i, j) picks: fair shares per photo; within one, the pair newest in boxes and types."""
    shares = fair_shares([len(p) for p in pairs], n)
    combos_all: Counter[tuple[str, str]] = Counter()
    picks = []
    for k, (cs, ps, share) in enumerate(zip(cands, pairs, shares, strict=True)):
        used_boxes: list[Box] = []
        combos: Counter[tuple[str, str]] = Counter()
        remaining = list(ps)
        for _ in range(share):
            best, best_score = None, -math.inf
            for idx, (i, j, _) in enumerate(remaining):
                a, b = cs[i].box, cs[j].box
                novelty = 2.0 - max((box_iou(a, u) for u in used_boxes), default=0.0) \
                    - max((box_iou(b, u) for u in used_boxes), default=0.0)
                combo = tuple(sorted((cs[i].kind, cs[j].kind)))
                score = (novelty + 1.0 / (1 + combos[combo]) + 0.5 / (1 + combos_all[combo])
                         + 1e-3 * rng.random())
                if score > best_score:
                    best, best_score = idx, score
            i, j, _ = remaining.pop(best)
            used_boxes += [cs[i].box, cs[j].box]
            combo = tuple(sorted((cs[i].kind, cs[j].kind)))
            combos[combo] += 1
            combos_all[combo] += 1
            picks.append((k, i, j))
    return picks


def select_uncertain(pairs: Sequence[Sequence[tuple[int, int, float]]], margins: Sequence[Sequence[float]],
                     n: int, per_photo_cap: int | None = None,
                     max_box_uses: int = MAX_BOX_USES) -> list[tuple[int, int, int]]:
    """(photo, i, j) picks in order of smallest margin |r_i - r_j|.

    A pair is skipped when its photo already has ``per_photo_cap`` picks (default: twice the even
    share) or one of its crops is already in ``max_box_uses`` picks. If the caps leave fewer than n
    picks, a second pass fills up by margin alone.
    """
    photos_with = sum(1 for p in pairs if p)
    cap = per_photo_cap or max(1, math.ceil(2 * n / max(1, photos_with)))
    order = sorted(((m, k, i, j) for k, (ps, ms) in enumerate(zip(pairs, margins, strict=True))
                    for (i, j, _), m in zip(ps, ms, strict=True)), key=lambda x: x[0])
    picks: list[tuple[int, int, int]] = []
    per_photo: Counter[int] = Counter()
    uses: Counter[tuple[int, int]] = Counter()
    for _, k, i, j in order:
        if len(picks) == n:
            break
        if per_photo[k] >= cap or uses[(k, i)] >= max_box_uses or uses[(k, j)] >= max_box_uses:
            continue
        picks.append((k, i, j))
        per_photo[k] += 1
        uses[(k, i)] += 1
        uses[(k, j)] += 1
    if len(picks) < n:
        chosen = set(picks)
        picks += [(k, i, j) for _, k, i, j in order if (k, i, j) not in chosen][:n - len(picks)]
    return picks


def interleave(picks: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Round-robin over photos, so whoever stops early has still seen every photo."""
    queues: dict[int, list[tuple[int, int, int]]] = {}
    for p in picks:
        queues.setdefault(p[0], []).append(p)
    out: list[tuple[int, int, int]] = []
    while any(queues.values()):
        for q in queues.values():
            if q:
                out.append(q.pop(0))
    return out


# --- outputs -------------------------------------------------------------------------------------

def _thumb(pixels: np.ndarray, box: Box, size: int, path: Path) -> None:
    l, t, r, b = box
    crop = Image.fromarray(np.ascontiguousarray(pixels[t:b, l:r]))
    crop.thumbnail((size, size), Image.Resampling.LANCZOS)
    crop.save(path, quality=90)


def _known_pairs(store) -> set[tuple[str, frozenset]]:
    from rlhf.evaluation import photo_key

    return {(photo_key(p.image), frozenset((tuple(p.crop_a), tuple(p.crop_b)))) for p in store.pairs()}


def run(cfg: PairsConfig) -> Path:
    """Propose cfg.num_pairs pairs; returns the path of preference_pairs.json."""
    from rlhf.evaluation import photo_key
    from rlhf.policy import CropPolicy
    from rlhf.store import PreferenceStore

    out = run_dir(cfg.out, "pairs")
    save_config(cfg, out)
    store_path = Path(cfg.store) if cfg.store else out / "preferences.sqlite"
    store = PreferenceStore(store_path)  # opened first: a bad store fails before any work
    known = _known_pairs(store)
    policy = CropPolicy.load(cfg.policy)
    photos = load_collection(cfg.image)
    if cfg.steer:  # its greedy crop is the one `crop` gives: the reward model's choice among the candidates
        policy = policy.steered(cfg.human_reward_model, cfg.steering.w_human, cfg.steering.photo_min_kept)
    rng = np.random.default_rng(cfg.seed)
    cands, pairs = candidate_pool(policy, photos, cfg, rng)
    for photo, cs, ps in zip(photos, cands, pairs, strict=True):
        key = photo_key(photo.id)
        ps[:] = [(i, j, iou) for i, j, iou in ps if (key, frozenset((cs[i].box, cs[j].box))) not in known]

    margins = None
    if cfg.select == "uncertain":
        from rlhf.preference import PreferenceRewardModel

        model = PreferenceRewardModel.load(cfg.human_reward_model)
        rewards = [model.reward(photo, [c.box for c in cs]) if cs else np.zeros(0)
                   for photo, cs in zip(photos, cands, strict=True)]
        margins = [[abs(float(r[i] - r[j])) for i, j, _ in ps] for r, ps in zip(rewards, pairs, strict=True)]
        if max((m for ms in margins for m in ms), default=0.0) < 1e-6:
            # Every pair ties at zero margin, so "least sure" would pick by candidate order.
            print(f"warning: {cfg.human_reward_model} scores every candidate alike (it found no taste in "
                  "the answers so far); picking diverse pairs instead", flush=True)
            margins = None
    if margins is not None:
        picks = select_uncertain(pairs, margins, cfg.num_pairs)
    else:
        picks = interleave(select_diverse(cands, pairs, cfg.num_pairs, rng))
    if not picks:
        raise ValueError(f"no pair of clearly different crops (IoU < {cfg.max_iou}) could be made from "
                         f"{len(photos)} photo(s); raise --max_iou or --perturb")
    if len(picks) < cfg.num_pairs:
        print(f"warning: only {len(picks)} distinct pairs with IoU < {cfg.max_iou} (asked {cfg.num_pairs}); "
              "raise --perturb or --rollouts, or add photos", flush=True)

    thumbs = out / "thumbs"
    thumbs.mkdir(exist_ok=True)
    result: list[Pair] = []
    todo: dict[int, list[tuple[Box, Path]]] = {}
    for k, i, j in picks:
        photo, cs = photos[k], cands[k]
        if rng.random() < 0.5:
            i, j = j, i
        a, b = cs[i], cs[j]
        pid = pair_id(photo.id, a.box, b.box)
        extra = {"thumb_a": f"thumbs/{pid}_a.jpg", "thumb_b": f"thumbs/{pid}_b.jpg",
                 "type_a": a.kind, "type_b": b.kind, "source_a": a.source, "source_b": b.source,
                 "iou": round(box_iou(a.box, b.box), 4)}
        if margins is not None:
            m = margins[k][next(n for n, (x, y, _) in enumerate(pairs[k]) if {x, y} == {i, j})]
            extra["margin"] = round(m, 5)
        todo.setdefault(k, []).extend([(a.box, thumbs / f"{pid}_a.jpg"), (b.box, thumbs / f"{pid}_b.jpg")])
        result.append(Pair(pid, photo.id, a.box, b.box, None, extra))
    for k, jobs in todo.items():  # grouped by photo: each decoded at full resolution once
        pixels = photos[k].pixels
        for box, path in jobs:
            _thumb(pixels, box, cfg.thumb_size, path)

    path = save_pairs(out / "preference_pairs.json", result, relative_to=out)
    added = store.add_pairs(result)
    by_id = {p.id: p for p in photos}
    rows = [crop_row(by_id[p.image].pixels, [p.crop_a, p.crop_b],
                     [f"A: {p.extra['type_a']}", f"B: {p.extra['type_b']}  (IoU {p.extra['iou']:.2f})"],
                     Path(p.image).stem) for p in result[:cfg.sheet_pairs]]
    pages = contact_sheet(rows, out / "pairs_sheet.png", title=f"{len(result)} pairs ({cfg.select}) from "
                          f"{policy.source}", height=160)
    sheet = ", ".join(map(str, pages))
    per_photo = Counter(Path(p.image).stem for p in result)
    types = Counter(t for p in result for t in (p.extra["type_a"], p.extra["type_b"]))
    print(f"{len(result)} pairs ({cfg.select}) over {len(per_photo)} photos {dict(per_photo)}; crop types "
          f"{dict(types)}", flush=True)
    print(f"wrote {path}, thumbnails in {thumbs}, {sheet}; {added} new pairs in store {store.path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(PairsConfig, argv, prog="photographer pairs"))


if __name__ == "__main__":
    main()
