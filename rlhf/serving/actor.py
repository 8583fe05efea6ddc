"""The scoring actor: one Ray actor scores crops for every env runner, batched, cached, restartable.

Why an actor: the models (aesthetic scorer, human reward model) are loaded once per cluster, not once
per env runner; on a GPU cluster they sit on the GPU, and requests from all runners that arrive within
a short window are scored as one batch (rlhf.serving.batcher), as Ray Serve's ``@serve.batch`` does.

Why not Ray Serve itself: it is not installed (``ray[serve]`` pulls grpc reflection, FastAPI and
uvicorn), and a Serve application adds a controller and an HTTP proxy actor that cost memory and
cores a small machine does not have; env runners would also reach it through a DeploymentHandle
instead of a plain named actor.

What travels: an env runner ``ray.put``s each photo once (a photo read from a file travels as its path
and size; the actor reads its context from the shared context cache, rlhf.context) and sends the photo
id and its boxes as bytes (16 bytes a box); the photo's ObjectRef goes along only until the actor has
fetched the photo into its bounded photo table (a restarted actor asks for it again). Sending crops already
resized to the model's input is the alternative (``transport="crops"``, crop-based scorers only);
``bench/scoring.py`` measures both, and the photo-aware default scorer and the human reward model
need the whole photo anyway. Box-level results are cached twice, both bounded LRUs keyed by
(photo id, box): here (shared by all runners) and in each client (rlhf.serving.client.ServiceReward).

Placement (``placement``): on a cluster with GPUs the actor asks for ``num_gpus`` (1 when the
cluster has two or more, else 0.5 so a stage-1 and a stage-3 actor, or a GPU learner that reserves a
share, still fit on one card), runs its models under bf16 autocast with channels_last weights, and
asks for one CPU to feed them; without GPUs it asks for ``num_cpus`` (1, or 2 on clusters of 16+ CPUs)
and sets torch's threads to that. It is named from the models it holds (``service_name``), so stage 1
and stage 3 in one cluster do not collide, and Tune trials that differ only in w_nima/w_human share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rlhf.cache import LRUCache
from rlhf.context import crop_resized
from rlhf.images import Box, Photo
from rlhf.reward.spec import AESTHETIC, HUMAN, RewardSpec, terms_of
from rlhf.serving.batcher import Batcher, Request

NAME_PREFIX = "photographer-scoring-"
DEFAULT_CACHE_SIZE = 100_000          # (photo, box, term) -> float, about 20 MB when full
DEFAULT_PHOTO_BYTES = 1 << 30         # pixels the actor keeps (about 1300 photos of 512x512)
MAX_CONCURRENCY = 64                  # request threads; more requests wait in Ray's queue


class ScoringServiceError(RuntimeError):
    """The scoring actor could not be created or stayed unreachable past the retry deadline."""


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def held_models(spec: RewardSpec) -> dict[str, Any]:
    """What a service for `spec` loads: the scorer and/or the human model, with absolute paths."""
    held: dict[str, Any] = {}
    terms = terms_of(spec.kind)
    if AESTHETIC in terms:
        held["scorer"] = spec.scorer
        held["scorer_weights"] = _abs(spec.scorer_weights)
    if HUMAN in terms:
        path = _abs(spec.human_reward_model)
        held["human_reward_model"] = path
        # A retrained model at the same path is another model: its size and time change the name.
        if path and Path(path).is_file():
            st = Path(path).stat()
            held["human_reward_model_stamp"] = [st.st_size, st.st_mtime_ns]
    return held


def service_name(spec: RewardSpec, extra: dict[str, Any] | None = None) -> str:
    """The actor's name: a hash of the models it holds (not of w_nima/w_human, applied by clients)."""
    key = json.dumps({**held_models(spec), **(extra or {})}, sort_keys=True, default=str)
    return NAME_PREFIX + hashlib.sha1(key.encode()).hexdigest()[:12]


