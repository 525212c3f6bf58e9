"""What the leader knows about each follower's log (modelled on etcd-io/raft).

Rules:
* PROBE: the leader does not know where the follower's log matches; it sends
  one append at a time and waits for the answer (or the next heartbeat answer)
  before sending another.
* REPLICATE: the match point is known; appends are pipelined optimistically,
  ``next`` jumps past what was sent, bounded by an in-flight window.
* SNAPSHOT: the entries the follower needs were compacted; a snapshot is on
  its way and nothing else is sent until it is acknowledged (or the leader
  gives up after an election timeout and probes again).
"""

from __future__ import annotations

import enum
from collections import deque

import attrs


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@attrs.define
class Inflights:
    """Last indexes of appends sent but not acknowledged, oldest first."""

    capacity: int
    _items: deque[int] = attrs.field(factory=deque)

    def add(self, last_index: int) -> None:
        self._items.append(last_index)

    def free_le(self, index: int) -> None:
        items = self._items
        while items and items[0] <= index:
            items.popleft()

    def free_first_one(self) -> None:
        if self._items:
            self._items.popleft()

    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def reset(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@attrs.define
class Progress:
    match: int
    next: int
    inflights: Inflights
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_snapshot: int = 0
    snapshot_sent_tick: int = 0
    # Leader's tick when it last heard from this peer (check-quorum).
    last_heard: int = 0
    # Tick of the last catch-up append sent on a heartbeat answer.
    resend_tick: int = -1

    def become_probe(self) -> None:
        # Leaving SNAPSHOT: the snapshot (if it landed) covers pending_snapshot.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int, tick: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.snapshot_sent_tick = tick

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index`` arrived; False if it was stale."""
        updated = False
        if index > self.match:
            self.match = index
            self.probe_sent = False
            updated = True
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def optimistic_update(self, last_sent: int) -> None:
        self.next = last_sent + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append whose prev_index was ``rejected``.
        Returns False when the rejection is stale (out of order)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
