"""The TTL index: which key expires when.

Rules of this module:

* Expiry is decided by the log. A Put with a TTL stamps
  ``expire_at_ms = entry stamp + ttl_ms``; a Put without a TTL clears the
  key's expiry; deleting a key clears it too. The index only records what
  apply tells it.
* ``expire_at`` is authoritative (a dict). The heap is only an accelerator:
  entries in it may be stale (the key was rewritten or deleted) and are
  discarded lazily -- an entry is live iff ``expire_at[key] == stamp``. When
  stale entries outnumber live ones the heap is rebuilt, so memory stays
  O(live keys with a TTL).
* :meth:`TTLIndex.expired` does not remove anything live: the leader only
  *proposes* the deletion, and if that proposal is lost the next sweep must
  find the same keys again. Keys are removed when the ExpireKeys command is
  applied (by :meth:`TTLIndex.clear`).
* A key whose stamp is ``<= now_ms`` has expired (the boundary is expired).
"""

from __future__ import annotations

import heapq
from typing import Iterator

__all__ = ["TTLIndex"]

# Rebuild the heap when it holds more than this many entries per live one
# (plus a small floor so tiny indexes never bother).
_REBUILD_FACTOR = 2
_REBUILD_FLOOR = 64


class TTLIndex:
    """Key -> expiry stamp, with cheap "what has expired by now?"."""

    __slots__ = ("_expire_at", "_heap")

    def __init__(self, expire_at: dict[bytes, int] | None = None) -> None:
        self._expire_at: dict[bytes, int] = dict(expire_at or {})
        self._heap: list[tuple[int, bytes]] = [(at, key) for key, at in self._expire_at.items()]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._expire_at)

    def __contains__(self, key: bytes) -> bool:
        return key in self._expire_at

    def get(self, key: bytes) -> int | None:
        """The key's expiry stamp, or None if it has no TTL."""
        return self._expire_at.get(key)

    def items(self) -> Iterator[tuple[bytes, int]]:
        return iter(self._expire_at.items())

    def copy_map(self) -> dict[bytes, int]:
        """A shallow copy of key -> expiry (for snapshots)."""
        return dict(self._expire_at)

    def set(self, key: bytes, expire_at_ms: int) -> None:
        """Record that ``key`` expires at ``expire_at_ms``."""
        if self._expire_at.get(key) == expire_at_ms:
            return
        self._expire_at[key] = expire_at_ms
        heapq.heappush(self._heap, (expire_at_ms, key))
        self._maybe_rebuild()

    def clear(self, key: bytes) -> None:
        """Forget ``key``'s expiry (no-op if it has none). Its heap entry
        becomes stale and is dropped later."""
        if self._expire_at.pop(key, None) is not None:
            self._maybe_rebuild()

    def is_expired(self, key: bytes, now_ms: int) -> bool:
        at = self._expire_at.get(key)
        return at is not None and at <= now_ms

    def expired(self, now_ms: int, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` keys whose stamp is ``<= now_ms``, earliest first,
        each with its stamp (ready for an ExpireKeys command). Costs
        O((limit + stale) log n); live entries stay in the index."""
        out: list[tuple[bytes, int]] = []
        if limit <= 0:
            return out
        heap = self._heap
        taken: list[tuple[int, bytes]] = []
        seen: set[bytes] = set()
        while heap and len(out) < limit and heap[0][0] <= now_ms:
            at, key = heapq.heappop(heap)
            if self._expire_at.get(key) != at or key in seen:
                continue  # stale or duplicate: drop it for good
            seen.add(key)
            taken.append((at, key))
            out.append((key, at))
        for item in taken:
            heapq.heappush(heap, item)
        return out

    def next_expiry(self) -> int | None:
        """The earliest live stamp (lets a sweeper sleep until then)."""
        heap = self._heap
        while heap and self._expire_at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _maybe_rebuild(self) -> None:
        if len(self._heap) > _REBUILD_FACTOR * len(self._expire_at) + _REBUILD_FLOOR:
            self._heap = [(at, key) for key, at in self._expire_at.items()]
            heapq.heapify(self._heap)
