"""The photo context: what every part of the system derives from a photo, computed once per photo, kept
on disk, and held in memory by a bounded number per process.

A context holds the photo's working-resolution pixels (long side WORK_LONG_SIDE, decoded at that size),
the frozen Lite0's feature map (rlhf.feature_map) and the heads in it (rlhf.faces): the expensive part,
about 0.75 MB a photo. Everything else that env, scorers, reward model and simulated tastes need
(saliency maps, summed-area tables, BRISQUE tables, thumbnails) is derived from those in a few
milliseconds and kept with the context in memory (``PhotoContext.derived``), so it leaves memory when
the context does: one LRU per process bounds every per-photo cache.

On disk: one file per photo and settings, ``<cache>/<hash[:2]>/<hash>-<settings>.safetensors``, keyed by
the file's content hash (a changed file is another photo) and a digest of the settings that shaped it.
Why safetensors: a documented, widely used tensor format with no code execution on load (unlike pickle,
torch.save or np.load with objects), a JSON header for metadata, and a layout the library memory-maps.
Every file carries a BLAKE2 digest of its arrays in that header and is verified on read; a file that
does not parse or verify is rebuilt. Writers write a private temporary file and rename it into place
(atomic on POSIX), so concurrent writers (env runners, Tune trials) never leave a torn file: the last
complete one wins, and every one of them is correct.

Where: ``$PHOTOGRAPHER_CACHE`` if set (``off`` disables the disk cache), else
``$XDG_CACHE_HOME/rlhf-photographer/contexts`` (``~/.cache/...``). On a cluster each node may keep its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rlhf.allocator import tune_malloc
from rlhf.cache import LRUCache
from rlhf.images import Photo, clip_box, resize

CONTEXT_VERSION = 1
# Long side of the working pixels: the largest any consumer reads (faces and BRISQUE at 384, the
# feature map at 320, thumbnails at 256).
WORK_LONG_SIDE = 384
# Bytes of contexts (with what was derived from them) one process keeps in memory.
DEFAULT_MEMORY_BYTES = 768 << 20
CACHE_ENV = "PHOTOGRAPHER_CACHE"
MEMORY_ENV = "PHOTOGRAPHER_CONTEXT_MEMORY_MB"

T = TypeVar("T")
log = logging.getLogger(__name__)


def _nbytes(value: Any, depth: int = 0) -> int:
    """Bytes held by numpy arrays in a value (arrays, tuples, lists, dicts, objects two levels down)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if depth > 2:
        return 0
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v, depth + 1) for v in value.values())
    if hasattr(value, "__dict__"):
        return sum(_nbytes(v, depth + 1) for v in vars(value).values())
    return 0


class PhotoContext:
    """A photo's context: `width` x `height` (the photo as loaded), `work` (RGB uint8, long side
    <= WORK_LONG_SIDE), `fmap` (the frozen Lite0's last feature map, float32 (1280, h, w)) and `heads`
    ((n, 4) in photo pixels), plus whatever consumers derive from them (`derived`)."""

    def __init__(self, digest: str, width: int, height: int, work: np.ndarray, fmap: np.ndarray,
                 heads: np.ndarray):
        self.digest, self.width, self.height = digest, int(width), int(height)
        self.work, self.fmap, self.heads = work, fmap, heads
        self._derived: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        self.nbytes = work.nbytes + fmap.nbytes + heads.nbytes

    @property
    def scale(self) -> float:
        """Working pixels per photo pixel (<= 1)."""
        return self.work.shape[1] / self.width

    def derived(self, name: Hashable, build: Callable[[PhotoContext], T]) -> T:
        """`build(self)`, computed once per context and kept with it (`name` must say what shaped it)."""
        with self._lock:
            if name in self._derived:
                return self._derived[name]
        value = build(self)  # outside the lock: two threads may both build; the first one kept wins
        with self._lock:
            if name not in self._derived:
                self._derived[name] = value
                self.nbytes += _nbytes(value)
            return self._derived[name]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"work": self.work, "fmap": self.fmap, "heads": self.heads}


def settings() -> dict[str, Any]:
    """What shapes a context: a cached file made under other settings is another file."""
    from rlhf.backbone import DEFAULT_BACKBONE
    from rlhf.faces import FACE_LONG_SIDE, FACE_SCALE_STEP
    from rlhf.feature_map import FEATURE_LONG_SIDE, feature_precision

    return {"version": CONTEXT_VERSION, "work": WORK_LONG_SIDE, "feature_long_side": FEATURE_LONG_SIDE,
            "backbone": DEFAULT_BACKBONE, "precision": feature_precision(),
            "faces": [FACE_LONG_SIDE, FACE_SCALE_STEP]}


