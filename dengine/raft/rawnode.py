"""RawNode: the driver-facing API of the pure core.

A driver (the trio runtime, or the simulator) owns one RawNode and calls:
* ``tick()`` every tick interval;
* ``step(message)`` for every message from a peer;
* ``propose(datas)``, ``propose_conf_change(change)``, ``read_index(ctx)``,
  ``lease_read_index()``, ``transfer_leader(id)``, ``campaign()``;
* ``has_ready()`` / ``ready()`` to take the next numbered batch of work, then
  ``on_persisted(ready.number)`` once that batch is durable -- it returns the
  messages that were waiting for durability;
* ``on_applied(index)`` once the committed entries handed out up to
  ``index`` are applied: at most ``max_committed_bytes_per_ready`` bytes of
  committed entries are handed out and not yet applied at any time, so a
  long catch-up is applied in bounded steps;
* ``compact(snapshot)`` after taking a snapshot of applied state.
Nothing here blocks, sleeps, or reads a clock.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

import attrs

from dengine.raft.core import RaftConfig, RaftCore
from dengine.raft.messages import ConfChange, Entry, HardState, Message, Snapshot, SnapshotMeta, SoftState
from dengine.raft.ready import Ready


@attrs.frozen
class _Pending:
    number: int
    last_entry: tuple[int, int] | None  # (index, term) of the last entry handed out
    snapshot: SnapshotMeta | None
    after_persist: tuple[Message, ...]


class RawNode:
    def __init__(
        self,
        config: RaftConfig,
        *,
        rng: random.Random | None = None,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        self.core = RaftCore(
            config,
            rng=rng if rng is not None else random.Random(config.id),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
        )
        self._number = 0
        self._prev_soft: SoftState | None = None
        self._prev_hard: HardState = hard_state or HardState()
        self._pending: list[_Pending] = []
        # Committed entries handed out and not yet applied: (last index, bytes).
        self._applying: deque[tuple[int, int]] = deque()
        self.applying_bytes = 0

    # -- inputs -------------------------------------------------------------

    def tick(self) -> None:
        self.core.tick()

    def step(self, message: Message) -> None:
        self.core.step(message)

    def campaign(self) -> None:
        self.core.campaign()

    def propose(self, datas: Sequence[bytes]) -> tuple[int, int]:
        return self.core.propose(datas)

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        return self.core.propose_conf_change(change)

    def read_index(self, ctx: bytes) -> None:
        self.core.read_index(ctx)

    def lease_read_index(self) -> int | None:
        return self.core.lease_read_index()

    def transfer_leader(self, transferee: int) -> None:
        self.core.transfer_leader(transferee)

    def compact(self, snapshot: Snapshot) -> None:
        self.core.compact(snapshot)

    def drop_snapshot_data(self, meta: SnapshotMeta) -> None:
        self.core.drop_snapshot_data(meta)

    # -- output --------------------------------------------------------------

    def has_ready(self) -> bool:
        c = self.core
        if c.dirty or c.read_only.reads_waiting_for_round() or c.reads_to_forward:
            return True
        if c.msgs or c.msgs_after_persist or c.read_states or c.dropped_reads:
            return True
        if c.log.unstable_entries() or c.log.pending_snapshot is not None or self._may_hand_committed():
            return True
        if c.first_commit_in_term is not None and c.first_commit_in_term > 0:
            return True
        return c.soft_state() != self._prev_soft or c.hard_state() != self._prev_hard

    def ready(self) -> Ready:
        c = self.core
        c.flush()
        self._number += 1
        soft = c.soft_state()
        hard = c.hard_state()
        entries = tuple(c.log.unstable_entries())
        c.log.mark_handed()
        snapshot = c.log.pending_snapshot
        committed: tuple[Entry, ...] = ()
        if self._may_hand_committed():
            room = c.config.max_committed_bytes_per_ready - self.applying_bytes
            committed = tuple(c.log.next_committed(max_bytes=room))
            if committed:
                size = sum(len(e.data) + 16 for e in committed)
                self._applying.append((committed[-1].index, size))
                self.applying_bytes += size
        first_commit = c.first_commit_in_term if c.first_commit_in_term else None
        if first_commit:
            c.first_commit_in_term = 0  # reported once per term
        ready = Ready(
            number=self._number,
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            messages=tuple(c.msgs),
            after_persist=tuple(c.msgs_after_persist),
            committed=committed,
            read_states=tuple(c.read_states),
            dropped_reads=tuple(c.dropped_reads),
            first_commit_in_term=first_commit,
        )
        self._prev_soft = soft
        self._prev_hard = hard
        c.msgs, c.msgs_after_persist, c.read_states, c.dropped_reads = [], [], [], []
        self._pending.append(
            _Pending(
                number=ready.number,
                last_entry=(entries[-1].index, entries[-1].term) if entries else None,
                snapshot=snapshot.meta if snapshot is not None else None,
                after_persist=ready.after_persist,
            )
        )
        if snapshot is not None:
            # Handed out once; the driver persists it with this Ready.
            c.log.pending_snapshot = None
            c.log.snapshot_in_flight = snapshot.meta
        return ready

    def _may_hand_committed(self) -> bool:
        return self.core.log.has_next_committed() and (
            self.applying_bytes < self.core.config.max_committed_bytes_per_ready
        )

    def on_applied(self, index: int) -> bool:
        """The committed entries handed out up to ``index`` are applied (or a
        snapshot at ``index`` was installed). Returns True when committed
        entries held back by the bound may now be handed out."""
        held = self.core.log.has_next_committed() and not self._may_hand_committed()
        while self._applying and self._applying[0][0] <= index:
            self.applying_bytes -= self._applying.popleft()[1]
        return held and self._may_hand_committed()

    def on_persisted(self, number: int) -> list[Message]:
        """Everything in Readies up to ``number`` is durable. Returns the
        messages that were waiting for that, to be sent now."""
        out: list[Message] = []
        while self._pending and self._pending[0].number <= number:
            p = self._pending.pop(0)
            if p.snapshot is not None:
                self.core.on_snapshot_persisted(p.snapshot)
            if p.last_entry is not None:
                self.core.on_persisted(*p.last_entry)
            out.extend(p.after_persist)
        return out

    # -- observation ---------------------------------------------------------

    @property
    def id(self) -> int:
        return self.core.id

    def soft_state(self) -> SoftState:
        return self.core.soft_state()

    def hard_state(self) -> HardState:
        return self.core.hard_state()
