"""glibc malloc settings for this workload: keep freed working memory for reuse instead of handing it back.

Every photo allocates and frees the same few-megabyte arrays (the backbone's activations, summed-area
tables, saliency and BRISQUE maps). glibc serves blocks above its mmap threshold with fresh pages and
returns them to the kernel when freed, so each photo faults its working memory in again: thousands of
page faults a photo, a sixth of a cold crop's time on a virtual machine. Raising the mmap and trim
thresholds keeps those blocks in the heap (at most TRIM_THRESHOLD of free memory stays with a process).
PyTorch's CPU performance guide makes the same point by preloading jemalloc or tcmalloc; these are the
standard allocator's own knobs (mallopt), so nothing needs installing. Every process that holds photo
contexts (a command, an env runner, a Ray Data crop actor, the scoring actor) sets them as its context
store starts (rlhf.context.ContextStore).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

MMAP_THRESHOLD = 64 << 20  # blocks below this come from the heap and are reused after free
TRIM_THRESHOLD = 128 << 20  # free memory at the heap's top kept before it is returned to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


@functools.cache
def tune_malloc() -> bool:
    """Apply the thresholds to this process; True where glibc took them, False elsewhere (other C
    libraries, other systems: nothing changes). Once per process."""
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
