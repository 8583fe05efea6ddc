"""The crop-pairs file: one JSON format shared by the pair generator, the annotator and the trainers.

```
{"version": 1,
 "pairs": [{"id": "...", "image": "photo.jpg", "crop_a": [l, t, r, b], "crop_b": [l, t, r, b],
            "preference": null}]}
```
- ``image`` is relative to the JSON file's folder, or absolute; ``load_pairs`` makes it absolute.
- Boxes are (left, top, right, bottom) whole pixels of the photo as loaded (EXIF applied),
  right/bottom exclusive, so ``left < right`` and ``top < bottom``.
- ``preference``: 1 = A better, 2 = B better, 0 = no preference, null = not yet annotated.
- ``id`` may be left out by hand-written files; it is then derived from the pair's content
  (``pair_id``). Any other key of a pair is kept in ``Pair.extra`` and written back on save.

``save_pairs`` is atomic: a reader (or a crash) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
NO_PREFERENCE = 0
A_BETTER = 1
B_BETTER = 2
CHOICES = (NO_PREFERENCE, A_BETTER, B_BETTER)
CHOICE_NAMES = {NO_PREFERENCE: "no preference", A_BETTER: "A better", B_BETTER: "B better"}

Box = tuple[int, int, int, int]
_KNOWN_KEYS = ("id", "image", "crop_a", "crop_b", "preference")


@dataclass
class Pair:
    """Two crops of one photo to compare. ``image`` is an absolute path once loaded."""

    id: str
    image: str
    crop_a: Box
    crop_b: Box
    preference: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, image: str | None = None) -> dict[str, Any]:
        """The pair as a JSON object (extra keys after the known ones); ``image`` overrides the path."""
        out: dict[str, Any] = {
            "id": self.id,
            "image": self.image if image is None else image,
            "crop_a": _box_list(self.crop_a),
            "crop_b": _box_list(self.crop_b),
            "preference": self.preference,
        }
        for k, v in self.extra.items():
            if k not in out:
                out[k] = v
        return out


def _box_list(box: Sequence[Any]) -> list[Any]:
    # operator.index accepts numpy integers but not floats, so 1.5 is never silently rounded.
    out = []
    for v in box:
        try:
            out.append(operator.index(v))
        except TypeError:
            out.append(v)  # left for validation to report
    return out


class PairsFormatError(ValueError):
    """A pairs file that cannot be used; the message names the file, the pair (index, id) and field."""

    def __init__(self, path: str | Path, message: str, index: int | None = None,
                 pair_id: str | None = None, field_name: str | None = None):
        self.path = str(path)
        self.index = index
        self.pair_id = pair_id
        self.field = field_name
        where = ""
        if index is not None:
            where = f" pair #{index}" + (f" (id {pair_id!r})" if pair_id else "")
        if field_name is not None:
            where += f" field {field_name!r}"
        super().__init__(f"{path}:{where}: {message}" if where else f"{path}: {message}")


def pair_id(image: str | Path, crop_a: Sequence[int], crop_b: Sequence[int]) -> str:
    """A deterministic id from a pair's content: the image string as given and both boxes.

    A/B order matters: (a, b) and (b, a) are different pairs with different ids, because the
    answer (1 or 2) refers to the order shown. Pass the image the way it is stored (an absolute
    path, or the path as written in the file) — the same photo named two ways gets two ids.
    """
    key = json.dumps([str(image), [int(v) for v in crop_a], [int(v) for v in crop_b]])
    return "p" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def validate_box(value: Any) -> Box | str:
    """The box as a tuple of 4 ints, or a sentence saying what is wrong with it."""
    if not (isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray") or len(value) != 4:
        return f"must be a list of 4 integers [left, top, right, bottom], got {value!r}"
    ints = []
    for v in value:
        try:
            if isinstance(v, bool) or type(v).__name__ == "bool_":
                raise TypeError
            ints.append(operator.index(v))  # ints and numpy integers; never floats
        except TypeError:
            return f"must hold integers (whole pixels), got {value!r}"
        if ints[-1] < 0:
            return f"must hold non-negative integers, got {value!r}"
    l, t, r, b = ints
    if not l < r:
        return f"needs left < right, got {value!r}"
    if not t < b:
        return f"needs top < bottom, got {value!r}"
    return (l, t, r, b)


def validate_preference(value: Any) -> int | None | str:
    """The preference (0, 1, 2 or None), or a sentence saying what is wrong with it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in CHOICES:
        return f"must be 1 (A better), 2 (B better), 0 (no preference) or null, got {value!r}"
    return value


def _parse_pair(path: Path, index: int, obj: Any, folder: Path) -> Pair:
    if not isinstance(obj, dict):
        raise PairsFormatError(path, f"must be a JSON object, got {type(obj).__name__}", index)
    pid = obj.get("id")
    if pid is not None and (not isinstance(pid, str) or not pid.strip()):
        raise PairsFormatError(path, f"must be a non-empty string, got {pid!r}", index, None, "id")

    def fail(field_name: str, message: str) -> PairsFormatError:
        return PairsFormatError(path, message, index, pid, field_name)

    for key in ("image", "crop_a", "crop_b"):
        if key not in obj:
            raise fail(key, "is missing")
    image = obj["image"]
    if not isinstance(image, str) or not image.strip():
        raise fail("image", f"must be a non-empty path string, got {image!r}")
    boxes = []
    for key in ("crop_a", "crop_b"):
        box = validate_box(obj[key])
        if isinstance(box, str):
            raise fail(key, box)
        boxes.append(box)
    pref = validate_preference(obj.get("preference"))
    if isinstance(pref, str):
        raise fail("preference", pref)
    if pid is None:
        # Derived from the path as written, so moving the file together with its photos keeps ids.
        pid = pair_id(image, boxes[0], boxes[1])
    resolved = Path(image).expanduser()
    if not resolved.is_absolute():
        resolved = folder / resolved
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    return Pair(pid, os.path.normpath(str(resolved)), boxes[0], boxes[1], pref, extra)


