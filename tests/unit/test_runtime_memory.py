"""dengine.runtime.memory: freed heap pages go back to the system after a
snapshot (glibc's malloc_trim). Runs in a child process, so the test's
own heap does not decide the figures."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from dengine.runtime import memory

CHILD = r"""
import os
from dengine.runtime.memory import release_free_heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

big = bytearray(4 << 20)
del big  # a freed mmapped block raises glibc's mmap threshold: the blocks below come from the heap
blocks = [bytearray(1 << 20) for _ in range(200)]
keep = blocks[::20]  # live blocks left in the heap: it cannot shrink from the top
del blocks
before = rss()
released = release_free_heap()
print(released, (before - rss()) >> 20)
"""


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return False
    return True


def test_freed_heap_pages_go_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    released, mb = out.stdout.split()
    if not _glibc():  # no malloc_trim in this C library: nothing is done, and it says so
        assert released == "False", out.stdout
        return
    assert released == "True" and int(mb) >= 100, out.stdout  # 180 MB of the 200 freed


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.release_free_heap() is False
