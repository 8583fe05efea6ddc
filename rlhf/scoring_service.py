"""One Ray actor scores crops for every env runner: batched, cached, restartable.

Why an actor: the models (aesthetic scorer, human reward model) are loaded once per cluster, not once
per env runner; on a GPU cluster they sit on the GPU, and requests from all runners that arrive within
a short window are scored as one batch, as Ray Serve's ``@serve.batch`` does.

Why not Ray Serve itself: it is not installed (``ray[serve]`` pulls grpc reflection, FastAPI and
uvicorn), and a Serve application adds a controller and an HTTP proxy actor that cost memory and
cores a 2-core machine does not have; env runners would also reach it through a DeploymentHandle
instead of a plain named actor. The batcher it would give us is ~100 lines here (``_Batcher``), with
the same two knobs (``max_batch_size``, ``batch_wait_s``), and one more idea: requests name their
client, so the wait ends once every active client has a request in the batch.

What travels: an env runner ``ray.put``s each photo's pixels once and sends the photo id and its
boxes as bytes (16 bytes a box); the photo's ObjectRef goes along only until the actor has fetched
the photo into its bounded photo table (a restarted actor asks for it again). Sending crops already
resized to the model's input is the alternative (``transport="crops"``, crop-based scorers only);
``bench/scoring.py`` measures both, and the photo-aware default scorer and the human reward model
need the whole photo anyway. Box-level results are cached twice, both bounded LRUs keyed by
(photo id, box): in the actor (shared by all runners) and in each ServiceReward (saves the round
trip; episodes revisit boxes).

Placement (``ensure_service``): on a cluster with GPUs the actor asks for ``num_gpus`` (1 when the
cluster has two or more, else 0.5 so a stage-1 and a stage-3 actor, or a GPU learner that reserves a
share, still fit on one card), runs its models under bf16 autocast with channels_last weights, and
asks for one CPU to feed them; without GPUs it asks for ``num_cpus`` (1, or 2 on clusters of 16+ CPUs)
and sets torch's threads to that. It is a non-detached named actor, owned by the job's driver and
gone with it, named from the models it holds (so stage 1 and stage 3 in one cluster do not collide,
and Tune trials that differ only in w_nima/w_human share one). ``max_restarts=-1``: Ray restarts it
when it dies; ServiceReward then retries with backoff up to a deadline and raises
``ScoringServiceError`` if the service stays unreachable; it never returns a made-up reward.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
)

from rlhf.cache import LRUCache
from rlhf.images import Box, Photo
from rlhf.rewards import RewardSpec, combine

AESTHETIC = "aesthetic"
HUMAN = "human"
NAME_PREFIX = "photographer-scoring-"
DEFAULT_CACHE_SIZE = 100_000          # actor: (photo, box, kind) -> float, about 20 MB when full
DEFAULT_CLIENT_CACHE_SIZE = 20_000    # per env runner
DEFAULT_PHOTO_BYTES = 1 << 30         # pixels the actor keeps (about 1300 photos of 512x512)
MAX_CONCURRENCY = 64                  # request threads; more requests wait in Ray's queue


class ScoringServiceError(RuntimeError):
    """The scoring actor could not be created or stayed unreachable past the retry deadline."""


def _kinds_for(kind: str) -> tuple[str, ...]:
    return {"aesthetic": (AESTHETIC,), "human": (HUMAN,), "combined": (AESTHETIC, HUMAN)}[kind]


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def held_models(spec: RewardSpec) -> dict[str, Any]:
    """What a service for `spec` loads: the scorer and/or the human model, with absolute paths."""
    held: dict[str, Any] = {}
    if spec.kind in ("aesthetic", "combined"):
        held["scorer"] = spec.scorer
        held["scorer_weights"] = _abs(spec.scorer_weights)
    if spec.kind in ("human", "combined"):
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


def _photo_bytes(photo: Photo) -> int:
    return photo.pixels.nbytes


# ----------------------------------------------------------------------------------------------------
# The batcher: like @serve.batch, for one threaded actor
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Request:
    photo: Photo | None            # None for a crops request
    boxes: list[Box]
    kinds: tuple[str, ...]
    crops: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.boxes) if self.crops is None else len(self.crops)


class _Slot:
    """One request waiting in the batcher, and later its answer."""

    __slots__ = ("req", "client", "done", "value", "error")

    def __init__(self, req: _Request, client: str | None):
        self.req, self.client = req, client
        self.done = False
        self.value: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class _Batcher:
    """Collects requests until `max_batch_size` items or `wait_s` after the first, then runs them as one.

    Like `@serve.batch`, with one refinement: requests name their client (one per env runner), and
    the wait ends as soon as every client heard from in the last `ACTIVE_S` seconds has a request in
    the batch, since an env runner sends its next request only after this one is answered. One
    client alone is never kept waiting; eight are batched as soon as the eighth arrives.

    The actor is threaded (each request on one of Ray's threads): a Ray call to a threaded actor
    cost 0.45 ms of the actor's CPU here, to an async one 0.7 ms. Whichever request thread finds no
    batch being formed leads one: it waits for the batch to fill, runs it and hands out the answers,
    while the others sleep on a condition. A batch that fails is rerun request by request, so one
    bad request fails alone.
    """

    ACTIVE_S = 0.5

    def __init__(self, fn, max_batch_size: int, wait_s: float):
        self.fn = fn
        self.max_batch_size = max(1, int(max_batch_size))
        self.wait_s = max(0.0, float(wait_s))
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._leading = False
        self._seen: dict[str, float] = {}
        self.batches = 0
        self.items = 0
        self.largest = 0

    def submit(self, req: _Request, client: str | None = None) -> dict[str, np.ndarray]:
        slot = _Slot(req, client)
        with self._cond:
            if client is not None:
                self._seen[client] = time.monotonic()
            self._queue.append(slot)
            self._cond.notify_all()
        while True:
            with self._cond:
                while not slot.done and self._leading:
                    self._cond.wait()
                if slot.done:
                    break
                self._leading = True
                batch = self._collect()
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.value

    def _active(self, now: float) -> set[str]:
        if len(self._seen) > 4096:  # forget long-gone clients
            self._seen = {c: t for c, t in self._seen.items() if now - t < self.ACTIVE_S}
        return {c for c, t in self._seen.items() if now - t < self.ACTIVE_S}

    def _collect(self) -> list[_Slot]:
        """With the lock held: wait until the batch is worth running, then take it off the queue."""
        deadline = time.monotonic() + self.wait_s
        while True:
            if sum(s.req.size for s in self._queue) >= self.max_batch_size:
                break
            now = time.monotonic()
            clients = {s.client for s in self._queue}
            if None not in clients and self._active(now) <= clients:
                break  # everyone who is sending has a request in this batch
            if now >= deadline:
                break
            self._cond.wait(deadline - now)
        batch: list[_Slot] = []
        size = 0
        while self._queue and (not batch or size + self._queue[0].req.size <= self.max_batch_size):
            slot = self._queue.pop(0)
            batch.append(slot)
            size += slot.req.size
        return batch

    def _run(self, batch: list[_Slot]) -> None:
        self.batches += 1
        n = sum(s.req.size for s in batch)
        self.items += n
        self.largest = max(self.largest, n)
        try:
            for slot, value in zip(batch, self.fn([s.req for s in batch]), strict=True):
                slot.value = value
        except Exception as batch_error:  # noqa: BLE001 - handed to the caller(s)
            if len(batch) == 1:
                batch[0].error = batch_error
            else:  # rerun alone, so only the bad request fails
                for slot in batch:
                    try:
                        slot.value = self.fn([slot.req])[0]
                    except Exception as e:  # noqa: BLE001 - handed to the caller
                        slot.error = e
        for slot in batch:
            slot.done = True


# ----------------------------------------------------------------------------------------------------
# The actor
# ----------------------------------------------------------------------------------------------------
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
    """Threaded actor holding the scorers; see the module docstring. Create it with `ensure_service`.

    Methods (photo_refs is a one-element list holding the ObjectRef of the photo's
    pixels, inside a list so Ray does not fetch it on every call):
      terms(photo_id, photo_refs, boxes, kinds) -> {kind: scores}   aesthetic on 1-10, human in [0, 1]
      score_packed(...) -> the same as bytes (what ServiceReward calls; photo_refs None = "you have it")
      aesthetic(...) / human(...) -> scores;  reward(..., kind, w_nima, w_human) -> combined reward
      aesthetic_crops(crops) -> scores of crops already resized to input_size (crop-based scorers)
      info() -> what it holds;  stats() -> counters;  clear_cache(); reset_stats(); configure(...)
    """

    def __init__(self, spec: dict[str, Any], max_batch_size: int = 64, batch_wait_s: float = 0.005,
                 cache_size: int = DEFAULT_CACHE_SIZE, photo_bytes: int = DEFAULT_PHOTO_BYTES,
                 num_threads: int | None = None, device: str = "auto", autocast: str = "auto",
                 scorer_kwargs: dict[str, Any] | None = None):
        import torch

        self.spec = RewardSpec(**{**spec, "service": None})
        self.kinds = _kinds_for(self.spec.kind)
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
        self.batcher = _Batcher(self._compute, max_batch_size, batch_wait_s)
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

    def _compute(self, reqs: list[_Request]) -> list[dict[str, np.ndarray]]:
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
                        crops.append(np.stack([photo.crop_resized(b, self.input_size) for b in slot]))
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
        pixels = ray.get(photo_refs[0])
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"photo {photo_id!r}: pixels must be uint8 HxWx3, got {pixels.dtype} {pixels.shape}")
        photo = Photo(photo_id, pixels)
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
        scored = self.batcher.submit(_Request(photo, todo, kinds), client)
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
        """`terms` in the compact form ServiceReward uses: Ray sends bytes and strings ~0.3 ms faster a
        call than arrays and tuples. boxes: int32 (N, 4) bytes; kinds: "aesthetic,human"; returns
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

    def reward(self, photo_id: str, photo_refs: Sequence[Any] | None, boxes: Sequence[Sequence[float]],
               kind: str | None = None, w_nima: float | None = None, w_human: float | None = None
               ) -> np.ndarray:
        """The combined reward (rlhf.rewards.combine) with this actor's spec, or the given kind/weights."""
        spec = replace(self.spec, kind=kind or self.spec.kind,
                       w_nima=self.spec.w_nima if w_nima is None else w_nima,
                       w_human=self.spec.w_human if w_human is None else w_human)
        t = self.terms(photo_id, photo_refs, boxes, _kinds_for(spec.kind))
        return combine(t.get(AESTHETIC), t.get(HUMAN), spec)

    def aesthetic_crops(self, crops: np.ndarray, client: str | None = None) -> np.ndarray:
        """Aesthetic scores of uint8 crops (N×S×S×3, S = input_size); crop-based scorers only."""
        if self.scorer is None or not self.crop_based:
            raise ValueError(f"scorer {self.spec.scorer!r} needs whole photos: send (photo, boxes), not crops")
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops must be uint8 N×H×W×3, got {crops.dtype} {crops.shape}")
        self.requests += 1
        self.boxes_asked += len(crops)
        return (self.batcher.submit(_Request(None, [], (AESTHETIC,), crops=crops), client))[AESTHETIC]

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


# ----------------------------------------------------------------------------------------------------
# Creating it
# ----------------------------------------------------------------------------------------------------
_HANDLES: dict[str, Any] = {}


def _service_scorer_kwargs(spec: RewardSpec, given: dict[str, Any] | None) -> dict[str, Any]:
    from rlhf.scorers import training_scorer_kwargs  # lazy, as everywhere here: no torch at import

    return {**training_scorer_kwargs(spec.scorer), **(given or {})}


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


def ensure_service(spec: RewardSpec | dict[str, Any], name: str | None = None, max_batch_size: int = 64,
                   batch_wait_s: float = 0.005, cache_size: int = DEFAULT_CACHE_SIZE,
                   num_cpus: float | None = None, num_gpus: float | None = None,
                   photo_bytes: int = DEFAULT_PHOTO_BYTES, scorer_kwargs: dict[str, Any] | None = None,
                   timeout_s: float = 600.0) -> str:
    """Start the scoring actor for `spec` (or find the running one) and wait until its models load.

    Returns its name, to put into ``spec.service``. Needs Ray initialised (rayjobs.ppo.init_ray).
    Raises ScoringServiceError naming the model file when the models cannot be loaded.
    """
    spec = spec if isinstance(spec, RewardSpec) else RewardSpec(**spec)
    if not ray.is_initialized():
        raise ScoringServiceError("ensure_service needs Ray: call ray.init() (rayjobs.ppo.init_ray) first")
    held = held_models(spec)
    for key in ("scorer_weights", "human_reward_model"):
        if held.get(key) and not Path(held[key]).is_file():
            raise ScoringServiceError(f"{key}: {held[key]}: no such file")
    if name is None:
        name = service_name(spec, {"scorer_kwargs": scorer_kwargs} if scorer_kwargs else None)
    res = placement(num_cpus, num_gpus)
    actor_spec = {**spec.to_dict(), "service": None, "scorer_weights": held.get("scorer_weights"),
                  "human_reward_model": held.get("human_reward_model") or spec.human_reward_model}
    actor = ray.remote(ScoringService).options(
        name=name, get_if_exists=True, max_restarts=-1,
        # Clients retry themselves, with a deadline and a clear error, rather than Ray resubmitting
        # tasks without one.
        max_task_retries=0, max_concurrency=MAX_CONCURRENCY, **res,
    ).remote(actor_spec, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s, cache_size=cache_size,
             photo_bytes=photo_bytes, scorer_kwargs=_service_scorer_kwargs(spec, scorer_kwargs))
    try:
        ray.get(actor.ping.remote(), timeout=timeout_s)
    except RayActorError as e:
        raise ScoringServiceError(f"scoring service {name!r} failed to start (models {held}): {e}") from e
    except GetTimeoutError as e:
        raise ScoringServiceError(
            f"scoring service {name!r} did not start within {timeout_s:.0f}s; resources asked {res}, "
            f"cluster has {ray.cluster_resources()}") from e
    # A named actor is still garbage-collected when its creator drops the handle it got at creation
    # (handles found by name do not count): the creating process, the job's driver, keeps that one
    # for as long as it runs, and must not swap it for the by-name handle a later call returns.
    held_handle = _HANDLES.get(name)
    if held_handle is None or held_handle._actor_id != actor._actor_id:
        _HANDLES[name] = actor
    return name


def release_service(name: str | None) -> None:
    """Stop a service this process started (end of a stage): its CPU or GPU goes back to the cluster."""
    handle = _HANDLES.pop(name, None) if name else None
    if handle is not None:
        ray.kill(handle, no_restart=True)


def get_service(name: str):
    """The actor handle of a running service."""
    return ray.get_actor(name)


# ----------------------------------------------------------------------------------------------------
# The env's side
# ----------------------------------------------------------------------------------------------------
_RETRYABLE = (RayActorError, ActorUnavailableError, GetTimeoutError)


class _NotFound(Exception):
    """No actor has the service's name right now."""


class ServiceReward:
    """The reward function env runners use: `__call__(photo, boxes) -> rewards`, scored by the actor.

    One round trip per step gets every term the spec needs (stage 3: aesthetic and human together);
    they are combined here with the spec's weights. Photos go to the object store once per runner.
    On a dead or restarting actor it retries with backoff (`retries` counts them) until
    `deadline_s`, then raises ScoringServiceError; it never pays a made-up reward.
    """

    def __init__(self, spec: RewardSpec | dict[str, Any], cache_size: int = DEFAULT_CLIENT_CACHE_SIZE,
                 call_timeout_s: float = 60.0, deadline_s: float = 300.0, transport: str = "ref"):
        self.spec = spec if isinstance(spec, RewardSpec) else RewardSpec(**spec)
        if not self.spec.service:
            raise ValueError("ServiceReward needs spec.service: the scoring actor's name (see ensure_service)")
        if transport not in ("ref", "crops"):
            raise ValueError(f"transport must be 'ref' or 'crops', got {transport!r}")
        self.kinds = _kinds_for(self.spec.kind)
        self._kinds_wire = ",".join(self.kinds)
        if transport == "crops" and self.kinds != (AESTHETIC,):
            raise ValueError("transport='crops' serves the aesthetic reward only (the human model needs the photo)")
        self.transport = transport
        self.cache_size = cache_size
        self.call_timeout_s = float(call_timeout_s)
        self.deadline_s = float(deadline_s)
        self._setup()

    def _setup(self) -> None:
        self.client_id = uuid.uuid4().hex[:12]
        self._actor = None
        self._refs: dict[str, Any] = {}
        self._sent: set[str] = set()  # photos the actor has been sent (it says when it lost one)
        self._input_size: int | None = None
        self.cache = LRUCache(self.cache_size)
        self.calls = 0
        self.retries = 0
        self.last_error: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("spec", "kinds", "_kinds_wire", "transport", "cache_size",
                                               "call_timeout_s", "deadline_s")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def _call(self, method: str, *args: Any) -> Any:
        started = time.monotonic()
        deadline = started + self.deadline_s
        delay = 0.05
        tries = 0
        while True:
            try:
                if self._actor is None:
                    try:
                        self._actor = ray.get_actor(self.spec.service)
                    except ValueError as e:  # no actor of that name (yet, or any more)
                        raise _NotFound(str(e)) from e
                self.calls += 1
                result = ray.get(getattr(self._actor, method).remote(*args), timeout=self.call_timeout_s)
                if tries:
                    # Tell the service (fire and forget): its stats then show that clients rode out
                    # its death, which an operator, and the fault test, can see.
                    self._actor.client_recovered.remote(tries, time.monotonic() - started)
                return result
            except (*_RETRYABLE, _NotFound, ObjectLostError, OwnerDiedError) as e:
                if isinstance(e, (ObjectLostError, OwnerDiedError)):
                    self._refs.clear()  # pixels lost from the object store: put them again
                self.retries += 1
                tries += 1
                self._sent.clear()
                self.last_error = f"{type(e).__name__}: {e}"
                self._actor = None  # look it up again: it may have been restarted or recreated
                if time.monotonic() + delay > deadline:
                    raise ScoringServiceError(
                        f"scoring service {self.spec.service!r} unreachable for {self.deadline_s:.0f}s "
                        f"after {self.retries} retries; last error: {self.last_error}") from e
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def _ref(self, photo: Photo) -> list[Any]:
        ref = self._refs.get(photo.id)
        if ref is None:
            ref = self._refs[photo.id] = ray.put(np.ascontiguousarray(photo.pixels))
        return [ref]

    def terms(self, photo: Photo, boxes: Sequence[Box]) -> dict[str, np.ndarray]:
        """{kind: scores} for the boxes (aesthetic on 1-10, human in [0, 1]), as LocalReward.terms."""
        arr = clip_boxes(boxes, photo.width, photo.height, f"photo {photo.id!r}")
        out = {k: np.empty(len(arr), dtype=np.float64) for k in self.kinds}
        if self.cache.size:
            keys = [(photo.id, tuple(b)) for b in arr.tolist()]
            missing = []
            for i, key in enumerate(keys):
                hit = self.cache.get(key)
                if hit is None:
                    missing.append(i)
                else:
                    for j, k in enumerate(self.kinds):
                        out[k][i] = hit[j]
        else:
            missing = list(range(len(arr)))
        if not missing:
            return out
        todo = arr[missing]
        if self.transport == "crops":
            if self._input_size is None:
                self._input_size = int(self._call("info")["input_size"])
            crops = np.stack([photo.crop_resized(b, self._input_size) for b in todo.tolist()])
            got = np.asarray(self._call("aesthetic_crops", crops, self.client_id))[None]
        else:
            wire = todo.tobytes()
            refs = None if photo.id in self._sent else self._ref(photo)
            raw = self._call("score_packed", photo.id, refs, wire, self._kinds_wire, self.client_id)
            if not raw:  # the actor lost the photo (restart, eviction): send its ref
                raw = self._call("score_packed", photo.id, self._ref(photo), wire, self._kinds_wire, self.client_id)
            self._sent.add(photo.id)
            got = np.frombuffer(raw, dtype=np.float64).reshape(len(self.kinds), -1)
        for j, k in enumerate(self.kinds):
            out[k][missing] = got[j]
        if self.cache.size:
            for n, i in enumerate(missing):
                self.cache.put(keys[i], tuple(got[:, n].tolist()))
        return out

    def __call__(self, photo: Photo, boxes: Sequence[Box]) -> np.ndarray:
        t = self.terms(photo, boxes)
        return combine(t.get(AESTHETIC), t.get(HUMAN), self.spec)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "retries": self.retries, "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses, "photos_put": len(self._refs), "last_error": self.last_error}
