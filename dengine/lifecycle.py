"""Lifecycle notifications, trio-native (the d-engine LifecycleNotifier request,
modelled on etcd's embed ReadyNotify / StopNotify).

Rules:
* ``ready`` is set once this node can serve linearizable requests: a leader is
  known, it has committed an entry of its term, and this node has applied up
  to it. It is set once and never cleared.
* ``stopping`` is set when shutdown begins, before any task is cancelled --
  also when the engine dies of an error. ``stopped`` once everything stopped.
* Leader changes go to every subscriber; a slow subscriber never blocks Raft:
  it gets the latest value, older ones coalesced. A subscription starts with
  the current value and ends (iteration stops) when the engine stops.
* First commits in a term go to every subscriber too, kept in a small bounded
  queue per subscriber (oldest dropped first if nobody reads).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

from dengine.api import LeaderInfo, MembershipChange
from dengine.errors import ResourceExhausted

T = TypeVar("T")


class Subscription(Generic[T]):
    """A receive side fed by the engine without ever blocking it.

    ``coalesce=True`` keeps only the newest value; otherwise up to ``maxlen``
    values, oldest dropped first. Iterate with ``async for``, or call
    ``receive()``; both end with ``trio.EndOfChannel`` semantics when the
    engine stops (iteration just finishes)."""

    def __init__(self, hub: _Hub[T], *, coalesce: bool, maxlen: int, strict: bool = False) -> None:
        self._hub = hub
        self._items: deque[T] = deque(maxlen=1 if coalesce else maxlen)
        self._event = trio.Event()
        self._closed = False
        self._strict = strict  # over maxlen: end with ResourceExhausted instead of dropping
        self._overflowed = False

    def _push(self, value: T) -> None:
        if self._strict and len(self._items) == self._items.maxlen:
            self._overflowed = True
            self._hub._discard(self)
            self._close()
            return
        self._items.append(value)
        self._event.set()

    def _close(self) -> None:
        self._closed = True
        self._event.set()

    async def receive(self) -> T:
        """The next value; raises ``trio.EndOfChannel`` once the engine stopped
        (or after ``close()``) and nothing is left."""
        while True:
            if self._items:
                return self._items.popleft()
            if self._closed:
                self._raise_end()
            self._event = trio.Event()
            await self._event.wait()

    def _raise_end(self) -> None:
        if self._overflowed:
            raise ResourceExhausted(
                f"this subscription fell more than {self._items.maxlen} values behind and was ended "
                "(none was dropped silently); open a new one"
            )
        raise trio.EndOfChannel

    def receive_nowait(self) -> T:
        if self._items:
            return self._items.popleft()
        if self._closed:
            self._raise_end()
        raise trio.WouldBlock

    def close(self) -> None:
        """Stop receiving (the engine forgets this subscription)."""
        self._hub._discard(self)
        self._close()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Hub(Generic[T]):
    def __init__(self, *, coalesce: bool, maxlen: int = 64, strict: bool = False) -> None:
        self._subs: list[Subscription[T]] = []
        self._coalesce = coalesce
        self._maxlen = maxlen
        self._strict = strict
        self._closed = False

    def subscribe(self, initial: T | None = None) -> Subscription[T]:
        sub: Subscription[T] = Subscription(self, coalesce=self._coalesce, maxlen=self._maxlen, strict=self._strict)
        if initial is not None:
            sub._push(initial)
        if self._closed:
            sub._close()
        else:
            self._subs.append(sub)
        return sub

    def publish(self, value: T) -> None:
        for sub in list(self._subs):
            sub._push(value)

    def close(self) -> None:
        self._closed = True
        for sub in self._subs:
            sub._close()
        self._subs = []

    def _discard(self, sub: Subscription[T]) -> None:
        if sub in self._subs:
            self._subs.remove(sub)


class Lifecycle:
    """The notifications of one engine; the runtime feeds it, users read it."""

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.stopping = trio.Event()
        self.stopped = trio.Event()
        self.removed = trio.Event()  # this node was removed from the cluster
        self.leader = LeaderInfo(leader_id=None, term=0)
        self._leader_hub: _Hub[LeaderInfo] = _Hub(coalesce=True)
        self._first_commit_hub: _Hub[int] = _Hub(coalesce=False, maxlen=64)
        # Every membership change, none dropped: a reader 64 behind is ended.
        self._member_hub: _Hub[MembershipChange] = _Hub(coalesce=False, maxlen=64, strict=True)

    # -- fed by the runtime ----------------------------------------------

    def leader_changed(self, leader_id: int | None, term: int) -> None:
        info = LeaderInfo(leader_id=leader_id, term=term)
        if info != self.leader:
            self.leader = info
            self._leader_hub.publish(info)

    def first_commit(self, index: int) -> None:
        self._first_commit_hub.publish(index)

    def membership_changed(self, change: MembershipChange) -> None:
        self._member_hub.publish(change)

    def mark_ready(self) -> None:
        self.ready.set()

    def begin_stop(self) -> None:
        self.stopping.set()

    def finish_stop(self) -> None:
        self._leader_hub.close()
        self._first_commit_hub.close()
        self._member_hub.close()
        self.stopping.set()
        self.stopped.set()

    # -- read by users ---------------------------------------------------

    def leader_changes(self) -> Subscription[LeaderInfo]:
        return self._leader_hub.subscribe(initial=self.leader)

    def first_commits(self) -> Subscription[int]:
        return self._first_commit_hub.subscribe()

    def membership_changes(self) -> Subscription[MembershipChange]:
        return self._member_hub.subscribe()