def placement(num_cpus: float | None = None, num_gpus: float | None = None) -> dict[str, float]:
    """Resources for the actor, from the cluster: a GPU (or a share of one) when there is one."""
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    cpus = float(res.get("CPU", 1))
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 2 else (0.5 if gpus > 0 else 0.0)
    if num_cpus is None:
        num_cpus = 1.0 if num_gpus or cpus < 16 else 2.0
    return {"num_cpus": float(num_cpus), "num_gpus": float(num_gpus)}


def _photo_bytes(photo: Photo) -> int:
    return max(1024, photo.nbytes)


def _is_crop_based(scorer: Any) -> bool:
    """True when the scorer scores crop pixels alone (the base class's score_boxes is not overridden)."""
    from rlhf.scorers import AestheticScorer

    return type(scorer).score_boxes is AestheticScorer.score_boxes


def _modules(obj: Any) -> list[Any]:
    """The torch modules an object holds directly or one level down (scorer.model, rm.featurizer.model)."""
    import torch

    found: list[Any] = []
    for value in vars(obj).values() if hasattr(obj, "__dict__") else []:
        if isinstance(value, torch.nn.Module):
            found.append(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            found.extend(v for v in vars(value).values() if isinstance(v, torch.nn.Module))
    return found


def clip_boxes(boxes: Sequence[Sequence[float]] | np.ndarray, width: int, height: int,
               where: str = "boxes") -> np.ndarray:
    """rlhf.images.clip_box for many boxes at once: (N, 4) int32, whole pixels, at least 1 pixel."""
    a = np.asarray(boxes, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 4), np.int32)
    if a.ndim != 2 or a.shape[1] != 4 or not np.isfinite(a).all():
        raise ValueError(f"{where}: boxes must be finite (left, top, right, bottom) rows, got shape {a.shape}")
    a = np.rint(a)  # half to even, as round() in clip_box
    l = np.clip(a[:, 0], 0, width - 1)
    t = np.clip(a[:, 1], 0, height - 1)
    r = np.minimum(np.maximum(a[:, 2], l + 1), width)
    b = np.minimum(np.maximum(a[:, 3], t + 1), height)
    return np.stack([l, t, r, b], axis=1).astype(np.int32)


