"""Loading photos safely: EXIF orientation, any mode to RGB, a pixel limit, clear errors.

A photo collection is given as a file, a folder or a glob. Unusable files in a collection are
skipped with one line each on stderr (`skipped <file>: <reason>`, through logging); a collection
fails only when nothing usable is left.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Photo:
    """A photo as loaded: RGB uint8 pixels (H, W, 3), EXIF orientation applied."""

    id: str
    pixels: np.ndarray = field(repr=False, compare=False)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def full_box(self) -> Box:
        return (0, 0, self.width, self.height)

    def crop(self, box: Sequence[float]) -> np.ndarray:
        l, t, r, b = clip_box(box, self.width, self.height)
        return self.pixels[t:b, l:r]

    def crop_resized(self, box: Sequence[float], size: int | tuple[int, int]) -> np.ndarray:
        return resize(self.crop(box), size)


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


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load one photo as RGB uint8 (H, W, 3), EXIF orientation applied.

    Raises ImageLoadError naming the file for missing, corrupt, truncated, non-image or oversized
    input (a decompression bomb is refused before its pixels are decoded).
    """
    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(p, "no such file")
    try:
        with Image.open(p) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(p, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_rgb(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(p, f"refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(p, "not an image (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(p, f"corrupt or truncated image ({e})") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 8:
        raise ImageLoadError(p, f"unusable image shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


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


def load_collection(
    spec: str | Path | Iterable[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Photo]:
    """Load every usable photo of a collection; skip the rest, logging one line each."""
    photos = []
    paths = resolve_paths(spec)
    for p in paths:
        try:
            photos.append(Photo(photo_id(p), load_image(p, max_pixels)))
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
    """n fixed framings of the photo: sub-photos of 70-100 % of each side, every second one mirrored.

    New framings of the same scene, as extra training photos; each id names its window and mirror.
    """
    out = []
    for i in range(n):
        fw, fh = rng.uniform(0.7, 1.0, size=2)
        w, h = int(photo.width * fw), int(photo.height * fh)
        x0 = int(rng.integers(0, photo.width - w + 1))
        y0 = int(rng.integers(0, photo.height - h + 1))
        px = photo.pixels[y0:y0 + h, x0:x0 + w]
        mirror = bool(i % 2)
        if mirror:
            px = px[:, ::-1]
        out.append(Photo(f"{photo.id}#aug{x0},{y0},{w},{h},{int(mirror)}", np.ascontiguousarray(px)))
    return out
