"""The scoring actor's clients: starting and stopping it (the job's driver), and the served reward.

``ensure_service`` starts the actor (rlhf.serving.actor) as a non-detached named actor, owned by the
job's driver and gone with it; ``release_service`` stops it at the end of a stage. ``max_restarts=-1``:
Ray restarts it when it dies. ``ServiceReward`` is the reward function env runners use: on a dead or
restarting actor it retries with backoff up to a deadline and raises ``ScoringServiceError`` if the
service stays unreachable; it never returns a made-up reward.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
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
from rlhf.context import crop_resized
from rlhf.images import Box, Photo
from rlhf.reward.spec import AESTHETIC, RewardSpec, TermsReward, terms_of
from rlhf.serving.actor import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_PHOTO_BYTES,
    MAX_CONCURRENCY,
    ScoringService,
    ScoringServiceError,
    clip_boxes,
    held_models,
    placement,
    service_name,
)

DEFAULT_CLIENT_CACHE_SIZE = 20_000    # boxes a ServiceReward remembers (one per env runner)

# ----------------------------------------------------------------------------------------------------
# Starting and stopping the actor
# ----------------------------------------------------------------------------------------------------
_HANDLES: dict[str, Any] = {}


def ensure_service(spec: RewardSpec | dict[str, Any], name: str | None = None, max_batch_size: int = 64,
                   batch_wait_s: float = 0.005, cache_size: int = DEFAULT_CACHE_SIZE,
                   num_cpus: float | None = None, num_gpus: float | None = None,
                   photo_bytes: int = DEFAULT_PHOTO_BYTES, scorer_kwargs: dict[str, Any] | None = None,
                   timeout_s: float = 600.0) -> str:
    """Start the scoring actor for `spec` (or find the running one) and wait until its models load.

    Returns its name, to put into ``spec.service``. Needs Ray initialised (rayjobs.training.init_ray).
    Raises ScoringServiceError naming the model file when the models cannot be loaded.
    """
    spec = spec if isinstance(spec, RewardSpec) else RewardSpec(**spec)
    if not ray.is_initialized():
        raise ScoringServiceError("ensure_service needs Ray: call ray.init() (rayjobs.training.init_ray) first")
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
             photo_bytes=photo_bytes, scorer_kwargs=scorer_kwargs or {})
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


# ----------------------------------------------------------------------------------------------------
# The env's side
# ----------------------------------------------------------------------------------------------------
_RETRYABLE = (RayActorError, ActorUnavailableError, GetTimeoutError)


class _NotFound(Exception):
    """No actor has the service's name right now."""


class ServiceReward(TermsReward):
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
        self.kinds = terms_of(self.spec.kind)
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
            ref = self._refs[photo.id] = ray.put(photo)
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
            crops = np.stack([crop_resized(photo, b, self._input_size) for b in todo.tolist()])
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

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "retries": self.retries, "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses, "photos_put": len(self._refs), "last_error": self.last_error}
