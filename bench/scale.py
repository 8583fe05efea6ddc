"""Does a photo library cost what a demo costs? Memory, crop time and throughput as the library grows.

Side by side in one run, on N photos made from the bundled ones (4:3 sub-framings, every second cycle
mirrored, upscaled to 2560x1920, JPEG quality 90; made once into --data_dir and reused; the sets of
20, 200 and 2000 photos are prefixes of one list), driving the product only through its command line
(`python -m rlhf.cli ...` from this checkout), so it measures whatever the code is when run:

  peak_gb_N          peak PSS of the whole process tree of `photographer bootstrap --timesteps 2048` on N
                     photos (the driver and every descendant: the local Ray's gcs_server and raylet, env
                     runners, the scoring actor), sampled every --interval_s
                     target <= 6 GB at 2000, and 2000 no more than 10 % above 200
  crop_ms_boot       crop time per 2560x1920 photo on one core (taskset, OMP_NUM_THREADS=1), from the JPEG
  crop_ms_final      file with a cold context cache: the time between the first and the last photo's line in
                     crops.jsonl over --crop_photos photos, per photo; the bootstrap policy (trained on the
                     smallest set above) and a stage-3 policy                 target <= 80 ms / <= 100 ms
                     Finding the crop: `crop --no-write_crops` (the JPEG decoded at working size; writing a
                     crop file decodes the photo at full size, so it is timed apart:
  crop_ms_boot_write ... the bootstrap's with each crop written as a full-resolution JPEG (no target)
  stage3_vs_stage1   env steps/s of stage 3 (pairs -> SIMULATED annotator -> train-reward -> finetune, on
                     the smallest set) over the smallest set's bootstrap, iterations after the first
                     (the first builds the photos' contexts) from each run's progress.csv   target >= 0.7
  cropN_peak_gb      `photographer crop` over the largest set: peak PSS of its tree   target <= 2 GB
  cropN_photos_per_s ... and its photos/s, between its first and last crops.jsonl line
  ray2_vs_ray1       photos/s of `crop --ray --actors 2` over `--actors 1` (local Ray) on --ray_photos photos,
                     between the first and last of the bursts in which Ray Data hands results over; with
                     fewer than 5 bursts (a smoke run), the crop's own rate over its whole run, Ray's start
                     included (the table says which)

Why PSS: Ray's processes share the object store (shared memory), the libraries and copy-on-write pages;
RSS counts each shared page once per process and overstates the tree several times, while PSS divides a
shared page among its sharers, so the tree's sum is what the machine actually holds.

Every run gets a fresh, empty $PHOTOGRAPHER_CACHE (a cold context cache) and no RAY_ADDRESS (a local Ray,
started by the driver, so inside its tree). The personalization bench takes too long to run here: give
its lines before and after with --personalization_before / --personalization_after to print them.

    python bench/scale.py                                   # everything: hours on 2 cores
    python bench/scale.py --sizes 4 8 --timesteps 256 --train_batch_size 128 --crop_photos 3 \
        --ray_photos 4 --pairs 8 --long_side 640             # smoke run, a few minutes
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.config import parse_config  # noqa: E402

BUNDLED = ROOT / "rlhf" / "data" / "photos"
TARGETS = {"peak_gb": 6.0, "growth_200_to_2000": 1.10, "crop_ms_boot": 80.0, "crop_ms_final": 100.0,
           "stage3_vs_stage1": 0.7, "crop_peak_gb": 2.0}


@dataclass
class ScaleConfig:
    """Scale benchmark: bootstrap memory by library size, crop time per photo, stage-3 speed, library crop."""

    sizes: list[int] = field(default_factory=lambda: [20, 200, 2000], metadata={
        "help": "library sizes of the bootstrap memory runs; the smallest also trains the policies, the largest "
                "is the library crop's"})
    timesteps: int = field(default=2048, metadata={"help": "env steps of every bootstrap and of stage 3"})
    train_batch_size: int | None = field(default=None, metadata={
        "help": "PPO batch for bootstrap and stage 3 (smoke runs: a few iterations of few steps); default: "
                "the product's"})
    num_env_runners: int | None = field(default=None, metadata={
        "help": "env runners of bootstrap and stage 3; default: the product's (fits the machine)"})
    crop_photos: int = field(default=12, metadata={"help": "photos of each one-core crop timing"})
    crop_score: bool = field(default=False, metadata={
        "help": "crop runs also score each crop and the whole photo (--score); off: the policy's crop only"})
    ray_photos: int = field(default=200, metadata={"help": "photos of the Ray Data 1- vs 2-actor comparison"})
    pairs: int = field(default=40, metadata={"help": "pairs the SIMULATED annotator answers for stage 3"})
    taste: str = field(default="tight", metadata={"help": "the SIMULATED annotator's taste"})
    long_side: int = field(default=2560, metadata={"help": "long side of the made photos (4:3); small for smoke "
                                                           "runs"})
    data_dir: str = field(default="/tmp/photographer-scale", metadata={
        "help": "where the made photos are kept between runs"})
    out: str | None = field(default=None, metadata={
        "help": "run folder: logs, policies, scale.json (default DATA_DIR/run-<time>)"})
    keep: bool = field(default=False, metadata={
        "help": "keep each run's context cache and crop outputs (else deleted once measured)"})
    interval_s: float = field(default=0.25, metadata={"help": "seconds between PSS samples"})
    run_timeout_s: float = field(default=14400.0, metadata={"help": "a product command running longer is killed"})
    personalization_before: str | None = field(default=None, metadata={
        "help": "bench/personalization.py's result before the change: 'accuracy=..,preferred=..' or a file "
                "whose last 'personalization:' line holds it"})
    personalization_after: str | None = field(default=None, metadata={"help": "... and after it"})
    seed: int = field(default=0, metadata={"help": "seed of the made photos and of every run"})

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1 or self.crop_photos < 2 or self.ray_photos < 2 or self.pairs < 2:
            raise ValueError("--sizes must be >= 1, --crop_photos, --ray_photos and --pairs >= 2")
        self.sizes = sorted(set(self.sizes))


# --- photos -----------------------------------------------------------------------------------------------

def make_photos(folder: Path, n: int, long_side: int, seed: int) -> list[Path]:
    """The first n photos of the list, made where missing: photo i is a 4:3 window (70-100 % of the widest
    one) of bundled photo i mod 29, mirrored every second cycle, resized to long_side x 3/4 long_side."""
    from PIL import Image
    from tqdm import tqdm

    sources = sorted(BUNDLED.glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"scale_{i:05d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    for i in tqdm(missing, desc=f"making {long_side}px photos", unit="photo", disable=not missing):
        rng = np.random.default_rng([seed, i])
        with Image.open(sources[i % len(sources)]) as src:
            img = src.convert("RGB")
        w = min(img.width, img.height * 4 / 3) * rng.uniform(0.7, 1.0)
        h = w * 3 / 4
        x0, y0 = rng.uniform(0, img.width - w), rng.uniform(0, img.height - h)
        img = img.resize((long_side, long_side * 3 // 4), Image.Resampling.BICUBIC, box=(x0, y0, x0 + w, y0 + h))
        if (i // len(sources)) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tmp = paths[i].with_name(f".{paths[i].name}.tmp")  # renamed into place: a killed run leaves no torn photo
        img.save(tmp, format="JPEG", quality=90)
        os.replace(tmp, paths[i])
    return paths


def photo_set(root: Path, paths: list[Path], n: int) -> Path:
    """A folder of symlinks to the first n photos (what `--image FOLDER` reads)."""
    folder = root / f"set_{n}"
    folder.mkdir(exist_ok=True)
    for p in paths[:n]:
        link = folder / p.name
        if not link.is_symlink():
            link.symlink_to(p)
    return folder


# --- the process tree -------------------------------------------------------------------------------------

def process_tree(root: int) -> list[int]:
    """root and all its descendants, from each process's parent in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue  # gone since the listing
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass  # exited, or a kernel thread
    return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class Watch(threading.Thread):
    """Samples a process tree's PSS every interval_s (peak kept, with the processes then), and notes when each
    line of a crops.jsonl appears (polled every 10 ms: the crop timings are read from these)."""

    def __init__(self, pid: int, interval_s: float, pss: bool, journal: Path | None):
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.pss, self.journal = pid, interval_s, pss, journal
        self.peak, self.peak_procs = 0, ""
        self.lines: list[tuple[float, int]] = []  # (time, lines so far) whenever the count grows
        self.stop = threading.Event()

    def run(self) -> None:
        last_pss, size, count = 0.0, 0, 0
        while not self.stop.is_set():
            now = time.perf_counter()
            if self.pss and now - last_pss >= self.interval_s:
                last_pss = now
                pids = process_tree(self.pid)
                sizes = {p: pss_bytes(p) for p in pids}
                if sum(sizes.values()) > self.peak:
                    self.peak = sum(sizes.values())
                    names: dict[str, int] = {}
                    for name in filter(lambda n: n != "?", map(comm, pids)):  # "?": exited meanwhile
                        names[name] = names.get(name, 0) + 1
                    self.peak_procs = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(names.items()))
            if self.journal is not None and self.journal.exists() and self.journal.stat().st_size != size:
                with self.journal.open("rb") as f:
                    f.seek(size)
                    new = f.read()
                size += len(new)
                count += new.count(b"\n")
                self.lines.append((now, count))
            self.stop.wait(0.01 if self.journal is not None else self.interval_s)

    def photos_per_s(self, min_updates: int = 2) -> float:
        """Photos from the first line's appearance to the last's, over that time (warm-up excluded); nan
        when the lines came in fewer than min_updates bursts."""
        if len(self.lines) < max(2, min_updates):
            return float("nan")
        (t0, n0), (t1, n1) = self.lines[0], self.lines[-1]
        return (n1 - n0) / (t1 - t0)


