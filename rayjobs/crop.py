"""Crop a photo library with a trained policy, streaming: one photo at a time, results as they come.

    photographer crop --policy results/boot --image photos/ --out results/crops
    photographer crop --policy results/boot --image photos/ --out results/crops --resume
                                                  # after a stop or a kill: only the photos not yet done
    photographer crop --policy results/boot --human_reward_model results/reward/human_reward_model.pth
                                                  # steered by a person's reward model, no fine-tuning

Photos are listed by path and loaded one at a time, so memory does not grow with the library. The
run folder holds each crop (`<name>_crop.jpg`), `crops.jsonl` and contact sheets
`contact_sheet_001.png`, `contact_sheet_002.png`, ... (`--sheet_rows` photos a page, each page
written when full). `crops.jsonl` has one line per photo, appended and synced to disk as each photo
is done: ``{"image", "box": [l, t, r, b], "size": [w, h], "score", "whole_photo_score", "crop",
"sheet"}`` (boxes in pixels of the photo as loaded, EXIF orientation applied; scores on the scorer's
1-10 scale, left out with --no-score; "crop" left out with --no-write_crops; on the few-pairs path
``"w_human"``, --w_human where the reward model chose another crop than the policy's own, 0 with
``"unsteered": true`` where the policy's own crop stayed; a fine-tuned policy's ``"w_human"`` is the weight
its lookahead was shown, lower where its crop kept less than --photo_min_kept of its bootstrap's crop's
aesthetic score, ``"bootstrap_crop": true`` where the photo got the bootstrap's crop), or
``{"image", "error"}`` for a file that is not a usable photo.

With `--ray` (on by default when RAY_ADDRESS is set) a Ray Data pipeline crops the photos over a pool
of actors (rayjobs/crop_ray.py); this process writes the same files the same way, so --resume works
the same.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayjobs.cropper import SHEET_HEIGHT, Cropper, CropResult, sheet_pictures, unjpeg
from rlhf.config import flat_settings, load_run_config, parse_config, run_dir, save_config
from rlhf.contact_sheet import SheetCell, contact_sheet
from rlhf.images import HELDOUT_PHOTOS, Box, ImageLoadError, Photo, bundled_photos, resolve_paths
from rlhf.kept import SteeringSettings

JOURNAL = "crops.jsonl"
# What decides a run's boxes and scores: a resumed run must keep them.
RESULT_FIELDS = ("policy", "human_reward_model", "w_human", "photo_min_kept", "scorer", "scorer_weights", "score", "deterministic",
                 "seed", "write_crops")
# Paths among them, compared resolved.
_PATH_FIELDS = ("policy", "human_reward_model")


def _heldout() -> list[str]:
    return [str(p) for p in bundled_photos(HELDOUT_PHOTOS)]


def _ray_default() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


@dataclass
class CropConfig:
    """Crop a photo library with a trained policy, streaming and resumable, and score the crops."""

    policy: str = field(default="", metadata={"help": "policy checkpoint or run folder (newest checkpoint); "
                                                      "required"})
    human_reward_model: str | None = field(default=None, metadata={
        "help": "let this human_reward_model.pth choose each photo's crop among the policy's candidate crops: on "
                "the bootstrap the few-pairs path (no fine-tuning), on a policy fine-tuned on it how that policy "
                "crops for its person; default none"})
    steering: SteeringSettings = field(default_factory=SteeringSettings)
    image: list[str] = field(default_factory=_heldout, metadata={"help": "photos: files, folders or globs",
                                                                         "help_default": "the bundled held-out photos"})
    out: str | None = field(default=None, metadata={"help": "output folder (default results/crop-<time>)"})
    resume: bool = field(default=False, metadata={
        "help": "continue the crop run in --out (the same command again): crop only the photos its crops.jsonl "
                "lacks"})
    scorer: str = field(default="default", metadata={"help": "aesthetic scorer for the reported score"})
    scorer_weights: str | None = field(default=None, metadata={"help": "local weights for the scorer"})
    score: bool = field(default=True, metadata={"help": "score each crop and the whole photo with the scorer "
                                                        "(--no-score: boxes only, faster)"})
    write_crops: bool = field(default=True, metadata={
        "help": "write each crop as a JPEG at full resolution (--no-write_crops: the boxes in crops.jsonl only, "
                "for an editor's non-destructive crop; the photo is then never decoded at full size)"})
    deterministic: bool = field(default=True, metadata={"help": "greedy actions (else sample the policy)"})
    seed: int = field(default=0, metadata={"help": "seed when sampling (each photo's draws depend on it and "
                                                   "the photo's path only)"})
    sheet_rows: int = field(default=16, metadata={"help": "photos per contact-sheet page"})
    ray: bool = field(default_factory=_ray_default, metadata={
        "help": "crop with a Ray Data pipeline over a pool of actors (joins the cluster at RAY_ADDRESS, "
                "else starts a local Ray)", "help_default": "on when RAY_ADDRESS is set"})
    actors: int = field(default=2, metadata={"help": "with --ray: actors in the pool, each holding the policy "
                                                     "and its models"})
    batch_size: int = field(default=4, metadata={"help": "with --ray: photos per batch sent to an actor"})
    num_gpus_per_actor: float = field(default=-1.0, metadata={
        "help": "with --ray: GPUs per actor; -1 = 1 when the cluster has GPUs, else 0"})

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("--policy is required: a checkpoint or a run folder")
        if self.sheet_rows < 1 or self.actors < 1 or self.batch_size < 1:
            raise ValueError("--sheet_rows, --actors and --batch_size must be at least 1")
        if self.human_reward_model and not Path(self.human_reward_model).is_file():
            raise ValueError(f"--human_reward_model {self.human_reward_model}: no such file")


def check_resumable(cfg: CropConfig, out: Path) -> None:
    """Refuse to mix two runs in one folder: a new run where one was, or a resume with other settings."""
    if not (out / JOURNAL).exists():
        return
    if not cfg.resume:
        raise ValueError(f"{out} holds a crop run: add --resume to continue it, or give a new --out")
    saved = load_run_config(out) if (out / "config.json").is_file() else {}
    now, before = flat_settings(CropConfig, asdict(cfg)), flat_settings(CropConfig, saved)
    now.update({k: _resolved(now[k]) for k in _PATH_FIELDS})
    before.update({k: _resolved(before[k]) for k in _PATH_FIELDS if k in before})
    changed = [k for k in RESULT_FIELDS if k in before and before[k] != now[k]]
    if changed:
        raise ValueError(f"--resume: {out} was cropped with {', '.join(f'--{k} {before[k]}' for k in changed)}; "
                         "resume with the same settings, or give a new --out")


def _resolved(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def crop_photos(policy: Any, photos: list[Photo], deterministic: bool = True,
                seed: int = 0) -> tuple[list[Box], float]:
    """The policy's final box for each photo (all in memory), and the mean seconds per photo."""
    from rlhf.evaluation import policy_boxes

    return policy_boxes(policy, photos, deterministic, seed)


