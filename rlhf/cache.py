"""The one bounded least-recently-used cache of the project.

Where keys are hashable and the cached thing is a pure function of its arguments, use
``functools.lru_cache`` at the call site instead; this class is for caches that are filled
explicitly (``get`` / ``put``), need a bound by weight (e.g. bytes), are resized at run time or
report their hits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(_value: object) -> float:
    return 1


class LRUCache(Generic[K, V]):
    """A thread-safe mapping that forgets its least recently used entries beyond its bounds.

    Args:
        size: most entries kept; 0 disables the cache (``put`` stores nothing). ``None``: no count bound.
        max_weight: most total weight kept, with ``weight(value)`` giving each entry's weight (e.g.
            bytes); the newest entry is always kept, even alone over the bound. ``None``: no weight bound.
        weight: the weight of a value; default 1 per entry.
    """

    def __init__(self, size: int | None = None, max_weight: float | None = None,
                 weight: Callable[[V], float] | None = None):
        self.size = None if size is None else max(0, int(size))
        self.max_weight = max_weight
        self._weight = weight or _one
        self._d: OrderedDict[K, V] = OrderedDict()
        # Each entry's weight as it was counted: a value may grow after it was stored (a photo context
        # gains derived tables), and storing it again must take off what was counted, not its new weight.
        self._counted: dict[K, float] = {}
        self._lock = threading.Lock()
        self.weight = 0.0  # total weight held
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        """The value under key (marking it most recently used), or None."""
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
                return None
            self.hits += 1
            self._d.move_to_end(key)
            return v

    def put(self, key: K, value: V) -> None:
        """Store value under key as the most recently used entry, then evict beyond the bounds."""
        if self.size == 0:
            return
        with self._lock:
            self._d.pop(key, None)
            self.weight -= self._counted.pop(key, 0.0)
            self._d[key] = value
            self._counted[key] = w = self._weight(value)
            self.weight += w
            self._trim()

    def resize(self, size: int | None) -> None:
        """Change the count bound (evicting at once if it shrank)."""
        with self._lock:
            self.size = None if size is None else max(0, int(size))
            self._trim()

    def _trim(self) -> None:
        while self._d and ((self.size is not None and len(self._d) > self.size)
                           or (self.max_weight is not None and self.weight > self.max_weight
                               and len(self._d) > 1)):
            gone, _ = self._d.popitem(last=False)
            self.weight -= self._counted.pop(gone)

    def items(self) -> list[tuple[K, V]]:
        """The entries, least recently used first (a copy; marks nothing as used)."""
        with self._lock:
            return list(self._d.items())

    def __getstate__(self) -> dict:
        # A lock cannot be pickled; objects holding a cache (the env, a featurizer) travel to Ray workers.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        """Forget every entry (the hit counts stay)."""
        with self._lock:
            self._d.clear()
            self._counted.clear()
            self.weight = 0.0
