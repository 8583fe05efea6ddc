"""The app's private folder of rendered crops, and the removal of folders left by killed servers.

Each server renders into ``<tmp>/annotator-cache-<pid>-<random>``. A server stopped normally removes
its own folder; one killed outright cannot, so every start removes the folders whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

PREFIX = "annotator-cache-"
# Folders named without a process id (an older layout) count as stale once untouched this long.
UNNAMED_STALE_S = 24 * 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_caches(parent: str | Path | None = None) -> list[Path]:
    """Remove this user's cache folders in `parent` (default: the temp folder) whose server is gone.

    Only real folders named ``annotator-cache-<pid>-...`` and owned by this user are touched (and
    ones without a pid, untouched for UNNAMED_STALE_S); a symlink or someone else's folder is left
    alone. Returns the folders removed.
    """
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for entry in parent.glob(f"{PREFIX}*"):
        pid_text = entry.name[len(PREFIX):].split("-", 1)[0]
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        if not pid_text.isdigit():
            if time.time() - info.st_mtime < UNNAMED_STALE_S:
                continue
        elif int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue  # this process's own folders are removed when its apps stop
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def new_cache_dir(parent: str | Path | None = None) -> Path:
    """A fresh private cache folder (mode 0700, canonical path), after removing stale ones."""
    remove_stale_caches(parent)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
    return Path(os.path.realpath(path))
