"""The watch dispatcher: committed changes -> per-watcher bounded buffers.

Rules of this module:

* ``publish(events, applied)`` is called synchronously by the applier after
  every apply pass and never blocks or awaits: it appends the pass to a
  bounded global queue and wakes the dispatcher task. ``publish_snapshot``
  says the state machine jumped to a snapshot (events were skipped).
* The dispatcher task (``run``) takes everything queued in one pass: it
  matches each event with the registry (O(depth)), pushes it into the buffer
  of every matching watcher, appends it to the history, and wakes each
  reader at most once. There is never one task per watcher.
* Order: a watcher sees events in apply order, each at most once, and only
  events with ``revision >= start`` where ``start`` is its ``start_revision``
  or, for a live watch, the applied index at registration + 1.
* No silent loss. A watcher whose buffer (``watcher_buffer_size``) would
  overflow gets CANCELED (``WATCH_BUFFER_OVERFLOW``) and is unregistered.
  If the global queue is full (``event_queue_size`` events waiting) the new
  pass is dropped and every watcher it concerned gets CANCELED
  (``WATCH_BUFFER_OVERFLOW``) after the events queued before it. A snapshot
  install cancels every watcher that missed events with ``COMPACTED``.
  CANCELED is the last event a watcher ever gets; its ``revision`` is the
  first revision the watcher did not receive (its resume point).
* History: the last ``history_size`` dispatched events are kept. ``floor``
  is the oldest revision from which every event is still known (in the
  history or in the queue). A watch with ``start_revision >= floor`` is
  registered and replayed in one synchronous step (no checkpoint between),
  so it continues live with no gap and no duplicate; an older one gets
  CANCELED(``COMPACTED``) at once.
* PROGRESS heartbeats go to every watcher every ``heartbeat_interval_ms``
  (±10% jitter from an injected ``random.Random``), carrying the applied
  revision dispatched so far; a heartbeat is skipped for a watcher whose
  buffer is full (it is never a reason to cancel).
* ``close(error)`` (engine stop) dispatches what is queued, then ends every
  watcher: once its buffer is read, ``receive`` raises ``error``.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from typing import Any

import attrs
import trio

from dengine.api import WatchEvent, WatchEventType
from dengine.config import WatchSettings
from dengine.errors import EngineStopped, ErrorCode, InvalidArgument
from dengine.watch.registry import WatchRegistry, WatchSpec

__all__ = ["DispatcherStatistics", "Watch", "WatchDispatcher", "WatchStatistics"]

log = logging.getLogger("dengine.watch")

_PROGRESS = WatchEventType.PROGRESS
_CANCELED = WatchEventType.CANCELED

# Watch states
_OPEN = "open"
_CANCELED_STATE = "canceled"  # got (or will get) a CANCELED event
_CLOSED = "closed"  # closed by the application
_STOPPED = "stopped"  # the engine stopped


@attrs.frozen(slots=True)
class WatchStatistics:
    """One watcher, now. ``buffered`` events wait to be received (``capacity``
    bounds live ones; a ``start_revision`` replay may add more); ``delivered``
    were returned by ``receive``; ``last_revision`` is the revision of the
    last delivered event (0 before any). ``state`` is ``"open"``,
    ``"canceled"``, ``"closed"`` (by you) or ``"stopped"`` (the engine)."""

    id: int
    key: bytes
    prefix: bool
    prev_kv: bool
    buffered: int
    capacity: int
    delivered: int
    last_revision: int
    state: str


@attrs.frozen(slots=True)
class DispatcherStatistics:
    """One engine's watch dispatcher, now (see docs/watch.md).

    ``queued_events`` / ``lag_revisions``: how far the dispatcher is behind
    the applier; ``max_queued_events`` the high-water mark. ``history_floor``
    is the oldest revision a ``start_revision`` may name."""

    watchers: int
    events_published: int
    events_dispatched: int
    deliveries: int
    queued_events: int
    max_queued_events: int
    lag_revisions: int
    applied_revision: int
    dispatched_revision: int
    heartbeats: int
    canceled_buffer_overflow: int
    canceled_queue_overflow: int
    canceled_compacted: int
    history_events: int
    history_floor: int


class _Batch:
    __slots__ = ("events", "applied")

    def __init__(self, events: list[WatchEvent], applied: int) -> None:
        self.events = events
        self.applied = applied


class _Lost:
    """Passes dropped because the global queue was full: the watchers they
    concerned, with the first revision each lost."""

    __slots__ = ("lost", "applied")

    def __init__(self, applied: int) -> None:
        self.lost: dict[int, int] = {}
        self.applied = applied


class _SnapshotJump:
    __slots__ = ("index", "last_watcher_id", "applied")

    def __init__(self, index: int, last_watcher_id: int) -> None:
        self.index = index
        self.last_watcher_id = last_watcher_id
        self.applied = index


class Watch:
    """One registered watch. Obtain it with ``client.open_watch(...)``.

    Iterate it (``async for event in watch``) or call ``receive()``. After a
    CANCELED event iteration ends; if the engine stops, iteration raises
    :class:`dengine.EngineStopped` once the buffered events are read; after
    ``close()``, ``receive`` raises ``trio.ClosedResourceError``.
    """

    __slots__ = (
        "_dispatcher",
        "_spec",
        "_buf",
        "_replay_left",
        "_capacity",
        "_min_rev",
        "_waiter",
        "_state",
        "_stop_error",
        "_delivered",
        "_last_revision",
    )

    def __init__(self, dispatcher: WatchDispatcher, spec: WatchSpec, capacity: int, min_rev: int) -> None:
        self._dispatcher: WatchDispatcher | None = dispatcher
        self._spec = spec
        self._buf: deque[WatchEvent] = deque()
        self._replay_left = 0  # leading buffered events that came from the history
        self._capacity = capacity
        self._min_rev = min_rev
        self._waiter: trio.Event | None = None
        self._state = _OPEN
        self._stop_error: BaseException | None = None
        self._delivered = 0
        self._last_revision = 0

    # -- public surface ---------------------------------------------------

    @property
    def id(self) -> int:
        """This watch's id, unique within its engine."""
        return self._spec.watcher_id

    @property
    def key(self) -> bytes:
        return self._spec.key

    @property
    def prefix(self) -> bool:
        return self._spec.prefix

    @property
    def buffered(self) -> int:
        """Events waiting in this watch's buffer (``receive`` returns them without waiting)."""
        return len(self._buf)

    @property
    def start_revision(self) -> int:
        """The first revision this watch can deliver: its ``start_revision``,
        or for a live watch the applied index at registration + 1."""
        return self._min_rev

    async def receive(self) -> WatchEvent:
        """The next event. Raises ``trio.EndOfChannel`` after the CANCELED
        event was received, :class:`dengine.EngineStopped` once the engine
        stopped and the buffer is empty, ``trio.ClosedResourceError`` after
        ``close()``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            buf = self._buf
            if buf:
                event = buf.popleft()
                if self._replay_left:
                    self._replay_left -= 1
                self._delivered += 1
                self._last_revision = event.revision
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return event
            if self._state is _CLOSED:
                raise trio.ClosedResourceError("this watch was closed")
            if self._state is _CANCELED_STATE:
                raise trio.EndOfChannel
            if self._state is _STOPPED:
                err = self._stop_error
                raise EngineStopped(str(err) if err is not None else "the engine stopped")
            waiter = self._waiter = trio.Event()
            await waiter.wait()
            waited = True

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self) -> WatchStatistics:
        spec = self._spec
        return WatchStatistics(
            id=spec.watcher_id,
            key=spec.key,
            prefix=spec.prefix,
            prev_kv=spec.prev_kv,
            buffered=len(self._buf),
            capacity=self._capacity,
            delivered=self._delivered,
            last_revision=self._last_revision,
            state=self._state,
        )

    def close(self) -> None:
        """Unregister and drop what is buffered. Idempotent; leaving the
        ``open_watch`` block calls it."""
        if self._state is not _CLOSED:
            self._state = _CLOSED
            self._buf.clear()
            self._replay_left = 0
            self._wake()
        d = self._dispatcher
        if d is not None:
            self._dispatcher = None
            d._unregister(self)

    def __repr__(self) -> str:
        kind = "prefix" if self._spec.prefix else "key"
        return f"<Watch id={self.id} {kind}={self._spec.key!r} state={self._state}>"

    # -- dispatcher side ----------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            w.set()

    def _end(self, state: str, event: WatchEvent | None = None) -> None:
        """Terminal: optional last event, then no more."""
        if event is not None:
            self._buf.append(event)
        self._state = state
        self._wake()


class WatchDispatcher:
    """Owns the watchers of one node. See the module rules."""

    def __init__(
        self,
        settings: WatchSettings | None = None,
        *,
        applied_index: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        s = settings if settings is not None else WatchSettings()
        self.settings = s
        self._rng = rng if rng is not None else random.Random()
        self._registry = WatchRegistry(max_watchers=s.max_watcher_count)
        self._watchers: dict[int, Watch] = {}
        self._next_id = 1
        self._queue: deque[Any] = deque()
        self._queued = 0
        self._queue_cap = s.event_queue_size
        self._buffer_size = s.watcher_buffer_size
        self._wakeup = trio.Event()
        self._history: deque[WatchEvent] = deque()
        self._history_max = s.history_size
        self._floor = applied_index + 1
        self._published = applied_index
        self._dispatched = applied_index
        self._closed: BaseException | None = None
        self._metrics = s.enable_metrics
        # counters
        self._n_published = 0
        self._n_dispatched = 0
        self._n_deliveries = 0
        self._max_queued = 0
        self._n_heartbeats = 0
        self._n_overflow = 0
        self._n_queue_overflow = 0
        self._n_compacted = 0

    # ------------------------------------------------------------------
    # Applier side: never blocks
    # ------------------------------------------------------------------

    def publish(self, events: list[WatchEvent], applied: int) -> None:
        """One apply pass: its events (in order) and the applied index after it.
        The caller must not reuse ``events``."""
        if self._closed is not None:
            return
        self._published = applied
        queue = self._queue
        if not events:
            if queue:
                queue[-1].applied = applied
            else:
                self._dispatched = applied
            return
        n = len(events)
        self._n_published += n
        if self._queued and self._queued + n > self._queue_cap:
            self._drop(events, applied)
        else:
            queue.append(_Batch(events, applied))
            self._queued += n
            if self._queued > self._max_queued:
                self._max_queued = self._queued
        self._wakeup.set()

    def _drop(self, events: list[WatchEvent], applied: int) -> None:
        """The global queue is full: drop this pass, remember who lost what."""
        queue = self._queue
        marker = queue[-1] if queue and isinstance(queue[-1], _Lost) else None
        if marker is None:
            marker = _Lost(applied)
            queue.append(marker)
        marker.applied = applied
        lost = marker.lost
        match = self._registry.match
        watchers = self._watchers
        for ev in events:
            for wid in match(ev.key):
                if wid not in lost and ev.revision >= watchers[wid]._min_rev:
                    lost[wid] = ev.revision
        self._floor = max(self._floor, events[-1].revision + 1)
        self._history.clear()
        if self._metrics:
            log.warning(
                "watch: the dispatcher is %d events behind (event_queue_size=%d); dropped %d events, "
                "%d watchers will be canceled",
                self._queued,
                self._queue_cap,
                len(events),
                len(lost),
            )

    def publish_snapshot(self, index: int) -> None:
        """The state machine jumped to a snapshot at ``index``: every watcher
        registered now that wanted events up to ``index`` missed some."""
        if self._closed is not None:
            return
        self._published = index
        self._floor = max(self._floor, index + 1)
        self._history.clear()
        self._queue.append(_SnapshotJump(index, self._next_id - 1))
        self._wakeup.set()

    # ------------------------------------------------------------------
    # Registration
    # ------------------------------------------------------------------

    def open_watch(
        self, key: bytes, *, prefix: bool = False, prev_kv: bool = False, start_revision: int | None = None,
        end: bytes | None = None,
    ) -> Watch:
        """Register a watch (``end``: on the range ``[key, end)``, see
        :mod:`dengine.watch.registry`) and, with ``start_revision``, replay
        the retained events from there, in one step. Raises InvalidArgument,
        ResourceExhausted, or the stop error after ``close``."""
        if self._closed is not None:
            raise EngineStopped(str(self._closed))
        if start_revision is not None and (
            isinstance(start_revision, bool) or not isinstance(start_revision, int) or start_revision <= 0
        ):
            raise InvalidArgument(f"start_revision must be a positive integer, got {start_revision!r}")
        wid = self._next_id
        spec = self._registry.register(wid, key, prefix, prev_kv, end)
        self._next_id += 1
        min_rev = self._published + 1 if start_revision is None else start_revision
        watch = Watch(self, spec, self._buffer_size, min_rev)
        self._watchers[wid] = watch
        if start_revision is not None:
            if start_revision < self._floor:
                self._cancel(watch, ErrorCode.COMPACTED, start_revision)
            elif start_revision <= self._dispatched:
                self._replay(watch, start_revision)
        return watch

    def _replay(self, watch: Watch, start: int) -> None:
        spec = watch._spec
        key = spec.key
        found: list[WatchEvent] = []
        for ev in reversed(self._history):
            if ev.revision < start:
                break
            if spec.matches(ev.key):
                found.append(ev)
        if not found:
            return
        found.reverse()
        if not spec.prev_kv:
            found = [_strip(ev) for ev in found]
        watch._buf.extend(found)
        watch._replay_left = len(found)

    def _unregister(self, watch: Watch) -> None:
        wid = watch._spec.watcher_id
        if self._watchers.pop(wid, None) is not None:
            self._registry.unregister(wid)

    def _cancel(self, watch: Watch, code: int, revision: int) -> None:
        """Send CANCELED as the watcher's last event and unregister it."""
        if watch._state is not _OPEN:
            return
        if code == ErrorCode.COMPACTED:
            self._n_compacted += 1
        spec = watch._spec
        watch._end(_CANCELED_STATE, WatchEvent(_CANCELED, spec.key, b"", None, revision, code))
        watch._dispatcher = None
        self._unregister(watch)
        if self._metrics:
            log.warning("watch %d on %r canceled at revision %d (error %d)", spec.watcher_id, spec.key, revision, code)

    def watcher_count(self) -> int:
        return len(self._watchers)

    def changes_since(self, revision: int) -> list[WatchEvent] | None:
        """Every change this node applied with a revision >= ``revision``,
        oldest first (the retained history, then what waits to be
        dispatched), or None when the history no longer reaches back that
        far. The etcd face answers reads at an older revision with it."""
        if revision < self._floor:
            return None
        out = [ev for ev in self._history if ev.revision >= revision]
        for item in self._queue:
            if not isinstance(item, _Batch):
                return None
            out.extend(ev for ev in item.events if ev.revision >= revision)
        return out

    @property
    def first_retained_revision(self) -> int:
        """The oldest ``start_revision`` a new watch can replay from; an older
        one is CANCELED with COMPACTED (etcd's ``compact_revision``)."""
        return self._floor

    # ------------------------------------------------------------------
    # The dispatcher task
    # ------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch until cancelled. Start it in the node's nursery."""
        interval = self.settings.heartbeat_interval_ms / 1000
        next_beat = trio.current_time() + self._jitter(interval) if interval > 0 else float("inf")
        while True:
            with trio.move_on_at(next_beat):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._queue:
                self.dispatch_pending()
            if interval > 0 and trio.current_time() >= next_beat:
                self._heartbeat()
                next_beat = trio.current_time() + self._jitter(interval)

    def _jitter(self, interval: float) -> float:
        return interval * self._rng.uniform(0.9, 1.1)

    def dispatch_pending(self) -> None:
        """Everything queued, in one pass (run() calls this; so does close())."""
        queue, self._queue = self._queue, deque()
        self._queued = 0
        watchers = self._watchers
        match = self._registry.match
        cap = self._buffer_size
        deliveries = 0
        for item in queue:
            if isinstance(item, _Batch):
                events = item.events
                for ev in events:
                    ids = match(ev.key)
                    if not ids:
                        continue
                    stripped: WatchEvent | None = None
                    rev = ev.revision
                    for wid in ids:
                        w = watchers.get(wid)
                        if w is None or rev < w._min_rev:
                            continue
                        buf = w._buf
                        if len(buf) - w._replay_left >= cap:
                            self._overflow(w, rev)
                            continue
                        if w._spec.prev_kv or ev.prev_value is None:
                            buf.append(ev)
                        else:
                            if stripped is None:
                                stripped = _strip(ev)
                            buf.append(stripped)
                        deliveries += 1
                        if w._waiter is not None:
                            w._wake()
                self._n_dispatched += len(events)
                self._remember(events)
                self._dispatched = item.applied
            elif isinstance(item, _Lost):
                for wid, rev in item.lost.items():
                    w = watchers.get(wid)
                    if w is not None:
                        self._n_queue_overflow += 1
                        self._cancel(w, ErrorCode.WATCH_BUFFER_OVERFLOW, rev)
                self._dispatched = item.applied
            else:
                assert isinstance(item, _SnapshotJump)
                first_missed = self._dispatched + 1
                for w in [w for wid, w in watchers.items() if wid <= item.last_watcher_id]:
                    if w._min_rev <= item.index:
                        self._cancel(w, ErrorCode.COMPACTED, max(first_missed, w._min_rev))
                self._dispatched = item.applied
        self._n_deliveries += deliveries

    def _overflow(self, watch: Watch, revision: int) -> None:
        # Events of this revision already buffered go too, so that a watch
        # resumed with start_revision=revision sees no duplicate.
        buf = watch._buf
        while len(buf) > watch._replay_left and buf[-1].revision == revision:
            buf.pop()
        self._n_overflow += 1
        if self._metrics:
            log.warning(
                "watch %d on %r: buffer of %d events full (watcher_buffer_size); canceling",
                watch.id,
                watch.key,
                self._buffer_size,
            )
        self._cancel(watch, ErrorCode.WATCH_BUFFER_OVERFLOW, revision)

    def _remember(self, events: list[WatchEvent]) -> None:
        h = self._history
        h.extend(events)
        over = len(h) - self._history_max
        if over > 0:
            for _ in range(over - 1):
                h.popleft()
            evicted = h.popleft()
            if evicted.revision + 1 > self._floor:
                self._floor = evicted.revision + 1

    def _heartbeat(self) -> None:
        rev = self._dispatched
        cap = self._buffer_size
        event = WatchEvent(_PROGRESS, b"", b"", None, rev)
        for w in self._watchers.values():
            if len(w._buf) - w._replay_left < cap:
                w._buf.append(event)
                w._wake()
        self._n_heartbeats += 1

    # ------------------------------------------------------------------
    # Stop and statistics
    # ------------------------------------------------------------------

    def close(self, error: BaseException | None = None) -> None:
        """Engine stop: dispatch what is queued, then end every watcher with
        ``error`` (default EngineStopped). Idempotent."""
        if self._closed is not None:
            return
        if self._queue:
            self.dispatch_pending()
        self._closed = error if error is not None else EngineStopped("the engine stopped")
        for w in list(self._watchers.values()):
            w._stop_error = self._closed
            w._dispatcher = None
            if w._state is _OPEN:
                w._end(_STOPPED)
        self._watchers.clear()
        self._registry = WatchRegistry(max_watchers=self.settings.max_watcher_count)

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            watchers=len(self._watchers),
            events_published=self._n_published,
            events_dispatched=self._n_dispatched,
            deliveries=self._n_deliveries,
            queued_events=self._queued,
            max_queued_events=self._max_queued,
            lag_revisions=self._published - self._dispatched,
            applied_revision=self._published,
            dispatched_revision=self._dispatched,
            heartbeats=self._n_heartbeats,
            canceled_buffer_overflow=self._n_overflow,
            canceled_queue_overflow=self._n_queue_overflow,
            canceled_compacted=self._n_compacted,
            history_events=len(self._history),
            history_floor=self._floor,
        )


def _strip(ev: WatchEvent) -> WatchEvent:
    return WatchEvent(ev.type, ev.key, ev.value, None, ev.revision, ev.error, ev.create_revision, ev.version, ev.lease)
