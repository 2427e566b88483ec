"""Freed memory goes back to the system (operator/memory.py): at most every interval, and for
real — a heap that held a freed burst shrinks."""

from __future__ import annotations

import subprocess
import sys

from bbp_notebooks.operator.memory import Release


def test_memory_is_given_back_at_most_once_per_interval() -> None:
    calls: list[int] = []
    now = [100.0]
    release = Release(every_s=30, clock=lambda: now[0], trim=lambda pad: calls.append(pad) or 1)
    release()
    now[0] += 29
    release()
    assert calls == [0]
    now[0] += 1
    release()
    assert calls == [0, 0]


def test_without_malloc_trim_nothing_is_done() -> None:
    assert Release(trim=None).trim is not None  # this machine has glibc
    release = Release()
    release.trim = None
    assert release() == 0


def test_a_freed_burst_goes_back_to_the_system() -> None:
    # In a process of its own: 60 MB of malloc'd objects (> pymalloc's 512 bytes), one in eight
    # kept so glibc cannot give the heap back by itself from the top.
    program = """
from bbp_notebooks.operator.memory import Release, resident_bytes
keep, burst = [], []
for i in range(40000):
    burst.append(bytes(1500))
    if i % 8 == 0:
        keep.append(bytes(1500))
del burst
before = resident_bytes()
released = Release()()
print(before - resident_bytes(), released)
"""
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    shrunk, reported = int(out[0]), int(out[1])
    assert shrunk > 30 * 2**20 and reported > 30 * 2**20, out
