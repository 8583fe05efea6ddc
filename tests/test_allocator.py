"""rlhf.allocator: after tune_malloc, freed working memory is reused rather than faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# A photo's pattern in miniature: a few 3 MB arrays alive at once, then freed, 50 times; prints the
# minor page faults that cost. By default glibc returns the freed top of its heap (more than twice its
# adaptive mmap threshold) to the kernel, so every round faults its memory in again.
PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from rlhf.allocator import tune_malloc
    assert tune_malloc()
np.ones(1 << 19)  # numpy's own first-use allocations, outside the count
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    a = np.ones(400_000)
    b = np.ones(400_000)
    c = a + b
    del a, b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own defaults
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_tuned_malloc_reuses_freed_blocks():
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 50 * 1000  # each round's ~2400 pages faulted in again: the cost being removed
    assert tuned < default / 10

