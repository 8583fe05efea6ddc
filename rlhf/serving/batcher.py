"""The request batcher of the scoring actor: like Ray Serve's ``@serve.batch``, for one threaded actor.

Requests that arrive within a short window are scored as one batch, bounded by ``max_batch_size``
items and ``wait_s`` seconds after the first; requests also name their client, so the wait ends once
every active client has a request in the batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlhf.cache import LRUCache
from rlhf.images import Box, Photo


@dataclass
class Request:
    """Boxes of one photo to score for the given terms, or crops already resized (aesthetic only)."""

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

    def __init__(self, req: Request, client: str | None):
        self.req, self.client = req, client
        self.done = False
        self.value: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class Batcher:
    """Collects requests until `max_batch_size` items or `wait_s` after the first, then runs them as one.

    Like `@serve.batch`, with one refinement: requests name their client (one per env runner), and
    the wait ends as soon as every client heard from in the last `ACTIVE_S` seconds has a request in
    the batch, since an env runner sends its next request only after this one is answered. One
    client alone is never kept waiting; eight are batched as soon as the eighth arrives.

    The actor is threaded (each request on one of Ray's threads), since a Ray call to a threaded actor
    costs the actor less CPU than one to an async actor. Whichever request thread finds no
    batch being formed leads one: it waits for the batch to fill, runs it and hands out the answers,
    while the others sleep on a condition. A batch that fails is rerun request by request, so one
    bad request fails alone.
    """

    ACTIVE_S = 0.5

    def __init__(self, fn: Callable[[list[Request]], list[dict[str, np.ndarray]]], max_batch_size: int,
                 wait_s: float):
        self.fn = fn
        self.max_batch_size = max(1, int(max_batch_size))
        self.wait_s = max(0.0, float(wait_s))
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._leading = False
        # When each client last asked; the least recently seen are forgotten first.
        self._seen: LRUCache[str, float] = LRUCache(4096)
        self.batches = 0
        self.items = 0
        self.largest = 0

    def submit(self, req: Request, client: str | None = None) -> dict[str, np.ndarray]:
        """Score one request in the next batch; blocks until answered. Raises the request's own error."""
        slot = _Slot(req, client)
        with self._cond:
            if client is not None:
                self._seen.put(client, time.monotonic())
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