# --- the run folder -------------------------------------------------------------------------------

def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of a crops.jsonl, repairing it first: a torn last line (a kill mid-write) or any
    line that is not a whole JSON record is dropped, so its photo is cropped again."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records, bad = [], False
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        bad = True  # no newline at the end: the last write was cut short
        lines.pop()
    for line in lines:
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "image" not in rec:
                raise ValueError(line)
            records.append(rec)
        except ValueError:
            bad = True
    if bad:
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return records


def crop_names(paths: list[Path]) -> dict[str, str]:
    """Each path's crop file stem: the photo's stem, plus a short hash of its path where two share one."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    return {str(p): p.stem if counts[p.stem] == 1 else f"{p.stem}_{zlib.crc32(str(p).encode()):08x}"
            for p in paths}


def caption(record: dict[str, Any]) -> str:
    if "score" not in record:
        return "crop"
    return f"crop {record['score']:.2f}  (whole photo {record['whole_photo_score']:.2f})"


class RunFolder:
    """Writes what a crop run produces, photo by photo: crop files, crops.jsonl lines, contact sheet pages.

    Only the page in progress is kept in memory (two small pictures a photo). A photo's line is
    appended and synced after its crop file is written, so a photo with a line is done.
    """

    def __init__(self, out: Path, sheet_rows: int, title: str):
        self.out, self.sheet_rows, self.title = out, sheet_rows, title
        self.journal = out / JOURNAL
        records = read_journal(self.journal)
        self.done = {r["image"] for r in records}
        pages = [r["sheet"] for r in records if "sheet" in r]
        self.page = max(pages, default=1)
        last = [r for r in records if r.get("sheet") == self.page]
        self.cropped = sum(1 for r in records if "error" not in r)
        self.skipped = len(records) - self.cropped
        self.rows: list[list[SheetCell]] = []
        if self.page_path(self.page).exists() and len(last) >= sheet_rows:
            self.page += 1
        else:
            for r in last:  # the page that was in progress: draw its photos again (at most one page of them)
                try:
                    drawn, crop = sheet_pictures(Photo.from_path(r["image"]), tuple(r["box"]))
                except ImageLoadError:
                    continue  # gone since: its crop and line stay, the page lacks it
                self.rows.append([SheetCell(drawn, Path(r["image"]).stem), SheetCell(crop, caption(r))])
        self.pages: list[Path] = sorted(out.glob("contact_sheet_*.png"))
        self._f = open(self.journal, "a")
        self._flush_page(full_only=True)

    def page_path(self, k: int) -> Path:
        return self.out / f"contact_sheet_{k:03d}.png"

    def add(self, result: CropResult) -> None:
        rec = result.record
        if "error" in rec:
            self.skipped += 1
        else:
            if "crop" in rec:
                (self.out / rec["crop"]).write_bytes(result.crop_jpeg)
            rec["sheet"] = self.page
            self.rows.append([SheetCell(unjpeg(result.photo_thumb), Path(rec["image"]).stem),
                              SheetCell(unjpeg(result.crop_thumb), caption(rec))])
            self.cropped += 1
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(rec["image"])
        self._flush_page(full_only=True)

    def _flush_page(self, full_only: bool) -> None:
        if not self.rows or (full_only and len(self.rows) < self.sheet_rows):
            return
        path = self.page_path(self.page)
        tmp = path.with_name(f".{path.stem}.tmp.png")
        # One file per page whatever its rows hold (a very wide photo wraps onto two lines).
        contact_sheet(self.rows, tmp, height=SHEET_HEIGHT, title=f"{self.title}  page {self.page}",
                      max_height=10**6)
        os.replace(tmp, path)
        if path not in self.pages:
            self.pages.append(path)
        if len(self.rows) >= self.sheet_rows:
            self.rows = []
            self.page += 1

    def close(self) -> None:
        self._flush_page(full_only=False)
        self._f.close()


# --- the run --------------------------------------------------------------------------------------

def results_in_process(cropper: Cropper, todo: Iterable[tuple[str, str]]) -> Iterator[CropResult]:
    for path, name in todo:
        yield cropper.crop(path, name)


def run(cfg: CropConfig) -> Path:
    from tqdm import tqdm

    from rlhf.policy import latest_checkpoint

    source = latest_checkpoint(cfg.policy)  # fails now, not in an actor, when there is no policy
    out = run_dir(cfg.out, "crop")
    check_resumable(cfg, out)
    paths = resolve_paths(cfg.image)
    w_human = cfg.steering.w_human
    # Every cropper, in process or in each Ray actor, is Cropper(**settings).
    settings = {"policy": _resolved(cfg.policy), "scorer": cfg.scorer,
                "scorer_weights": cfg.scorer_weights, "score": cfg.score, "deterministic": cfg.deterministic,
                "seed": cfg.seed, "write_crops": cfg.write_crops,
                "human_reward_model": _resolved(cfg.human_reward_model), "w_human": w_human,
                "photo_min_kept": cfg.steering.photo_min_kept}
    # Built here, before any photo and not in an actor, so a reward model that does not load or a fine-tuned
    # policy's missing bootstrap fails now; in process it crops every photo.
    cropper = Cropper(**settings)
    save_config(cfg, out)  # as given: a resumed run compares its flags with these
    names = crop_names(paths)
    title = f"{source} steered by {cfg.human_reward_model} (w_human {w_human:g})" if cfg.human_reward_model \
        else str(source)
    folder = RunFolder(out, cfg.sheet_rows, f"{title}  ({cfg.scorer} scorer, 1-10)" if cfg.score else title)
    todo = [(str(p), names[str(p)]) for p in paths if str(p) not in folder.done]
    if cfg.resume:
        print(f"resuming {out}: {len(paths) - len(todo)} of {len(paths)} photos already done", flush=True)
    if cfg.ray:
        from rayjobs.crop_ray import results_with_ray

        results = results_with_ray(settings, todo, cfg.actors, cfg.batch_size, cfg.num_gpus_per_actor)
    else:
        results = results_in_process(cropper, todo)
    t0 = time.perf_counter()
    with tqdm(total=len(paths), initial=len(paths) - len(todo), unit="photo", smoothing=0.1,
              mininterval=0.5) as bar:
        try:
            for result in results:
                if "error" in result.record:
                    bar.write(f"skipped {result.record['image']}: {result.record['error']}", file=sys.stderr)
                folder.add(result)
                bar.update()
        finally:
            folder.close()
    sec = time.perf_counter() - t0
    print(f"{folder.cropped} photos cropped, {folder.skipped} skipped; this run: {len(todo)} in {sec:.1f} s "
          f"({len(todo) / max(sec, 1e-9):.2f} photos/s). {out / JOURNAL}; contact sheets: "
          f"{', '.join(p.name for p in sorted(folder.pages)) or 'none'}", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    return run(parse_config(CropConfig, argv, prog="photographer crop"))


if __name__ == "__main__":
    main()