class ScoringService:
    """Threaded actor holding the scorers; see the module docstring. Create it with `ensure_service`
    (rlhf.serving.client).

    Methods (photo_refs is a one-element list holding the ObjectRef of the photo's
    pixels, inside a list so Ray does not fetch it on every call):
      terms(photo_id, photo_refs, boxes, kinds) -> {kind: scores}   aesthetic on 1-10, human in [0, 1]
      score_packed(...) -> the same as bytes (what ServiceReward calls; photo_refs None = "you have it")
      aesthetic(...) / human(...) -> scores of one term
      aesthetic_crops(crops) -> scores of crops already resized to input_size (crop-based scorers)
      info() -> what it holds;  stats() -> counters;  clear_cache(); reset_stats(); configure(...)
    """

    def __init__(self, spec: dict[str, Any], max_batch_size: int = 64, batch_wait_s: float = 0.005,
                 cache_size: int = DEFAULT_CACHE_SIZE, photo_bytes: int = DEFAULT_PHOTO_BYTES,
                 num_threads: int | None = None, device: str = "auto", autocast: str = "auto",
                 scorer_kwargs: dict[str, Any] | None = None):
        import torch

        self.spec = RewardSpec(**{**spec, "service": None})
        self.kinds = terms_of(self.spec.kind)
        if device == "auto":
            device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.device = device
        threads = int(num_threads or max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        torch.set_num_threads(threads)
        with contextlib.suppress(Exception):
            import cv2

            cv2.setNumThreads(threads)
        self.threads = threads
        if autocast == "auto":
            autocast = "bfloat16" if device.startswith("cuda") else "none"
        self.autocast = autocast
        self.scorer = None
        self.human = None
        if AESTHETIC in self.kinds:
            from rlhf.scorers import create_scorer

            self.scorer = create_scorer(self.spec.scorer, weights=self.spec.scorer_weights, device=device,
                                        **(scorer_kwargs or {}))
        if HUMAN in self.kinds:
            from rlhf.preference import PreferenceRewardModel

            self.human = PreferenceRewardModel.load(self.spec.human_reward_model, device=device)
        if device.startswith("cuda"):
            for m in _modules(self.scorer) + _modules(self.human):
                m.to(memory_format=torch.channels_last)
        self.crop_based = self.scorer is not None and _is_crop_based(self.scorer)
        self.input_size = int(getattr(self.scorer, "input_size", 224))
        self._lock = threading.Lock()
        self.cache: LRUCache[Any, Any] = LRUCache(cache_size)
        # Photos held, bounded by bytes (the newest one is always kept).
        self.photos: LRUCache[str, Photo] = LRUCache(max_weight=photo_bytes, weight=_photo_bytes)
        self.photo_fetches = 0
        self.batcher = Batcher(self._compute, max_batch_size, batch_wait_s)
        self.started = time.time()
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.requests = 0
        self.boxes_asked = 0
        self.seconds_computing = 0.0
        self.client_recoveries = self.client_retries = 0
        self.client_wait_s = 0.0

    # -- compute (in the request thread leading the batch) ------------------------------------------
    def _autocast_ctx(self):
        import torch

        if self.autocast == "none":
            return contextlib.nullcontext()
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[self.autocast]
        return torch.autocast(self.device.split(":")[0], dtype=dtype)

    def _compute(self, reqs: list[Request]) -> list[dict[str, np.ndarray]]:
        """Score one batch: every distinct (photo, box) once, crops of all photos in one forward."""
        t0 = time.perf_counter()
        out: list[dict[str, np.ndarray]] = [{} for _ in reqs]
        with self._autocast_ctx():
            # Distinct boxes per photo, across requests (runners often ask for the same box).
            by_photo: dict[str, tuple[Photo, dict[Box, int]]] = {}
            for r in reqs:
                if r.photo is not None:
                    slot = by_photo.setdefault(r.photo.id, (r.photo, {}))[1]
                    for b in r.boxes:
                        slot.setdefault(b, len(slot))
            values: dict[str, dict[str, np.ndarray]] = {pid: {} for pid in by_photo}
            need_aesthetic = any(AESTHETIC in r.kinds for r in reqs)
            if self.scorer is not None and need_aesthetic:
                if self.crop_based:
                    crops = [r.crops for r in reqs if r.crops is not None]
                    for photo, slot in by_photo.values():
                        crops.append(np.stack([crop_resized(photo, b, self.input_size) for b in slot]))
                    scores = np.asarray(self.scorer.score(np.concatenate(crops)), dtype=np.float64)
                    at = 0
                    for i, r in enumerate(reqs):
                        if r.crops is not None:
                            out[i][AESTHETIC] = scores[at:at + len(r.crops)]
                            at += len(r.crops)
                    for pid, (_, slot) in by_photo.items():
                        values[pid][AESTHETIC] = scores[at:at + len(slot)]
                        at += len(slot)
                else:
                    if any(r.crops is not None for r in reqs):
                        raise ValueError("this scorer scores boxes of whole photos; send boxes, not crops")
                    for pid, (photo, slot) in by_photo.items():
                        values[pid][AESTHETIC] = np.asarray(self.scorer.score_boxes(photo, list(slot)), np.float64)
            if self.human is not None and any(HUMAN in r.kinds for r in reqs):
                for pid, (photo, slot) in by_photo.items():
                    values[pid][HUMAN] = np.asarray(self.human.human_score(photo, list(slot)), np.float64)
            for i, r in enumerate(reqs):
                if r.photo is None:
                    continue
                slot = by_photo[r.photo.id][1]
                idx = np.array([slot[b] for b in r.boxes], dtype=np.int64)
                for k in r.kinds:
                    out[i][k] = values[r.photo.id][k][idx]
        self.seconds_computing += time.perf_counter() - t0
        return out

    # -- requests (on Ray's request threads) -----------------------------------------------------
    def _photo(self, photo_id: str, photo_refs: Sequence[Any] | None) -> Photo:
        with self._lock:
            photo = self.photos.get(photo_id)
        if photo is not None:
            return photo
        if not photo_refs:
            raise KeyError(f"photo {photo_id!r} is not held by the scoring service and no pixels ref was sent")
        photo = ray.get(photo_refs[0])
        if not isinstance(photo, Photo) or photo.id != photo_id:
            raise ValueError(f"photo {photo_id!r}: the ref must hold that rlhf.images.Photo, got {photo!r}")
        with self._lock:
            self.photos.put(photo.id, photo)
            self.photo_fetches += 1
        return photo

    def _score(self, photo_id: str, photo_refs: Sequence[Any] | None, boxes: np.ndarray,
               kinds: tuple[str, ...], client: str | None) -> dict[str, np.ndarray] | None:
        """Scores of (N, 4) boxes; None when the photo is needed but neither held nor sent."""
        for k in kinds:
            if k not in self.kinds:
                raise ValueError(f"scoring service holds {list(self.kinds)}, not {k!r} (reward kind {self.spec.kind})")
        with self._lock:  # request threads share the tables and counters
            photo = self.photos.get(photo_id)
            self.requests += 1
            self.boxes_asked += len(boxes)
        if photo is not None:
            boxes = clip_boxes(boxes, photo.width, photo.height, f"photo {photo_id!r}")
        keys = [tuple(b) for b in boxes.tolist()]
        result = {k: np.empty(len(keys), dtype=np.float64) for k in kinds}
        missing: list[int] = []
        if self.cache.size == 0:
            missing = list(range(len(keys)))
        else:
            with self._lock:
                for i, b in enumerate(keys):
                    hit = [self.cache.get((photo_id, b, k)) for k in kinds]
                    if any(v is None for v in hit):
                        missing.append(i)
                    else:
                        for k, v in zip(kinds, hit, strict=True):
                            result[k][i] = v
        if not missing:
            return result
        if photo is None:
            if photo_refs is None:
                # Clients send the ref only until the actor has the photo (a nested ref costs every
                # call Ray's borrower bookkeeping): ask for it after a restart or an eviction.
                return None
            photo = self._photo(photo_id, photo_refs)
            boxes = clip_boxes(boxes, photo.width, photo.height, f"photo {photo_id!r}")
            keys = [tuple(b) for b in boxes.tolist()]
        todo = [keys[i] for i in missing]
        scored = self.batcher.submit(Request(photo, todo, kinds), client)
        for k in kinds:
            result[k][missing] = scored[k]
        if self.cache.size:
            with self._lock:
                for k in kinds:
                    for b, v in zip(todo, scored[k].tolist(), strict=True):
                        self.cache.put((photo_id, b, k), v)
        return result

    def terms(self, photo_id: str, photo_refs: Sequence[Any] | None, boxes: Sequence[Sequence[float]],
              kinds: Sequence[str] | None = None, client: str | None = None) -> dict[str, np.ndarray]:
        """{kind: scores} for the boxes of one photo; cached boxes are answered without batching."""
        arr = np.asarray(boxes, dtype=np.float64) if len(boxes) else np.zeros((0, 4))
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"photo {photo_id!r}: boxes must be (left, top, right, bottom) rows, got {boxes!r}")
        t = self._score(photo_id, photo_refs, arr, tuple(kinds or self.kinds), client)
        if t is None:
            raise KeyError(f"photo {photo_id!r} is not held by the scoring service: send its pixels ref")
        return t

    def score_packed(self, photo_id: str, photo_refs: Sequence[Any] | None, boxes: bytes, kinds: str,
                     client: str | None = None) -> bytes:
        """`terms` in the compact form ServiceReward uses: Ray sends bytes and strings faster than arrays
        and tuples. boxes: int32 (N, 4) bytes; kinds: "aesthetic,human"; returns
        float64 (len(kinds), N) bytes, or b"" when it needs the photo's ref."""
        arr = np.frombuffer(boxes, dtype=np.int32).reshape(-1, 4)
        t = self._score(photo_id, photo_refs, arr, tuple(kinds.split(",")), client)
        if t is None:
            return b""
        return np.stack([t[k] for k in kinds.split(",")]).tobytes()

    def aesthetic(self, photo_id: str, photo_refs: Sequence[Any] | None,
                  boxes: Sequence[Sequence[float]]) -> np.ndarray:
        return self.terms(photo_id, photo_refs, boxes, (AESTHETIC,))[AESTHETIC]

    def human(self, photo_id: str, photo_refs: Sequence[Any] | None,
              boxes: Sequence[Sequence[float]]) -> np.ndarray:
        return self.terms(photo_id, photo_refs, boxes, (HUMAN,))[HUMAN]

    def aesthetic_crops(self, crops: np.ndarray, client: str | None = None) -> np.ndarray:
        """Aesthetic scores of uint8 crops (N×S×S×3, S = input_size); crop-based scorers only."""
        if self.scorer is None or not self.crop_based:
            raise ValueError(f"scorer {self.spec.scorer!r} needs whole photos: send (photo, boxes), not crops")
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops must be uint8 N×H×W×3, got {crops.dtype} {crops.shape}")
        self.requests += 1
        self.boxes_asked += len(crops)
        return (self.batcher.submit(Request(None, [], (AESTHETIC,), crops=crops), client))[AESTHETIC]

    def info(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "spec": self.spec.to_dict(), "device": self.device,
                "threads": self.threads, "autocast": self.autocast, "crop_based": self.crop_based,
                "input_size": self.input_size, "max_batch_size": self.batcher.max_batch_size,
                "batch_wait_s": self.batcher.wait_s, "cache_size": self.cache.size}

    def stats(self) -> dict[str, Any]:
        b = self.batcher
        return {"pid": os.getpid(), "started": self.started,
                "restarted": self.restarted,
                "requests": self.requests, "boxes_asked": self.boxes_asked,
                "batches": b.batches, "batched_items": b.items, "largest_batch": b.largest,
                "mean_batch": b.items / b.batches if b.batches else 0.0,
                "cache_hits": self.cache.hits, "cache_misses": self.cache.misses, "cache_entries": len(self.cache),
                "photos": len(self.photos), "photo_bytes": int(self.photos.weight), "photo_fetches": self.photo_fetches,
                "seconds_computing": self.seconds_computing, "client_recoveries": self.client_recoveries,
                "client_retries": self.client_retries, "client_longest_wait_s": self.client_wait_s}

    def reset_stats(self) -> None:
        self.requests = self.boxes_asked = 0
        self.cache.hits = self.cache.misses = 0
        self.batcher.batches = self.batcher.items = self.batcher.largest = 0
        self.seconds_computing = 0.0

    def clear_cache(self, models: bool = False) -> None:
        """Forget cached box scores; with models=True also the models' own caches (photo contexts)."""
        with self._lock:
            self.cache.clear()
        if models:
            for obj in (self.scorer, getattr(self.human, "featurizer", None)):
                if hasattr(obj, "clear_caches"):
                    obj.clear_caches()

    def configure(self, max_batch_size: int | None = None, batch_wait_s: float | None = None,
                  cache_size: int | None = None) -> dict[str, Any]:
        """Change batching or the cache size of the running actor (benchmarks); returns info()."""
        if max_batch_size is not None:
            self.batcher.max_batch_size = max(1, int(max_batch_size))
        if batch_wait_s is not None:
            self.batcher.wait_s = max(0.0, float(batch_wait_s))
        if cache_size is not None:
            with self._lock:
                self.cache.resize(cache_size)
        return self.info()

    def client_recovered(self, retries: int, seconds: float) -> None:
        """A client reached this actor after `retries` failed tries (it had died or was restarting)."""
        self.client_recoveries += 1
        self.client_retries += int(retries)
        self.client_wait_s = max(self.client_wait_s, float(seconds))

    def ping(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float:
        """CPU time this actor's process has used (all threads): benchmarks on shared machines."""
        return time.process_time()
