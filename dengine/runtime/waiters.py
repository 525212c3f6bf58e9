"""Things callers wait on: one result, or the applied index reaching a point.

Waiters are resolved in batches by the runtime tasks (one apply pass resolves
every write it applied and every read waiting for that index).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

import trio


class Waiter:
    """A one-shot result slot."""

    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any) -> None:
        if not self.event.is_set():
            self.value = value
            self.event.set()

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()

    def done(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> Any:
        await self.event.wait()
        if self.error is not None:
            raise self.error
        return self.value


class AppliedWaiters:
    """Wake callers once the applied index reaches what they need."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Waiter]] = []
        self._seq = itertools.count()
        self.applied = 0

    def wait_for(self, index: int) -> Waiter | None:
        """A waiter for ``index``, or None if it is applied already."""
        if index <= self.applied:
            return None
        w = Waiter()
        heapq.heappush(self._heap, (index, next(self._seq), w))
        return w

    def advance(self, applied: int) -> None:
        self.applied = max(self.applied, applied)
        heap = self._heap
        while heap and heap[0][0] <= self.applied:
            heapq.heappop(heap)[2].set(None)

    def fail_all(self, error: BaseException) -> None:
        for _, _, w in self._heap:
            w.fail(error)
        self._heap = []
