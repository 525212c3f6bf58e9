"""The watcher registry: which watchers does a changed key concern?

Rules of this module:

* An *exact* watcher on ``key`` matches only that key, byte for byte.
* A *prefix* watcher on ``prefix`` (which starts and ends with ``/``) matches
  every key that starts with ``prefix``. Because the prefix ends with a slash
  this is a slash-boundary match: ``/services/payment/`` matches
  ``/services/payment/node1`` and ``/services/payment/node1/sub`` but not
  ``/services/payment``, ``/services/`` or ``/services/paymentextra/node``.
  (The key equal to the prefix itself also starts with it and matches.)
* A *range* watcher on ``[key, end)`` matches every key ``k`` with
  ``key <= k < end``; ``end == b"\0"`` means every key from ``key`` on
  (etcd's convention; the etcd face uses range watchers for etcd's
  arbitrary prefixes and ranges).
* ``match(key)`` never scans the exact or prefix watchers: exact watchers
  are one dict lookup; prefix watchers are one dict lookup per slash in the
  key (for ``/a/b/c``: ``/``, ``/a/``, ``/a/b/``), so the cost is O(depth).
  Range watchers are checked one by one (O(range watchers), bounded by
  ``max_watchers`` like every watcher).
* Order is deterministic: exact watchers first, then prefix watchers from
  the shortest prefix to the longest, then range watchers, each group in
  registration order. A watcher appears at most once.
* The registry is pure bookkeeping: no channels, no tasks. The dispatcher
  owns delivery and decides what a watcher with ``prev_kv=False`` sees.
"""

from __future__ import annotations

import attrs

from dengine.api import validate_prefix
from dengine.errors import InvalidArgument, ResourceExhausted

__all__ = ["WatchRegistry", "WatchSpec", "validate_watch_range"]


def validate_watch_range(key: object, end: object) -> None:
    """A range watch covers ``[key, end)``: both bytes, ``key`` not empty
    unless ``end`` is ``b"\\0"`` (every key), ``end`` after ``key`` or
    ``b"\\0"`` (no end)."""
    if not isinstance(key, bytes) or not isinstance(end, bytes):
        raise InvalidArgument(f"a watch range is two bytes keys, got {key!r} and {end!r}")
    if end != b"\0" and end <= key:
        raise InvalidArgument(f"watch range end {end!r} must sort after its start {key!r} (or be b'\\x00': no end)")


@attrs.frozen(slots=True)
class WatchSpec:
    """What one watcher asked for."""

    watcher_id: int
    key: bytes
    prefix: bool
    prev_kv: bool
    #: The end of a range watcher (``b"\0"``: no end), else None.
    end: bytes | None = None

    def matches(self, key: bytes) -> bool:
        """Whether a change of ``key`` concerns this watcher."""
        if self.end is not None:
            return self.key <= key and (self.end == b"\0" or key < self.end)
        return key.startswith(self.key) if self.prefix else key == self.key


class WatchRegistry:
    """Exact and prefix watchers, looked up by changed key."""

    __slots__ = ("_specs", "_exact", "_prefix", "_range", "_prev_kv", "max_watchers")

    def __init__(self, *, max_watchers: int | None = None) -> None:
        self.max_watchers = max_watchers
        self._specs: dict[int, WatchSpec] = {}
        # key/prefix -> ids in registration order (a dict used as an ordered set)
        self._exact: dict[bytes, dict[int, None]] = {}
        self._prefix: dict[bytes, dict[int, None]] = {}
        self._range: dict[int, WatchSpec] = {}
        self._prev_kv = 0

    def register(self, watcher_id: int, key: bytes, prefix: bool = False, prev_kv: bool = False,
                 end: bytes | None = None) -> WatchSpec:
        """Add a watcher (``end``: a range watcher on ``[key, end)``). Raises
        InvalidArgument for a bad key, prefix or range, ResourceExhausted when
        ``max_watchers`` are registered, and ValueError if ``watcher_id`` is
        already in use (a caller bug)."""
        if watcher_id in self._specs:
            raise ValueError(f"watcher id {watcher_id} is already registered")
        if end is not None:
            if prefix:
                raise InvalidArgument("a watch takes a prefix or a range end, not both")
            validate_watch_range(key, end)
        elif prefix:
            validate_prefix(key)
        elif not isinstance(key, bytes) or not key:
            raise InvalidArgument(f"watch key must be non-empty bytes, got {key!r}")
        if self.max_watchers is not None and len(self._specs) >= self.max_watchers:
            raise ResourceExhausted(f"the limit of {self.max_watchers} watchers is reached")
        spec = WatchSpec(watcher_id, key, prefix, prev_kv, end)
        self._specs[watcher_id] = spec
        if end is not None:
            self._range[watcher_id] = spec
        else:
            table = self._prefix if prefix else self._exact
            table.setdefault(key, {})[watcher_id] = None
        if prev_kv:
            self._prev_kv += 1
        return spec

    def unregister(self, watcher_id: int) -> bool:
        """Remove a watcher; False if it was not registered."""
        spec = self._specs.pop(watcher_id, None)
        if spec is None:
            return False
        if spec.end is not None:
            del self._range[watcher_id]
        else:
            table = self._prefix if spec.prefix else self._exact
            ids = table[spec.key]
            del ids[watcher_id]
            if not ids:
                del table[spec.key]
        if spec.prev_kv:
            self._prev_kv -= 1
        return True

    def get(self, watcher_id: int) -> WatchSpec | None:
        return self._specs.get(watcher_id)

    def match(self, key: bytes) -> list[int]:
        """Ids of the watchers that ``key`` concerns (see the module rules)."""
        out: list[int] = []
        ids = self._exact.get(key)
        if ids:
            out.extend(ids)
        prefixes = self._prefix
        if prefixes:
            find = key.find
            i = find(b"/")
            while i != -1:
                ids = prefixes.get(key[: i + 1])
                if ids:
                    out.extend(ids)
                i = find(b"/", i + 1)
        if self._range:
            out.extend(wid for wid, spec in self._range.items() if spec.matches(key))
        return out

    def any_prev_kv(self) -> bool:
        """Whether any watcher wants previous values."""
        return self._prev_kv > 0

    def count(self) -> int:
        return len(self._specs)

    def __contains__(self, watcher_id: int) -> bool:
        return watcher_id in self._specs