def build_context(photo: Photo) -> PhotoContext:
    """Compute a photo's context (decode at working size, one Lite0 pass, the face cascade)."""
    from rlhf.faces import detect_heads
    from rlhf.feature_map import feature_map

    work = photo.load(WORK_LONG_SIDE)
    return PhotoContext(photo.digest(), photo.width, photo.height, work, feature_map(work),
                        detect_heads(work, photo.width, photo.height))


def _digest_arrays(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ContextStore:
    """Photo contexts by content: in memory (an LRU bounded by bytes), then on disk, then computed.

    root: the disk cache folder, or None for memory only. max_bytes: the memory bound (the most
    recently used context is always kept). Thread-safe; many processes may share one root.
    """

    def __init__(self, root: str | Path | None, max_bytes: int = DEFAULT_MEMORY_BYTES):
        tune_malloc()  # a process that holds photo contexts reuses their working memory (rlhf.allocator)
        self.root = None if root is None else Path(root)
        self._settings = settings()
        self._settings_key = hashlib.blake2b(json.dumps(self._settings, sort_keys=True).encode(),
                                             digest_size=6).hexdigest()
        self._mem: LRUCache[str, PhotoContext] = LRUCache(max_weight=max_bytes, weight=lambda c: c.nbytes)
        self.built = self.read = self.rebuilt = 0

    def path(self, digest: str) -> Path:
        assert self.root is not None
        return self.root / digest[:2] / f"{digest}-{self._settings_key}.safetensors"

    def get(self, photo: Photo) -> PhotoContext:
        """The photo's context; raises rlhf.images.ImageLoadError if the photo cannot be decoded."""
        digest = photo.digest()
        ctx = self._mem.get(digest)
        if ctx is None:
            ctx = self._load(digest, photo) if self.root is not None else None
            if ctx is None:
                ctx = build_context(photo)
                self.built += 1
                if self.root is not None:
                    self._save(ctx)
        # Put back on every use: the weight grows as consumers derive more from the context.
        self._mem.put(digest, ctx)
        return ctx

    def forget(self) -> None:
        """Drop every context held in memory (the disk cache stays)."""
        self._mem.clear()

    def _load(self, digest: str, photo: Photo) -> PhotoContext | None:
        from safetensors import SafetensorError, safe_open

        path = self.path(digest)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
            ok = (meta.get("digest") == _digest_arrays(arrays)
                  and json.loads(meta.get("settings", "null")) == self._settings
                  and json.loads(meta.get("size", "null")) == [photo.width, photo.height]
                  and set(arrays) == {"work", "fmap", "heads"})
        except (SafetensorError, OSError, ValueError) as e:
            ok, arrays = False, {}
            log.debug("context %s unreadable: %s", path, e)
        if not ok:
            log.warning("context cache entry %s is corrupt or stale: rebuilding it", path)
            self.rebuilt += 1
            path.unlink(missing_ok=True)
            return None
        self.read += 1
        return PhotoContext(digest, photo.width, photo.height, arrays["work"], arrays["fmap"], arrays["heads"])

    def _save(self, ctx: PhotoContext) -> None:
        from safetensors.numpy import save

        arrays = {k: np.ascontiguousarray(v) for k, v in ctx.arrays().items()}
        meta = {"digest": _digest_arrays(arrays), "settings": json.dumps(self._settings),
                "size": json.dumps([ctx.width, ctx.height])}
        path = self.path(ctx.digest)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # No fsync: a file torn by a power cut fails its digest and is rebuilt, so durability
            # is not worth the write's wait.
            tmp.write_bytes(save(arrays, metadata=meta))
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except OSError as e:  # a full or read-only disk costs speed, never a result
            log.warning("could not write context cache %s: %s", path, e)
            tmp.unlink(missing_ok=True)


def cache_root() -> Path | None:
    """The disk cache folder from the environment (see the module docstring); None when disabled."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none", "0") else Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rlhf-photographer" / "contexts"


_STORES: dict[tuple[Path | None, int], ContextStore] = {}
_STORES_LOCK = threading.Lock()


def store() -> ContextStore:
    """This process's store for the current environment (one per cache folder and memory bound)."""
    mb = os.environ.get(MEMORY_ENV)
    key = (cache_root(), DEFAULT_MEMORY_BYTES if not mb else int(float(mb) * (1 << 20)))
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = ContextStore(*key)
        return _STORES[key]


def context_of(photo: Photo) -> PhotoContext:
    """The photo's context from this process's store (see ContextStore.get)."""
    return store().get(photo)


def crop_resized(photo: Photo, box: Sequence[float], size: int | tuple[int, int]) -> np.ndarray:
    """The box (photo pixels) cut from the photo's working pixels and resized to `size`: what a model
    that reads crops at a few hundred pixels needs, without decoding the full-resolution photo."""
    ctx = context_of(photo)
    s = ctx.scale
    h, w = ctx.work.shape[:2]
    l, t, r, b = clip_box([v * s for v in box], w, h)
    return resize(ctx.work[t:b, l:r], size)
