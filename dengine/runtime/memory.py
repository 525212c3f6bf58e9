"""Giving freed heap memory back to the system after a snapshot.

Encoding a snapshot allocates and frees a few hundred megabytes at a million
keys, in pieces of about half a megabyte. glibc keeps what was freed for
later allocations (after a large free it raises its mmap threshold, so the
next pieces come from the heap, and a heap with live blocks in it cannot
shrink): the process's resident memory stays up by about the size of the
snapshot, though nothing uses it. ``malloc_trim(0)`` returns the free pages
(docs/benchmarks.md, "Growth at 1 M keys, rerun").

Only glibc has it; elsewhere (musl, macOS) :func:`release_free_heap` does
nothing. It walks the whole heap holding malloc's lock (other threads' allocations
wait meanwhile), tens of milliseconds on a large heap: call it from a
worker thread (ctypes lets go of the GIL during the call), and only after
a large snapshot, where there is much to give back.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once; None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc's where it is glibc
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the heap's free pages to the system (glibc's ``malloc_trim(0)``).
    True if some memory was released; False if none was or the C library has
    no such call."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))
