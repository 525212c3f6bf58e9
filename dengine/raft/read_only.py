"""ReadIndex rounds and the leader lease (Raft thesis §6.4 and §6.4.1).

Rules:
* Every heartbeat the leader broadcasts opens a numbered *round*; followers
  echo the number. An answer to round r proves the follower still accepted
  this leader's term after round r was sent, so it acknowledges every round
  <= r.
* A ReadIndex request waits for the next round the leader opens (one round is
  opened at once when reads are waiting and none has been opened for them);
  every read waiting at that moment shares it. The round records the commit
  index when it opened; once a quorum of voters acknowledged it, each read
  is released with that index (the caller serves it after applying that far).
* The lease: when a quorum acknowledged round r, no other leader can be elected
  before ``sent_tick(r) + election_timeout`` ticks, because each voter that
  answered refuses votes for an election timeout after hearing from us (the
  check-quorum "in lease" rule). The leader serves lease reads until
  ``sent_tick(r) + lease_ticks`` (RaftConfig.lease_ticks), which absorbs
  bounded clock drift between nodes (see docs/design.md).
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from dengine.raft.quorum import has_quorum


@attrs.define
class PendingRead:
    ctx: bytes
    requester: int  # node id the answer goes to (the leader itself for local reads)


@attrs.define
class Round:
    number: int
    sent_tick: int
    index: int  # commit index when the round opened
    reads: list[PendingRead]
    acks: set[int]


@attrs.define
class ReadOnly:
    next_round: int = 1
    # Reads waiting for the next round to open.
    waiting: list[PendingRead] = attrs.field(factory=list)
    # Open rounds, oldest first; only those not yet confirmed.
    rounds: list[Round] = attrs.field(factory=list)
    lease_start_tick: int | None = None

    def add(self, ctx: bytes, requester: int) -> None:
        self.waiting.append(PendingRead(ctx, requester))

    def open_round(self, self_id: int, tick: int, commit: int, take_reads: bool) -> int:
        """Open a round; ``take_reads`` moves every waiting read into it."""
        number = self.next_round
        self.next_round += 1
        reads = self.waiting if take_reads else []
        if take_reads:
            self.waiting = []
        self.rounds.append(Round(number, tick, commit, reads, {self_id}))
        return number

    def ack(self, frm: int, number: int, voters: Collection[int]) -> list[Round]:
        """Record that ``frm`` answered round ``number``; return the rounds that
        just reached a quorum (and every older one), oldest first."""
        confirmed_upto = -1
        for pos, rnd in enumerate(self.rounds):
            if rnd.number > number:
                break
            rnd.acks.add(frm)
            if has_quorum(voters, rnd.acks):
                confirmed_upto = pos
        if confirmed_upto < 0:
            return []
        released = self.rounds[: confirmed_upto + 1]
        del self.rounds[: confirmed_upto + 1]
        newest = released[-1].sent_tick
        if self.lease_start_tick is None or newest > self.lease_start_tick:
            self.lease_start_tick = newest
        return released

    def recheck(self, voters: Collection[int]) -> list[Round]:
        """After a membership change the quorum may already be reached."""
        confirmed_upto = -1
        for pos, rnd in enumerate(self.rounds):
            if has_quorum(voters, rnd.acks):
                confirmed_upto = pos
        if confirmed_upto < 0:
            return []
        released = self.rounds[: confirmed_upto + 1]
        del self.rounds[: confirmed_upto + 1]
        return released

    def expire(self, tick: int, max_age: int) -> list[PendingRead]:
        """Give up on rounds older than ``max_age`` ticks; their reads are dropped."""
        dropped: list[PendingRead] = []
        while self.rounds and tick - self.rounds[0].sent_tick > max_age:
            dropped.extend(self.rounds.pop(0).reads)
        return dropped

    def reads_waiting_for_round(self) -> bool:
        return bool(self.waiting)

    def drain(self) -> list[PendingRead]:
        """Drop everything (leadership lost)."""
        out = list(self.waiting)
        for rnd in self.rounds:
            out.extend(rnd.reads)
        self.waiting = []
        self.rounds = []
        self.lease_start_tick = None
        return out