@dataclass
class Run:
    label: str
    rc: int = 0
    wall_s: float = 0.0
    peak_gb: float = float("nan")
    procs: str = ""
    photos_per_s: float = float("nan")
    rate_from: str = ""  # "journal": between the first and last crops.jsonl line; "crop": the crop's own line
    steps_per_s: float = float("nan")  # iterations after the first
    steps_per_s_all: float = float("nan")  # every iteration

    @property
    def ok(self) -> bool:
        return self.rc == 0


def photographer(cfg: ScaleConfig, out: Path, label: str, args: list[str], *, pss: bool = True,
                 journal: Path | None = None, one_core: bool = False, progress: Path | None = None,
                 min_updates: int = 2) -> Run:
    """Run `photographer ARGS` from this checkout, with a fresh context cache; its output goes to logs/LABEL.log."""
    cache = out / "caches" / label
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PHOTOGRAPHER_CACHE=str(cache), GRADIO_ANALYTICS_ENABLED="False", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "rlhf.cli", *args]
    if one_core:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    log = out / "logs" / f"{label}.log"
    log.parent.mkdir(exist_ok=True)
    print(f"[{label}] photographer {' '.join(args)}", flush=True)
    run = Run(label)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        watch = Watch(proc.pid, cfg.interval_s, pss, journal)
        watch.start()
        try:
            run.rc = proc.wait(timeout=cfg.run_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own session: the product's Ray processes go with it
            run.rc = proc.wait()
        watch.stop.set()
        watch.join()
    run.wall_s = time.perf_counter() - t0
    if pss:
        run.peak_gb, run.procs = watch.peak / 1e9, watch.peak_procs
    run.photos_per_s, run.rate_from = watch.photos_per_s(min_updates), "journal"
    printed = re.findall(r"\(([\d.]+) photos/s\)", log.read_text(errors="replace"))
    if journal is not None and run.photos_per_s != run.photos_per_s and printed:
        # Too few bursts to time between them (Ray Data hands results over a batch at a time): the crop's
        # own rate over the whole run, Ray's start included.
        run.photos_per_s, run.rate_from = float(printed[-1]), "crop"
    if progress is not None and progress.exists():
        run.steps_per_s, run.steps_per_s_all = env_steps_per_s(progress)
    if not cfg.keep:
        shutil.rmtree(cache, ignore_errors=True)
    tail = "" if run.ok else "\n    " + "\n    ".join(log.read_text(errors="replace").splitlines()[-25:])
    print(f"[{label}] {'done' if run.ok else f'FAILED (exit {run.rc}; {log})'} in {run.wall_s:.0f} s"
          + (f", peak PSS {run.peak_gb:.2f} GB ({run.procs})" if pss else "")
          + (f", {run.steps_per_s:.1f} env steps/s" if run.steps_per_s == run.steps_per_s else "")
          + (f", {run.photos_per_s:.2f} photos/s ({run.rate_from})" if run.photos_per_s == run.photos_per_s else "") + tail, flush=True)
    return run


def env_steps_per_s(progress: Path) -> tuple[float, float]:
    """(env steps/s over the iterations after the first, over all) from a run's progress.csv."""
    with progress.open() as f:
        rows = [(float(r["timesteps"]), float(r["seconds"])) for r in csv.DictReader(f)]
    if not rows:
        return float("nan"), float("nan")
    overall = rows[-1][0] / max(sum(s for _, s in rows), 1e-9)
    if len(rows) < 2:
        return overall, overall
    return (rows[-1][0] - rows[0][0]) / max(sum(s for _, s in rows[1:]), 1e-9), overall


# --- the bench --------------------------------------------------------------------------------------------

def ppo_args(cfg: ScaleConfig) -> list[str]:
    args = ["--timesteps", str(cfg.timesteps), "--seed", str(cfg.seed)]
    if cfg.train_batch_size:
        args += ["--train_batch_size", str(cfg.train_batch_size), "--minibatch_size",
                 str(min(128, cfg.train_batch_size))]
    if cfg.num_env_runners is not None:
        args += ["--num_env_runners", str(cfg.num_env_runners)]
    return args


def crop_run(cfg: ScaleConfig, out: Path, label: str, policy: Path, photos: Path, extra: tuple[str, ...] = (),
             **kw) -> Run:
    folder = out / "crops" / label
    shutil.rmtree(folder, ignore_errors=True)
    run = photographer(cfg, out, label, ["crop", "--policy", str(policy), "--image", str(photos), "--out",
                                         str(folder), "--score" if cfg.crop_score else "--no-score", *extra],
                       journal=folder / "crops.jsonl", **kw)
    if not cfg.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return run


def stage3(cfg: ScaleConfig, out: Path, boot: Path, photos: Path) -> Run | None:
    """pairs -> SIMULATED answers -> reward model -> finetune; the finetune's run (None if a step before fails)."""
    store = out / "pairs" / "preferences.sqlite"
    steps = [("pairs", ["pairs", "--policy", str(boot), "--image", str(photos), "--num_pairs", str(cfg.pairs),
                        "--out", str(out / "pairs"), "--seed", str(cfg.seed)]),
             ("simulate", ["simulate", "--store", str(store), "--taste", cfg.taste, "--seed", str(cfg.seed)]),
             ("train-reward", ["train-reward", "--preference_data", str(store), "--out", str(out / "reward"),
                               "--seed", str(cfg.seed)])]
    for label, args in steps:
        if not photographer(cfg, out, label, args, pss=False).ok:
            return None
    return photographer(cfg, out, "finetune", ["finetune", "--policy", str(boot), "--human_reward_model",
                                               str(out / "reward" / "human_reward_model.pth"), "--image",
                                               str(photos), "--out", str(out / "finetune"), *ppo_args(cfg)],
                        progress=out / "finetune" / "progress.csv")


def personalization(spec: str | None) -> dict[str, str]:
    """{'accuracy': .., 'preferred': .., ...} from 'k=v,k=v' or a file's last 'personalization:' line."""
    if not spec:
        return {}
    if Path(spec).is_file():
        lines = [ln for ln in Path(spec).read_text().splitlines() if ln.startswith("personalization:")]
        if not lines:
            raise ValueError(f"{spec}: no 'personalization:' line")
        spec = lines[-1].split(":", 1)[1]
    return dict(kv.split("=", 1) for kv in re.split(r"[,\s]+", spec.strip()) if "=" in kv)


def _div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _f(x: float, fmt: str = ".2f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def run(cfg: ScaleConfig) -> dict[str, float]:
    data = Path(cfg.data_dir) / f"{cfg.long_side}px"
    out = Path(cfg.out or Path(cfg.data_dir) / f"run-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    big, small = cfg.sizes[-1], cfg.sizes[0]
    paths = make_photos(data / "photos", max(big, cfg.crop_photos, cfg.ray_photos), cfg.long_side, cfg.seed)
    sets = {n: photo_set(data, paths, n) for n in {*cfg.sizes, cfg.crop_photos, cfg.ray_photos}}
    t_start = time.time()

    print(f"\n=== bootstrap, --timesteps {cfg.timesteps}, on {', '.join(map(str, cfg.sizes))} photos ===", flush=True)
    boots = {n: photographer(cfg, out, f"bootstrap_{n}", ["bootstrap", "--image", str(sets[n]), "--out",
                                                          str(out / f"bootstrap_{n}"), *ppo_args(cfg)],
                             progress=out / f"bootstrap_{n}" / "progress.csv") for n in cfg.sizes}
    boot = out / f"bootstrap_{small}"
    have_boot = boots[small].ok

    print(f"\n=== stage 3 on the {small} photos: {cfg.pairs} pairs, SIMULATED taste {cfg.taste} ===", flush=True)
    final = stage3(cfg, out, boot, sets[small]) if have_boot else None
    have_final = final is not None and final.ok

    print(f"\n=== crop time per photo, one core, cold cache, {cfg.crop_photos} photos ===", flush=True)
    one = {"pss": False, "one_core": True}
    find = ("--no-write_crops",)
    crop_boot = crop_run(cfg, out, "crop_boot", boot, sets[cfg.crop_photos], find, **one) if have_boot else None
    crop_final = crop_run(cfg, out, "crop_final", out / "finetune", sets[cfg.crop_photos], find, **one) \
        if have_final else None
    crop_write = crop_run(cfg, out, "crop_boot_write", boot, sets[cfg.crop_photos], **one) if have_boot else None

    print(f"\n=== crop over {big} photos; Ray Data, 1 and 2 actors, over {cfg.ray_photos} ===", flush=True)
    crop_big = crop_run(cfg, out, f"crop_{big}", boot, sets[big]) if have_boot else None
    rays = {k: crop_run(cfg, out, f"crop_ray{k}", boot, sets[cfg.ray_photos], ("--ray", "--actors", str(k)),
                         min_updates=5)
            for k in (1, 2)} if have_boot else {}

    def ok(r: Run | None, value: float) -> float:
        return value if r is not None and r.ok else float("nan")

    res: dict[str, float] = {f"peak_gb_{n}": ok(r, r.peak_gb) for n, r in boots.items()}
    nan = float("nan")
    res["crop_ms_boot"] = ok(crop_boot, _div(1000, crop_boot.photos_per_s) if crop_boot else nan)
    res["crop_ms_final"] = ok(crop_final, _div(1000, crop_final.photos_per_s) if crop_final else nan)
    res["crop_ms_boot_write"] = ok(crop_write, _div(1000, crop_write.photos_per_s) if crop_write else nan)
    res["stage3_vs_stage1"] = ok(final, _div(final.steps_per_s, boots[small].steps_per_s) if final else nan)
    res[f"crop{big}_peak_gb"] = ok(crop_big, crop_big.peak_gb if crop_big else nan)
    res[f"crop{big}_photos_per_s"] = ok(crop_big, crop_big.photos_per_s if crop_big else nan)
    res["ray2_vs_ray1"] = ok(rays.get(2), _div(rays[2].photos_per_s, rays[1].photos_per_s) if rays and rays[1].ok
                             else nan)
    runs = [*boots.values(), final, crop_boot, crop_final, crop_write, crop_big, *rays.values()]
    (out / "scale.json").write_text(json.dumps({"results": res, "runs": [asdict(r) for r in runs if r]},
                                               indent=2) + "\n")
    report(cfg, res, boots, final, crop_big, rays, time.time() - t_start, out)
    return res


def report(cfg: ScaleConfig, res: dict[str, float], boots: dict[int, Run], final: Run | None,
           crop_big: Run | None, rays: dict[int, Run], seconds: float, out: Path) -> None:
    big, small = cfg.sizes[-1], cfg.sizes[0]
    side = f"{cfg.long_side}x{cfg.long_side * 3 // 4}"
    rows = []
    for n, r in boots.items():
        target = f"<= {TARGETS['peak_gb']:g} GB at 2000" if n == 2000 else ""
        if n == 2000 and 200 in boots:
            target += f"; <= {TARGETS['growth_200_to_2000']:.2f} x 200's ({_f(r.peak_gb / boots[200].peak_gb)} x)"
        rows.append((f"bootstrap, {n} photos: peak PSS (GB)", _f(res[f"peak_gb_{n}"]),
                     f"{target} {r.wall_s:.0f} s, {_f(r.steps_per_s, '.1f')} env steps/s; {r.procs}".strip()))
    rows.append((f"crop ms per {side} photo, one core, bootstrap", _f(res["crop_ms_boot"], ".1f"),
                 f"<= {TARGETS['crop_ms_boot']:g}"))
    rows.append((f"crop ms per {side} photo, one core, stage 3", _f(res["crop_ms_final"], ".1f"),
                 f"<= {TARGETS['crop_ms_final']:g}"))
    rows.append((f"crop ms per {side} photo, one core, bootstrap, crop file written", _f(res["crop_ms_boot_write"], ".1f"),
                 "no target: a full-resolution decode and a JPEG encode"))
    rows.append(("stage-3 / stage-1 env steps/s", _f(res["stage3_vs_stage1"]),
                 f">= {TARGETS['stage3_vs_stage1']:g}; {_f(final.steps_per_s if final else None, '.1f')} / "
                 f"{_f(boots[small].steps_per_s, '.1f')} on {small} photos; stage 3 peak "
                 f"{_f(final.peak_gb if final else None)} GB"))
    rows.append((f"crop over {big} photos: peak PSS (GB)", _f(res[f"crop{big}_peak_gb"]),
                 f"<= {TARGETS['crop_peak_gb']:g}; {crop_big.wall_s:.0f} s" if crop_big else ""))
    rows.append((f"crop over {big} photos: photos/s", _f(res[f"crop{big}_photos_per_s"]), ""))
    rows.append((f"crop --ray, 2 actors / 1, over {cfg.ray_photos} photos", _f(res["ray2_vs_ray1"]),
                 " / ".join(f"{_f(rays[k].photos_per_s)} photos/s ({rays[k].rate_from}), peak {_f(rays[k].peak_gb)} GB"
                            for k in (2, 1))
                 if rays else ""))
    for when in ("before", "after"):
        p = personalization(getattr(cfg, f"personalization_{when}"))
        rows.append((f"personalization {when}: accuracy / preferred",
                     f"{p.get('accuracy', 'n/a')} / {p.get('preferred', 'n/a')}",
                     "accuracy within 0.02 of before; >= 0.80 / >= 0.70"))
    print(f"\n=== scale ({seconds:.0f} s; results in {out}) ===\n")
    print("| measurement | value | target; notes |\n|---|---|---|")
    for r in rows:
        print(f"| {' | '.join(r)} |")
    print()
    print("scale: " + " ".join(f"{k}={_f(v, '.1f' if k.startswith('crop_ms') else '.2f')}" for k, v in res.items()),
          flush=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run(parse_config(ScaleConfig, argv, prog="bench/scale.py"))


if __name__ == "__main__":
    main()