def parse_pairs_document(doc: Any, path: str | Path, folder: str | Path | None = None) -> list[Pair]:
    """Validate an already-parsed pairs document; relative images resolve against ``folder``."""
    p = Path(path)
    base = Path(folder) if folder is not None else p.resolve().parent
    if not isinstance(doc, dict):
        raise PairsFormatError(p, f"top level must be a JSON object with 'version' and 'pairs', "
                                  f"got {type(doc).__name__}")
    if "version" not in doc:
        raise PairsFormatError(p, f"field 'version' is missing (expected {FORMAT_VERSION})")
    version = doc["version"]
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise PairsFormatError(p, f"field 'version' is {version!r}; this program reads version "
                                  f"{FORMAT_VERSION}")
    if "pairs" not in doc:
        raise PairsFormatError(p, "field 'pairs' is missing")
    items = doc["pairs"]
    if not isinstance(items, list):
        raise PairsFormatError(p, f"field 'pairs' must be a list, got {type(items).__name__}")
    pairs: list[Pair] = []
    first_index: dict[str, int] = {}
    for i, obj in enumerate(items):
        pair = _parse_pair(p, i, obj, base)
        if pair.id in first_index:
            raise PairsFormatError(p, f"duplicate id, already used by pair #{first_index[pair.id]}",
                                   i, pair.id, "id")
        first_index[pair.id] = i
        pairs.append(pair)
    return pairs


def load_pairs(path: str | Path, check_images: bool = False) -> list[Pair]:
    """Read and validate a pairs file; images come back as absolute paths.

    Raises FileNotFoundError for a missing file and PairsFormatError (naming the file, the pair's
    index and id, and the field) for anything malformed — including a truncated, half-written
    file, reported with the line and column where the JSON stops making sense. With
    ``check_images`` every referenced image must exist.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such pairs file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows may add a byte-order mark
    except UnicodeDecodeError as e:
        raise PairsFormatError(p, f"not UTF-8 text (byte {e.start}); is this a pairs JSON file?") from e
    if not text.strip():
        raise PairsFormatError(p, "file is empty (a half-written or truncated file?)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " — the file ends early: half-written or truncated?" if e.pos >= len(text.rstrip()) else ""
        raise PairsFormatError(p, f"invalid JSON at line {e.lineno} column {e.colno} (char {e.pos} of "
                                  f"{len(text)}): {e.msg}{hint}") from e
    pairs = parse_pairs_document(doc, p)
    if check_images:
        for i, pair in enumerate(pairs):
            if not Path(pair.image).is_file():
                raise PairsFormatError(p, f"image {pair.image} does not exist", i, pair.id, "image")
    return pairs


def _image_for_file(image: str, relative_to: Path | None) -> str:
    if relative_to is None:
        return image
    img = Path(image)
    if not img.is_absolute():
        return image
    try:
        return img.resolve().relative_to(relative_to).as_posix()
    except ValueError:
        return image  # outside the folder: an absolute path survives the file being copied alone


def pairs_document(pairs: Iterable[Pair], relative_to: str | Path | None = None) -> dict[str, Any]:
    """The JSON document for ``pairs`` (see ``save_pairs`` for ``relative_to``)."""
    base = Path(relative_to).resolve() if relative_to is not None else None
    return {"version": FORMAT_VERSION,
            "pairs": [p.to_json(_image_for_file(p.image, base)) for p in pairs]}


def format_pairs_document(doc: dict[str, Any]) -> str:
    """JSON text with one pair per line: readable, and diffs show which pairs changed."""
    def dump(o: Any) -> str:
        return json.dumps(o, allow_nan=False, default=_json_default, ensure_ascii=False)

    head = ", ".join(f"{dump(k)}: {dump(v)}" for k, v in doc.items() if k != "pairs")
    lines = ",\n".join("  " + dump(item) for item in doc["pairs"])
    body = f"[\n{lines}\n]" if lines else "[]"
    return "{" + head + ', "pairs": ' + body + "}\n"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers and crashes see the old content or the new, never a mix.

    Temp file in the same folder (same filesystem, so the rename is atomic), fsync, os.replace,
    then fsync the folder so the rename itself survives a power cut.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(p.parent, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the replace itself is still atomic
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def save_pairs(path: str | Path, pairs: Iterable[Pair], relative_to: str | Path | None = None) -> Path:
    """Write pairs atomically in the shared format.

    ``relative_to``: a folder; images inside it are written relative to it, others stay absolute.
    Pass the output file's folder (``Path(path).parent``) to get a file that can move together
    with its photos — ``load_pairs`` resolves relative images against the JSON file's folder, so
    any other folder would make the written paths wrong. None writes images as they are.
    """
    p = Path(path)
    if relative_to is not None and Path(relative_to).resolve() != p.resolve().parent:
        raise ValueError(f"relative_to={relative_to} is not the folder of {p}: load_pairs resolves "
                         "relative images against the JSON file's own folder")
    doc = pairs_document(pairs, relative_to)
    for i, item in enumerate(doc["pairs"]):
        for key in ("crop_a", "crop_b"):
            box = validate_box(item[key])
            if isinstance(box, str):
                raise PairsFormatError(p, f"not saved: {box}", i, item["id"], key)
        pref = validate_preference(item["preference"])
        if isinstance(pref, str):
            raise PairsFormatError(p, f"not saved: {pref}", i, item["id"], "preference")
    atomic_write_text(p, format_pairs_document(doc))
    return p


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays sneak into extras from scoring code; write them as plain JSON.
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
