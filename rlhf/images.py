"""Loading photos safely: EXIF orientation, any mode to RGB, a pixel limit, clear errors.

A photo collection is given as a file, a folder or a glob. Unusable files in a collection are
skipped with one line each on stderr (`skipped <file>: <reason>`, through logging); a collection
fails only when nothing usable is left.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PHOTOS_DIR = Path(__file__).resolve().parent / "data" / "photos"
TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "china", "motorcycle", "camera", "cheetah", "cheetah2", "lion",
                "tower", "baboon", "building", "messi", "orange", "plant", "aerial", "leuven", "notebook", "robin",
                "circuit")
HELDOUT_PHOTOS = ("coffee", "flower", "grace_hopper", "butterfly", "squirrel", "home", "desk", "fruits", "apple")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# 64 MP: larger than any camera photo a user crops, far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000

Box = tuple[int, int, int, int]
"""A crop box (left, top, right, bottom) in pixels of the photo as loaded; right/bottom exclusive."""

log = logging.getLogger(__name__)


class ImageLoadError(ValueError):
    """A file that cannot be used as a photo; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class Photo:
    """A photo: its id, its size as loaded (EXIF orientation applied) and its pixels on demand.

    Three kinds, one interface: in memory (``Photo(id, pixels)``), a file read lazily
    (``Photo.from_path``: only the header is read up front; full-resolution pixels are decoded when
    asked for, and not kept) and a window of another photo (``view``, e.g. rlhf.images.augmented_variants).
    Everything that works at reduced resolution asks for ``load(long_side)``, which a JPEG decodes at
    that size directly (the decoder's DCT scaling: about 6x faster than a full decode).
    Photos compare and hash by id.
    """

    def __init__(self, id: str, pixels: np.ndarray | None = None, *, path: str | Path | None = None,
                 size: tuple[int, int] | None = None):
        self.id = id
        self._pixels = None if pixels is None else np.ascontiguousarray(pixels)
        self.path = None if path is None else Path(path)
        if self._pixels is not None:
            self.width, self.height = int(self._pixels.shape[1]), int(self._pixels.shape[0])
        elif self.path is not None and size is not None:
            self.width, self.height = int(size[0]), int(size[1])
        else:
            raise ValueError("Photo needs pixels, or a path and its size (use Photo.from_path)")
        self._digest: tuple[tuple[int, int], str] | None = None

    @classmethod
    def from_path(cls, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
        """A photo read lazily from its file; raises ImageLoadError if the header is unusable."""
        return cls(photo_id(path), path=path, size=image_size(path, max_pixels))

    def __repr__(self) -> str:
        return f"Photo({self.id!r}, {self.width}x{self.height})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Photo) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __getstate__(self) -> dict:
        return self.__dict__.copy()

    @property
    def nbytes(self) -> int:
        """Bytes of pixels this object holds (0 for a file or a view: they decode on demand)."""
        return 0 if self._pixels is None else self._pixels.nbytes

    @property
    def pixels(self) -> np.ndarray:
        """Full-resolution RGB uint8 (H, W, 3); a file photo decodes it on every call (nothing is kept)."""
        if self._pixels is not None:
            return self._pixels
        px = load_image(self.path)
        if px.shape[:2] != (self.height, self.width):
            raise ImageLoadError(self.path, f"changed on disk: now {px.shape[1]}x{px.shape[0]}, "
                                 f"listed as {self.width}x{self.height}")
        return px

    def load(self, long_side: int) -> np.ndarray:
        """The photo with its long side at most `long_side` (never enlarged), area-filtered."""
        if self._pixels is not None:
            return fit_long_side(self._pixels, long_side)
        px = load_image(self.path, reduce_to=long_side)
        if abs(px.shape[0] - self.height * px.shape[1] / self.width) > 2:  # a reduced decode keeps the aspect
            raise ImageLoadError(self.path, f"changed on disk: now {px.shape[1]}x{px.shape[0]} at reduced size, "
                                 f"listed as {self.width}x{self.height}")
        return fit_long_side(px, long_side, size=scaled_size(self.width, self.height, long_side))

    def digest(self) -> str:
        """A content hash: of the file's bytes (hashed again when its size or mtime changes), or of
        the pixels. Caches key photos by what they are rather than where they lie."""
        if self._pixels is not None:
            if self._digest is None:
                self._digest = ((0, 0), fingerprint(self._pixels))
            return self._digest[1]
        st = self.path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if self._digest is None or self._digest[0] != stamp:
            h = hashlib.blake2b(digest_size=16)
            with open(self.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            self._digest = (stamp, h.hexdigest())
        return self._digest[1]

    @property
    def full_box(self) -> Box:
        return (0, 0, self.width, self.height)

    def crop(self, box: Sequence[float]) -> np.ndarray:
        l, t, r, b = clip_box(box, self.width, self.height)
        return self.pixels[t:b, l:r]

    def crop_resized(self, box: Sequence[float], size: int | tuple[int, int]) -> np.ndarray:
        return resize(self.crop(box), size)

    def view(self, x0: int, y0: int, w: int, h: int, mirror: bool = False) -> Photo:
        """The window (x0, y0, w, h) of this photo, mirrored left-right if asked, as a photo of its own."""
        return PhotoView(self, (x0, y0, w, h), mirror)


class PhotoView(Photo):
    """A window of another photo (optionally mirrored); pixels come from the parent on demand."""

    def __init__(self, parent: Photo, window: tuple[int, int, int, int], mirror: bool):
        x0, y0, w, h = (int(v) for v in window)
        if not (0 <= x0 and 0 <= y0 and w >= 1 and h >= 1 and x0 + w <= parent.width and y0 + h <= parent.height):
            raise ValueError(f"window {window} outside {parent!r}")
        self.id = f"{parent.id}#aug{x0},{y0},{w},{h},{int(mirror)}"
        self.parent, self.window, self.mirror = parent, (x0, y0, w, h), bool(mirror)
        self._pixels, self.path = None, None
        self.width, self.height = w, h
        self._digest = None

    def _cut(self, px: np.ndarray, scale: float) -> np.ndarray:
        x0, y0, w, h = self.window
        l, t = int(round(x0 * scale)), int(round(y0 * scale))
        r = min(px.shape[1], max(l + 1, int(round((x0 + w) * scale))))
        b = min(px.shape[0], max(t + 1, int(round((y0 + h) * scale))))
        out = px[t:b, l:r]
        return np.ascontiguousarray(out[:, ::-1] if self.mirror else out)

    @property
    def pixels(self) -> np.ndarray:
        return self._cut(self.parent.pixels, 1.0)

    def load(self, long_side: int) -> np.ndarray:
        # The parent at the scale that gives this window `long_side` pixels, then the window.
        s = min(1.0, long_side / max(self.width, self.height))
        parent_side = math.ceil(max(self.parent.width, self.parent.height) * s)
        px = self.parent.load(parent_side)
        cut = self._cut(px, px.shape[1] / self.parent.width)
        return fit_long_side(cut, long_side, size=scaled_size(self.width, self.height, long_side))

    def digest(self) -> str:
        key = f"{self.parent.digest()}:{self.window}:{int(self.mirror)}"
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def clip_box(box: Sequence[float], width: int, height: int) -> Box:
    """Round a box to whole pixels inside the photo, at least 1 pixel each way."""
    l, t, r, b = (int(round(float(v))) for v in box)
    l = min(max(l, 0), width - 1)
    t = min(max(t, 0), height - 1)
    r = min(max(r, l + 1), width)
    b = min(max(b, t + 1), height)
    return (l, t, r, b)


def resize(pixels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB to size (square int, or (width, height)); area filter when shrinking."""
    w, h = (size, size) if isinstance(size, int) else size
    shrinking = w <= pixels.shape[1] and h <= pixels.shape[0]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(pixels), (w, h), interpolation=interp)


def scaled_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) scaled so the long side is at most `long_side` (never enlarged), >= 1 each."""
    s = min(1.0, long_side / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def fit_long_side(pixels: np.ndarray, long_side: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The pixels resized to `size`, by default scaled_size of their own: long side <= long_side."""
    size = size or scaled_size(pixels.shape[1], pixels.shape[0], long_side)
    if (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    return resize(pixels, size)


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / float greyscale: scale the used range to 8 bits rather than clipping it to white.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: transparent pixels are not black content.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


@contextlib.contextmanager
def _opened(path: str | Path, max_pixels: int) -> Iterator[Image.Image]:
    """The file opened by PIL, its size checked against max_pixels before any pixel is decoded; every
    failure inside the block (decoding included) becomes an ImageLoadError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(p, "no such file")
    try:
        with Image.open(p) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(p, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            yield img
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(p, f"refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(p, "not an image (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(p, f"corrupt or truncated image ({e})") from e


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None) -> np.ndarray:
    """Load one photo as RGB uint8 (H, W, 3), EXIF orientation applied.

    reduce_to: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose long side is still
    >= reduce_to, which is much faster than a full decode (other formats decode in full); None: full size.
    Raises ImageLoadError naming the file for missing, corrupt, truncated, non-image or oversized
    input (a decompression bomb is refused before its pixels are decoded).
    """
    with _opened(path, max_pixels) as img:
        w, h = img.size
        if reduce_to is not None and max(w, h) > reduce_to:
            k = reduce_to / max(w, h)
            img.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))
        img.load()
        arr = _to_rgb(ImageOps.exif_transpose(img))
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 8:
        raise ImageLoadError(path, f"unusable image shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


# EXIF orientations that turn the photo a quarter: width and height swap.
_QUARTER_TURNS = {5, 6, 7, 8}


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a photo as loaded (EXIF orientation applied), from its header alone.

    Raises ImageLoadError for missing, non-image or oversized files; a truncated file passes here and
    fails when its pixels are decoded.
    """
    with _opened(path, max_pixels) as img:
        w, h = img.size
        turned = img.getexif().get(0x0112) in _QUARTER_TURNS
    if min(w, h) < 8:
        raise ImageLoadError(path, f"unusable image size {w}x{h}")
    return (h, w) if turned else (w, h)


def resolve_paths(spec: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand a file, a folder (its images, sorted) or a glob; several specs may be given."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for s in specs:
        p = Path(s).expanduser()
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            out.append(p)
        else:
            matches = sorted(Path(m) for m in _glob.glob(str(p), recursive=True))
            if not matches:
                raise FileNotFoundError(f"{s}: no such file, folder or matching glob")
            out.extend(m for m in matches if m.is_file())
    seen: set[Path] = set()
    unique = []
    for p in out:
        rp = p.resolve()
        if rp not in seen:
            seen.add(rp)
            unique.append(rp)
    return unique


def photo_id(path: str | Path) -> str:
    """The id of a photo: its absolute path (stable across processes and machines sharing a disk)."""
    return str(Path(path).resolve())


def load_collection(spec: str | Path | Iterable[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS,
                    check: bool = True) -> list[Photo]:
    """The usable photos of a collection, read lazily (Photo.from_path); skip the rest, one line each.

    check: decode each photo at 1/8 scale (a few ms for a camera JPEG) so truncated and corrupt files
    are skipped here rather than failing later; False reads headers only (an env runner over a library
    the driver already checked). Default True.
    """
    photos = []
    paths = resolve_paths(spec)
    for p in paths:
        try:
            photo = Photo.from_path(p, max_pixels)
            if check:
                load_image(p, max_pixels, reduce_to=max(8, max(photo.width, photo.height) // 8))
            photos.append(photo)
        except ImageLoadError as e:
            log.warning("skipped %s: %s", e.path, e.reason)
    if not photos:
        raise ImageLoadError(str(spec), f"no usable photo among {len(paths)} file(s)")
    return photos


def bundled_photos(names: Sequence[str] | None = None) -> list[Path]:
    """Paths of the photos that ship with the package (all, or the given stems)."""
    names = names or sorted(p.stem for p in PHOTOS_DIR.glob("*.jpg"))
    return [PHOTOS_DIR / f"{n}.jpg" for n in names]


def fingerprint(pixels: np.ndarray) -> str:
    """A short content hash, to key caches by what a photo is rather than where it lies."""
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8).hexdigest()


def augmented_variants(photo: Photo, n: int, rng: np.random.Generator) -> list[Photo]:
    """n fixed framings of the photo: windows of 70-100 % of each side, every second one mirrored.

    New framings of the same scene, as extra training photos; each id names its window and mirror.
    They are views (Photo.view): no pixels are copied until a framing is used.
    """
    out = []
    for i in range(n):
        fw, fh = rng.uniform(0.7, 1.0, size=2)
        w, h = int(photo.width * fw), int(photo.height * fh)
        x0 = int(rng.integers(0, photo.width - w + 1))
        y0 = int(rng.integers(0, photo.height - h + 1))
        out.append(photo.view(x0, y0, w, h, mirror=bool(i % 2)))
    return out
