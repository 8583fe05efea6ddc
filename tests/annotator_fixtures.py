"""Helpers for the annotator tests: a real store of real bundled photos, a real server on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from rlhf.images import bundled_photos
from rlhf.pairs import Pair, pair_id
from rlhf.store import PreferenceStore

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
# Boxes inside every bundled photo (the smallest is 300x451 / 427x640 / 512x512 ...).
BOXES = [((0, 0, 200, 200), (40, 60, 290, 300)),
         ((10, 20, 280, 250), (0, 0, 150, 300)),
         ((50, 50, 250, 250), (20, 0, 220, 280))]


def copy_photos(folder: Path, names: Sequence[str]) -> list[Path]:
    """Copies of bundled photos in `folder` (so tests can break or remove them safely)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in bundled_photos(names):
        dst = folder / src.name
        shutil.copyfile(src, dst)
        out.append(dst)
    return out


def make_pairs(photos: Sequence[Path], n: int) -> list[Pair]:
    """n pairs cycling over the photos and BOXES, in a fixed order."""
    pairs = []
    for i in range(n):
        photo = str(Path(photos[i % len(photos)]).resolve())
        a, b = BOXES[i % len(BOXES)]
        a = (a[0] + i, a[1], a[2] + i, a[3])  # distinct ids even when photo and boxes repeat
        pairs.append(Pair(pair_id(photo, a, b), photo, a, b))
    return pairs


def make_store(tmp: Path, n: int = 5, names: Sequence[str] = ("astronaut", "chelsea", "coffee")
               ) -> tuple[PreferenceStore, list[Pair]]:
    """A store at tmp/prefs.sqlite holding n pairs of photo copies in tmp/photos."""
    photos = copy_photos(tmp / "photos", names)
    store = PreferenceStore(tmp / "prefs.sqlite")
    pairs = make_pairs(photos, n)
    store.add_pairs(pairs)
    return store, pairs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0, proc=None) -> None:
    """Wait until `url` answers (or the server process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def results_dir(name: str) -> Path:
    """results/<name>-<time>/ in the repository, for screenshots a person can look at."""
    path = REPO / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_chromium() -> str | None:
    """The Chromium to drive: `$CHROMIUM` if set, else the first of CHROMIUM_NAMES on the PATH."""
    given = os.environ.get("CHROMIUM")
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None
