"""RaftCore: the Raft algorithm as a deterministic object.

The core is *told* things (``tick``, ``step``, ``propose``, ``read_index``,
``on_persisted`` ...) and *answers* by queueing work the driver must do:
entries and hard state to persist, messages to send now, messages to send
only after the current batch is durable, committed entries to apply, read
states to release. It never waits, never reads a clock, never touches a file
or a socket, and draws randomness only from the ``random.Random`` it is given.

Rules (section numbers of the Raft paper / Ongaro's thesis):
* Terms (§5.1): a message from a higher term turns us into a follower of that
  term, except vote requests arriving while we are inside a leader's lease
  (§4.2.3/§9.6: check-quorum nodes ignore them) and pre-vote traffic, which
  never changes anyone's term.
* Elections (§5.2, §9.6): on election timeout a voter first runs a pre-vote
  (term+1 asked for, not taken); only if a majority would vote does it
  become a candidate. A vote is granted at most once per term, and only to a
  candidate whose log is at least as up to date as ours (§5.4.1). Term and
  vote are durable before any vote or vote request leaves (after_persist).
* Check-quorum (§6.2): a leader that has not heard from a majority within an
  election timeout steps down.
* Replication (§5.3): appends are pipelined per follower within an in-flight
  window; a rejection carries a hint so the leader skips a whole term of
  mismatching entries at once.
* Commit (§5.4.2): the leader commits the largest index durable on a majority
  of voters -- counting itself only after its own fsync -- and only if that
  entry is from its current term. A new leader appends a no-op at once.
* Snapshots (§7): the application compacts the log; a follower that needs
  compacted entries gets InstallSnapshot.
* Membership (§4.1, see membership.py): single-server changes, one at a time.
* Reads (§6.4): ReadIndex after the leader committed an entry of its term,
  confirmed by a heartbeat quorum shared by all waiting reads; lease reads
  while check-quorum guarantees no other leader can exist.
* Leadership transfer (§3.10): catch the target up, then TimeoutNow.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

import attrs

from dengine.errors import InvalidArgument, MembershipChangeInProgress, NotLeader, ProposalDropped, ResourceExhausted
from dengine.raft import membership
from dengine.raft.log import RaftLog
from dengine.raft.messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    RequestVote,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    TimeoutNow,
    TransferLeader,
    VoteResponse,
    needs_durability,
)
from dengine.raft.progress import Inflights, Progress, ProgressState
from dengine.raft.quorum import VoteResult, committed_index, has_quorum, vote_result
from dengine.raft.read_only import PendingRead, ReadOnly, Round


def _node_set(nodes: Iterable[int]) -> frozenset[int]:
    # A typed converter: with ``converter=frozenset`` mypy's attrs plugin types
    # the __init__ argument as an unsolved ``Iterable[_T_co]``.
    return frozenset(nodes)


@attrs.frozen
class RaftConfig:
    """Knobs of the pure core. Time is counted in ticks."""

    id: int
    # Voters of a brand-new cluster. Every initial member must be given the
    # same set; a node joining an existing cluster is given an empty set and
    # learns the membership from the leader.
    initial_voters: frozenset[int] = attrs.field(factory=frozenset, converter=_node_set)
    # What the bootstrap entry of each initial voter carries (identical on
    # every initial member; opaque to the core).
    initial_contexts: Mapping[int, bytes] = attrs.field(factory=dict)
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_inflight: int = 256
    max_append_entries: int = 1024
    max_append_bytes: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    # The most any node's clock may run fast or slow, as a fraction of real
    # time (0.1 = 10 %). The leader lease is derived from it: see
    # lease_ticks() and docs/design.md.
    max_clock_drift: float = 0.1
    # Bytes of entries the leader holds that are not yet committed (etcd's
    # MaxUncommittedEntriesSize); a proposal over it fails with
    # ResourceExhausted. One proposal is always let through when nothing is
    # uncommitted, however large.
    max_uncommitted_bytes: int = 64 << 20
    # Bytes of committed entries handed out per Ready (etcd's
    # MaxCommittedSizePerReady), so one apply step stays bounded after a
    # restart or a long catch-up. At least one entry is always handed out.
    max_committed_bytes_per_ready: int = 4 << 20
    # A learner is promoted only when at most this many entries behind.
    learner_max_lag: int = 1000

    def lease_ticks(self) -> int:
        """How many ticks after a heartbeat round was sent the leader may
        serve lease reads on the quorum that answered it.

        Every voter that answered refuses to help elect anyone else until
        ``election_tick`` of *its* ticks have passed since it heard the
        round; the first of those ticks may come at once, so no other leader
        can exist before ``(election_tick - 1)`` follower ticks of real time.
        The leader counts ``lease_ticks`` ticks from the moment the round was
        opened (never later than it was sent). With every clock's rate within
        ``1 +- max_clock_drift`` of real time the lease is safe when
        ``lease_ticks * (1 + d) <= (election_tick - 1) * (1 - d)``.
        """
        d = self.max_clock_drift
        return int((self.election_tick - 1) * (1 - d) / (1 + d) + 1e-9)

    def validate(self) -> list[str]:
        """One plain sentence per bad field; empty when valid."""
        problems: list[str] = []
        if not isinstance(self.id, int) or self.id <= 0:
            problems.append(f"node id must be a positive integer, got {self.id!r}.")
        if any((not isinstance(v, int)) or v <= 0 for v in self.initial_voters):
            problems.append("initial voters must be positive integer node ids.")
        if self.heartbeat_tick < 1:
            problems.append(f"heartbeat_tick must be at least 1, got {self.heartbeat_tick}.")
        if self.election_tick <= self.heartbeat_tick:
            problems.append(
                f"election_tick ({self.election_tick}) must be greater than heartbeat_tick ({self.heartbeat_tick})."
            )
        if self.max_inflight < 1:
            problems.append(f"max_inflight must be at least 1, got {self.max_inflight}.")
        if self.max_append_entries < 1:
            problems.append(f"max_append_entries must be at least 1, got {self.max_append_entries}.")
        if self.max_append_bytes < 1:
            problems.append(f"max_append_bytes must be at least 1, got {self.max_append_bytes}.")
        if not (isinstance(self.max_clock_drift, (int, float)) and 0 <= self.max_clock_drift < 1):
            problems.append(f"max_clock_drift must be at least 0 and below 1, got {self.max_clock_drift!r}.")
        elif self.election_tick > self.heartbeat_tick and self.check_quorum and self.lease_ticks() < 1:
            problems.append(
                f"the leader lease cannot be safe with election_tick {self.election_tick} and "
                f"max_clock_drift {self.max_clock_drift:g}: raise election_tick or lower max_clock_drift."
            )
        if self.max_uncommitted_bytes < 1:
            problems.append(f"max_uncommitted_bytes must be at least 1, got {self.max_uncommitted_bytes}.")
        if self.max_committed_bytes_per_ready < 1:
            problems.append(
                f"max_committed_bytes_per_ready must be at least 1, got {self.max_committed_bytes_per_ready}."
            )
        return problems


def bootstrap_entries(voters: frozenset[int], contexts: Mapping[int, bytes] | None = None) -> list[Entry]:
    """The entries every initial member writes at indexes 1..n of a new
    cluster; ``contexts`` (identical on every initial member: derived from
    the shared initial configuration) go with them."""
    contexts = contexts or {}
    return [
        Entry(
            index=k + 1,
            term=1,
            type=EntryType.CONF_CHANGE,
            data=ConfChange(ConfChangeType.ADD_VOTER, node, contexts.get(node, b"")).encode(),
        )
        for k, node in enumerate(sorted(voters))
    ]


class RaftCore:
    def __init__(
        self,
        config: RaftConfig,
        *,
        rng: random.Random,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        problems = config.validate()
        if problems:
            raise InvalidArgument(" ".join(problems))
        self.config = config
        self.id = config.id
        self.rng = rng
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        self.log = RaftLog(snapshot=snapshot, entries=entries, committed=hs.commit)
        # Membership in force: the snapshot's, then committed changes after it.
        self.conf = snapshot.meta.conf_state if snapshot else ConfState()
        # Latest snapshot, kept to send to followers that need compacted entries.
        self.snapshot: Snapshot | None = snapshot
        self.pending_conf: list[int] = []  # indexes of conf entries not yet committed
        fresh = (hard_state is None or hard_state == HardState()) and snapshot is None and not entries
        if fresh and config.initial_voters:
            boot = bootstrap_entries(config.initial_voters, config.initial_contexts)
            self.log.append(boot)
            self.term = 1
            self.log.commit_to(len(boot))
        self.role = Role.FOLLOWER
        self.lead: int | None = None
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.tick_count = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee: int | None = None
        self.transfer_elapsed = 0
        self.lease_disabled = False  # set once we sent TimeoutNow in this term
        self.read_only = ReadOnly()
        self.reads_before_commit: list[PendingRead] = []
        # Reads sent to the leader, by ctx, with the tick they left at: the
        # leader may never answer (it dropped the read, or the message was
        # lost), so they are given up after ``read_timeout_ticks``.
        self.forwarded_reads: dict[bytes, int] = {}
        self.reads_to_forward: list[bytes] = []
        # Peers owed an append (coalesced: one message per peer per Ready).
        self.dirty: dict[int, bool] = {}
        # Leader: bytes of entries proposed in this term not yet committed.
        self.uncommitted_bytes = 0
        # Output queues, drained by RawNode.ready().
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[bytes] = []
        self.first_commit_in_term: int | None = None
        self._reset_randomized_timeout()
        self._index_conf_entries(self.log.snapshot_index + 1)
        self._apply_committed_conf()
        self.role = self._follower_role()

    # ------------------------------------------------------------------
    # Small queries
    # ------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(role=self.role, leader=self.lead, term=self.term, conf_state=self.conf)

    def is_voter(self) -> bool:
        return self.id in self.conf.voters

    def promotable(self) -> bool:
        """May this node campaign? Only voters, and not while a snapshot it
        received is still on its way to disk."""
        return self.is_voter() and self.log.pending_snapshot is None and self.log.snapshot_in_flight is None

    def committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def in_lease(self) -> bool:
        """Check-quorum lease on the receiving side (thesis §4.2.3): having heard
        from a leader less than an election timeout ago -- or having started less
        than an election timeout ago, since a restart forgets what it heard --
        we refuse to help anyone else become leader."""
        if not self.config.check_quorum:
            return False
        if self.tick_count < self.config.election_tick:
            return True
        return self.lead is not None and self.election_elapsed < self.config.election_tick

    def read_timeout_ticks(self) -> int:
        """How long a read may wait for its heartbeat round (leader) or for
        the leader's answer (follower) before it is dropped."""
        return 2 * self.config.election_tick

    def _expire_forwarded_reads(self) -> None:
        limit = self.read_timeout_ticks()
        expired = [c for c, sent in self.forwarded_reads.items() if self.tick_count - sent > limit]
        for ctx in expired:
            del self.forwarded_reads[ctx]
        self.dropped_reads.extend(expired)

    def _follower_role(self) -> Role:
        return Role.LEARNER if self.id in self.conf.learners else Role.FOLLOWER

    # ------------------------------------------------------------------
    # Sending
    # ------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        """Queue ``msg``; whether it may leave before the current Ready is
        durable is decided here, by its type, never at the call site (as
        etcd-raft routes every append/vote response through one place)."""
        if needs_durability(msg):
            self.msgs_after_persist.append(msg)
        else:
            self.msgs.append(msg)

    # ------------------------------------------------------------------
    # Transitions
    # ------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = None
            self.lease_disabled = False
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # A first-commit not yet reported is moot once we stop leading.
        self.first_commit_in_term = None
        self._reset_randomized_timeout()
        self.votes = {}
        self.lead_transferee = None
        self.transfer_elapsed = 0
        self._drop_all_reads()
        self.dirty = {}
        self.prs = {}

    def _reset_randomized_timeout(self) -> None:
        # (ET, 1.5 ET] rather than etcd's [ET, 2 ET): the spread only has to
        # keep two followers' timers a vote round apart (a few ms against a
        # spread of ET / 2), and every tick of it is time with no leader
        # after one is lost (issue 11: writes again within 2 ET). Never
        # exactly ET: the tick a lease ends is not also the tick of a
        # campaign, so a node that lost its leader can first hear a peer out.
        et = self.config.election_tick
        self.randomized_election_timeout = et + 1 + self.rng.randrange(max(1, et // 2))

    def become_follower(self, term: int, lead: int | None) -> None:
        self._reset(term)
        self.lead = lead
        self.role = self._follower_role()

    def become_pre_candidate(self) -> None:
        # Pre-vote (thesis §9.6): ask whether we *would* win term+1 without
        # taking it, so a node that was partitioned away cannot force the
        # cluster into a new term when it comes back.
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self.votes = {self.id: True}
        self._campaign_messages(pre_vote=True, force=False)
        if vote_result(self.conf.voters, self.votes) is VoteResult.WON:
            self.become_candidate(force=False)

    def become_candidate(self, force: bool) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id
        self.votes = {self.id: True}
        self._campaign_messages(pre_vote=False, force=force)
        if vote_result(self.conf.voters, self.votes) is VoteResult.WON:
            self.become_leader()

    def _campaign_messages(self, *, pre_vote: bool, force: bool) -> None:
        term = self.term + 1 if pre_vote else self.term
        for peer in sorted(self.conf.voters):
            if peer == self.id:
                continue
            msg = RequestVote(
                frm=self.id,
                to=peer,
                term=term,
                last_index=self.log.last_index(),
                last_term=self.log.last_term(),
                pre_vote=pre_vote,
                force=force,
            )
            self._send(msg)  # a real vote request waits for our own vote to be durable

    def become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        last = self.log.last_index()
        for peer in self.conf.members():
            self.prs[peer] = self._new_progress(peer, last)
        self.prs[self.id].match = self.log.persisted
        self.uncommitted_bytes = 0  # what earlier leaders left is not ours to limit
        # §5.4.2 / §8: a no-op from the new term lets earlier entries commit
        # and gives ReadIndex a commit point of our own term.
        self.first_commit_in_term = None
        self._append_entries([Entry(index=last + 1, term=self.term)])
        self._broadcast_append()

    def _new_progress(self, peer: int, last: int) -> Progress:
        return Progress(
            match=0,
            next=last + 1,
            inflights=Inflights(self.config.max_inflight),
            is_learner=peer in self.conf.learners,
            last_heard=self.tick_count,  # a new leader or member gets a full election timeout
        )

    def campaign(self, force: bool = False) -> None:
        if not self.promotable() or self.role is Role.LEADER:
            return
        if self.config.pre_vote and not force:
            self.become_pre_candidate()
        else:
            self.become_candidate(force=force)

    # ------------------------------------------------------------------
    # Time
    # ------------------------------------------------------------------

    def tick(self) -> None:
        self.tick_count += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.forwarded_reads:
            self._expire_forwarded_reads()
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign()

    def _tick_leader(self) -> None:
        cfg = self.config
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= cfg.election_tick:
            self.election_elapsed = 0
        if cfg.check_quorum:
            # §6.2: checked every tick, not once per election timeout, so a
            # leader cut off from a quorum steps down one election timeout
            # after it last heard from one (not up to two), and its callers
            # hear so (LeaderChanged) that much sooner.
            active = self.recently_active()
            if not has_quorum(self.conf.voters, active):
                # We may be on the minority side of a partition -- or only our
                # inbound side is cut, and the followers, still hearing our
                # heartbeats, would wait out their own timeouts first. Hand
                # off: ask the most caught-up voter we have *not* heard from
                # (on the far side of the cut; a peer on our side could not
                # win, and its forced term would disrupt the majority later)
                # to campaign now. If our messages cannot reach it, this is lost
                # and the usual timeouts elect a leader.
                target = self._handoff_target(active)
                self.become_follower(self.term, None)
                if target is not None:
                    self._send(TimeoutNow(frm=self.id, to=target, term=self.term))
                return
        if self.lead_transferee is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= cfg.election_tick:
                self.lead_transferee = None  # the transfer failed; keep leading
        for pending in self.read_only.expire(self.tick_count, self.read_timeout_ticks()):
            self._drop_read(pending)
        if self.heartbeat_elapsed >= cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(take_reads=self.committed_in_term())

    # ------------------------------------------------------------------
    # Client-facing inputs
    # ------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(leader_id=self.lead)
        if self.lead_transferee is not None:
            raise ProposalDropped(
                f"leadership is being transferred to node {self.lead_transferee}; retry shortly"
            )
        if self.id not in self.conf.members():
            raise ProposalDropped("this leader has been removed from the cluster")

    def propose(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Append one NORMAL entry per item; returns (first index, term)."""
        self._check_can_propose()
        size = sum(len(d) for d in datas)
        limit = self.config.max_uncommitted_bytes
        if self.uncommitted_bytes and self.uncommitted_bytes + size > limit:
            raise ResourceExhausted(
                f"the leader holds {self.uncommitted_bytes} bytes of uncommitted writes "
                f"(limit {limit}); retry once they commit"
            )
        self.uncommitted_bytes += size
        first = self.log.last_index() + 1
        self._append_entries(
            [Entry(index=first + k, term=self.term, data=d) for k, d in enumerate(datas)]
        )
        self._broadcast_append()
        return first, self.term

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        self._check_can_propose()
        if self.pending_conf:
            raise MembershipChangeInProgress(
                f"a membership change at index {self.pending_conf[0]} is not committed yet; "
                "only one change may be in flight"
            )
        if not self.committed_in_term():
            raise ProposalDropped(
                "this leader has not committed an entry of its term yet; retry shortly"
            )
        membership.validate(self.conf, change)
        pr = self.prs.get(change.node_id)
        membership.check_safe(
            self.conf, change, active=self.recently_active(),
            learner_lag=None if pr is None or pr.match == 0 else self.log.last_index() - pr.match,
            max_lag=self.config.learner_max_lag,
        )
        index = self.log.last_index() + 1
        self._append_entries(
            [Entry(index=index, term=self.term, type=EntryType.CONF_CHANGE, data=change.encode())]
        )
        self._broadcast_append()
        return index, self.term

    def _handoff_target(self, active: set[int]) -> int | None:
        """The voter a leader stepping down for lack of a quorum asks to
        campaign: the most caught-up one it has not heard from lately."""
        far = [p for p in self.conf.voters if p != self.id and p not in active and p in self.prs]
        if not far:
            return None
        return max(far, key=lambda p: (self.prs[p].match, -p))

    def recently_active(self) -> set[int]:
        """Leader: the members it heard from within an election timeout, and
        itself (check-quorum's view)."""
        now, limit = self.tick_count, self.config.election_tick
        return {p for p, pr in self.prs.items() if p == self.id or now - pr.last_heard < limit}

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; the answer comes as a ReadState
        (or the ctx in ``dropped_reads`` if it cannot be served here)."""
        if self.role is Role.LEADER:
            pending = PendingRead(ctx, self.id)
            if not self.committed_in_term():
                # §6.4 step 1: wait for our no-op to commit first.
                self.reads_before_commit.append(pending)
            elif self.conf.voters == {self.id}:
                self.read_states.append(ReadState(ctx, self.log.committed))
            else:
                self.read_only.add(ctx, self.id)
        elif self.lead is not None and self.role in (Role.FOLLOWER, Role.LEARNER):
            self.reads_to_forward.append(ctx)
        else:
            self.dropped_reads.append(ctx)

    def lease_read_index(self) -> int | None:
        """The index a lease read may be served at, or None if the lease does
        not hold (not leader, lease expired, no own-term commit, transferring)."""
        if self.role is not Role.LEADER or not self.committed_in_term():
            return None
        if self.lease_disabled or self.lead_transferee is not None:
            return None
        if self.conf.voters == {self.id}:
            return self.log.committed
        if not self.config.check_quorum:
            return None
        start = self.read_only.lease_start_tick
        if start is None:
            return None
        if self.tick_count < start + self.config.lease_ticks():
            return self.log.committed
        return None

    def transfer_leader(self, transferee: int) -> None:
        if self.role is not Role.LEADER:
            if self.lead is None:
                raise NotLeader("no leader is known to transfer from", leader_id=None)
            self._send(TransferLeader(frm=self.id, to=self.lead, term=self.term, transferee=transferee))
            return
        self._start_transfer(transferee)

    def _start_transfer(self, transferee: int) -> None:
        if transferee == self.id:
            return
        if transferee not in self.conf.voters:
            raise InvalidArgument(f"node {transferee} is not a voter, so it cannot become leader")
        if self.lead_transferee == transferee:
            return
        self.lead_transferee = transferee
        self.transfer_elapsed = 0
        # Ongoing reads keep working: ReadIndex needs a heartbeat quorum, which
        # a transferred term denies us. The lease is given up for the term.
        if self.prs[transferee].match == self.log.last_index():
            self._send_timeout_now(transferee)
        else:
            self.dirty[transferee] = True

    def _send_timeout_now(self, peer: int) -> None:
        self.lease_disabled = True
        self._send(TimeoutNow(frm=self.id, to=peer, term=self.term))

    def compact(self, snapshot: Snapshot) -> None:
        """The application took ``snapshot``; drop the log it covers."""
        meta = snapshot.meta
        if meta.index > self.log.applied:
            raise InvalidArgument(
                f"snapshot index {meta.index} is beyond the applied index {self.log.applied}"
            )
        if self.log.term(meta.index) != meta.term and meta.index > self.log.snapshot_index:
            raise InvalidArgument(f"snapshot term {meta.term} does not match the log at {meta.index}")
        if meta.index <= self.log.snapshot_index:
            return
        self.log.compact(meta.index, meta.term)
        self.snapshot = snapshot

    def drop_snapshot_data(self, meta: SnapshotMeta) -> None:
        """The application keeps the bytes of the snapshot at ``meta`` (on
        disk) and will fill them in: from now on an InstallSnapshot carries
        the snapshot's meta with empty data, and the application completes
        it before sending. Memory then holds the state once, not twice."""
        if self.snapshot is not None and self.snapshot.meta == meta and self.snapshot.data:
            self.snapshot = Snapshot(meta=meta)

    # ------------------------------------------------------------------
    # Messages
    # ------------------------------------------------------------------

    def step(self, m: Message) -> None:
        if m.to != self.id:
            return
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if not m.force and self.in_lease():
                    # §4.2.3: a leader we heard from recently is alive; ignore
                    # the disruptive candidate without even raising our term.
                    return
                if m.pre_vote:
                    self._handle_vote(m)
                    return
                self.become_follower(m.term, None)
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the term we asked for
            elif isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, None)
        elif m.term < self.term:
            self._step_stale(m)
            return

        if isinstance(m, RequestVote):
            self._handle_vote(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif isinstance(m, ReadIndexRequest):
            # §6.4: only the leader can confirm a read index. Say so (the
            # ``reject`` of ReadIndexResponse) so the requester fails its reads
            # now instead of holding them until it notices the leader change.
            self._send(
                ReadIndexResponse(frm=self.id, to=m.frm, term=self.term, ctxs=m.ctxs, index=0, reject=True)
            )
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _step_stale(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat)) and (self.config.check_quorum or self.config.pre_vote):
            # A deposed leader (or one cut off by a partition) would otherwise
            # never learn the new term: tell it, so it steps down.
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, index=0, reject=True))
        elif isinstance(m, RequestVote) and m.pre_vote:
            # Lets a pre-candidate with a stale term learn the current one.
            self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, granted=False, pre_vote=True))

    def _handle_vote(self, m: RequestVote) -> None:
        if m.pre_vote and self.role is Role.PRE_CANDIDATE and m.term > self.term:
            self._handle_rival_pre_vote(m)
            return
        if m.pre_vote:
            can_vote = m.term > self.term
        else:
            can_vote = self.vote == m.frm or (self.vote is None and self.lead is None)
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            if m.pre_vote:
                self._send(VoteResponse(frm=self.id, to=m.frm, term=m.term, granted=True, pre_vote=True))
            else:
                self.vote = m.frm
                self.election_elapsed = 0
                # §5.2 + persistence contract: the vote is durable before it leaves.
                self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, granted=True))
        else:
            self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, granted=False, pre_vote=m.pre_vote))
            if (m.pre_vote and self.role is Role.FOLLOWER and self.promotable() and not self.in_lease()
                    and not self.log.is_up_to_date(m.last_index, m.last_term)):
                # The asker lost the leader as we did (we are out of lease) but
                # cannot win: its log is behind ours. Campaign now rather than
                # at our own timeout, up to half an election timeout later.
                self.campaign()

    def _handle_rival_pre_vote(self, m: RequestVote) -> None:
        """A pre-vote from a peer campaigning at the same moment as we are.
        Granting each other's pre-votes, both would become candidates, vote
        for themselves and split the vote, leaving no leader for another
        election timeout (the long tail of issue 11's gaps, with timeouts a
        tick apart and ticks of different phase on each node). One of the two
        steps back instead: the one with the shorter log, and between equal
        logs the one with the higher id. The other keeps campaigning and gets
        the vote of the one that stepped back."""
        same = (m.last_term, m.last_index) == (self.log.last_term(), self.log.last_index())
        if self.log.is_up_to_date(m.last_index, m.last_term) and (not same or m.frm < self.id):
            self._send(VoteResponse(frm=self.id, to=m.frm, term=m.term, granted=True, pre_vote=True))
            self.become_follower(self.term, None)
        else:
            self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, granted=False, pre_vote=True))

    # -- leader ------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if isinstance(m, ReadIndexRequest):
            for ctx in m.ctxs:
                pending = PendingRead(ctx, m.frm)
                if self.committed_in_term():
                    self.read_only.add(ctx, m.frm)
                else:
                    self.reads_before_commit.append(pending)
            if self.conf.voters == {self.id}:
                self._release_rounds([self._single_voter_round()])
            return
        if isinstance(m, TransferLeader):
            try:
                self._start_transfer(m.transferee)
            except InvalidArgument:
                pass  # a stale or bad request from a follower: nothing to do
            return
        if pr is None:
            return
        pr.last_heard = self.tick_count
        if isinstance(m, AppendResponse):
            self._handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            self._handle_heartbeat_response(m, pr)

    def _single_voter_round(self) -> Round:
        reads = self.read_only.waiting
        self.read_only.waiting = []
        return Round(0, self.tick_count, self.log.committed, reads, {self.id})

    def _handle_append_response(self, m: AppendResponse, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.hint_term > 0:
                hint = self.log.find_conflict_by_term(m.reject_hint, m.hint_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self.dirty[m.frm] = True
            return
        old_paused = pr.is_paused()
        if pr.maybe_update(m.index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
            elif pr.state is ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if self._maybe_commit():
                self._broadcast_append()
            elif old_paused or pr.match < self.log.last_index():
                self.dirty[m.frm] = True
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self._send_timeout_now(m.frm)

    def _handle_heartbeat_response(self, m: HeartbeatResponse, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.state is ProgressState.SNAPSHOT and (
            self.tick_count - pr.snapshot_sent_tick >= self.config.election_tick
        ):
            # The snapshot (or its answer) was lost; probe again.
            pr.become_probe()
        if (pr.match < self.log.last_index() or pr.state is ProgressState.PROBE) and (
            pr.resend_tick != self.tick_count
        ):
            # Send even an empty append: it uncovers a gap left by lost
            # messages. At most once per peer per tick: ReadIndex opens a
            # heartbeat round per batch of reads, and answering each of those
            # with an append would flood a follower that is merely busy.
            pr.resend_tick = self.tick_count
            self.dirty[m.frm] = True
        if m.round and m.frm in self.conf.voters:
            self._release_rounds(self.read_only.ack(m.frm, m.round, self.conf.voters))

    def _release_rounds(self, rounds: list[Round]) -> None:
        for rnd in rounds:
            by_requester: dict[int, list[bytes]] = {}
            for pending in rnd.reads:
                if pending.requester == self.id:
                    self.read_states.append(ReadState(pending.ctx, rnd.index))
                else:
                    by_requester.setdefault(pending.requester, []).append(pending.ctx)
            for peer, ctxs in by_requester.items():
                self._send(
                    ReadIndexResponse(frm=self.id, to=peer, term=self.term, ctxs=tuple(ctxs), index=rnd.index)
                )

    def _maybe_commit(self) -> bool:
        match = {p: pr.match for p, pr in self.prs.items()}
        match[self.id] = self.log.persisted  # ourselves only once durable
        if self.id in self.prs:
            self.prs[self.id].match = self.log.persisted
        old = self.log.committed
        if self.log.maybe_commit(committed_index(self.conf.voters, match), self.term):
            if self.uncommitted_bytes:
                done = sum(len(e.data) for e in self.log.slice(old + 1, self.log.committed + 1))
                self.uncommitted_bytes = max(0, self.uncommitted_bytes - done)
            self._on_commit_advanced()
            return True
        return False

    def _on_commit_advanced(self) -> None:
        if self.role is Role.LEADER and self.first_commit_in_term is None and self.committed_in_term():
            self.first_commit_in_term = self.log.committed
            self._release_reads_before_commit()
        self._apply_committed_conf()

    def _release_reads_before_commit(self) -> None:
        pending, self.reads_before_commit = self.reads_before_commit, []
        for p in pending:
            self.read_only.add(p.ctx, p.requester)
        if pending and self.conf.voters == {self.id}:
            self._release_rounds([self._single_voter_round()])

    # -- replication -----------------------------------------------------

    def _append_entries(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._index_conf_entries(entries[0].index)

    def _broadcast_append(self) -> None:
        for peer in self.prs:
            if peer != self.id:
                self.dirty[peer] = True

    def flush(self) -> None:
        """Turn coalesced intentions into messages: one append per owed peer,
        one heartbeat round for waiting reads, one forwarded read request."""
        if self.role is Role.LEADER:
            if self.read_only.reads_waiting_for_round():
                if self.conf.voters == {self.id}:
                    self._release_rounds([self._single_voter_round()])
                else:
                    self._broadcast_heartbeat(take_reads=True)
            for peer in sorted(self.dirty):
                if peer in self.prs:
                    self._maybe_send_append(peer, send_if_empty=True)
            self.dirty = {}
            self._coalesce_heartbeats()
        elif self.reads_to_forward:
            if self.lead is not None:
                ctxs = tuple(self.reads_to_forward)
                for ctx in ctxs:
                    self.forwarded_reads[ctx] = self.tick_count
                self._send(ReadIndexRequest(frm=self.id, to=self.lead, term=self.term, ctxs=ctxs))
            else:
                self.dropped_reads.extend(self.reads_to_forward)
            self.reads_to_forward = []

    def _coalesce_heartbeats(self) -> None:
        """Several heartbeat ticks between two Readies (a busy loop, ticks
        caught up after a pause) need only the newest heartbeat per peer: an
        answer to round r acknowledges every round <= r."""
        last: dict[int, int] = {}
        for pos, msg in enumerate(self.msgs):
            if isinstance(msg, Heartbeat):
                last[msg.to] = pos
        if len(last) == sum(1 for m in self.msgs if isinstance(m, Heartbeat)):
            return
        self.msgs = [
            m for pos, m in enumerate(self.msgs) if not isinstance(m, Heartbeat) or last[m.to] == pos
        ]

    def _maybe_send_append(self, peer: int, send_if_empty: bool) -> None:
        pr = self.prs[peer]
        if pr.is_paused():
            return
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None and prev_index < self.log.snapshot_index:
            self._send_snapshot(peer, pr)
            return
        if prev_term is None:
            # next ran past our log (stale optimism); fall back to probing.
            pr.become_probe()
            prev_index = pr.next - 1
            prev_term = self.log.term(prev_index)
            if prev_term is None:
                self._send_snapshot(peer, pr)
                return
        cfg = self.config
        entries = self.log.slice(pr.next, self.log.last_index() + 1, cfg.max_append_entries, cfg.max_append_bytes) \
            if pr.next <= self.log.last_index() else []
        if not entries and not send_if_empty:
            return
        self._send(
            AppendEntries(
                frm=self.id,
                to=peer,
                term=self.term,
                prev_index=prev_index,
                prev_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        if pr.state is ProgressState.REPLICATE:
            if entries:
                pr.optimistic_update(entries[-1].index)
                pr.inflights.add(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True

    def _send_snapshot(self, peer: int, pr: Progress) -> None:
        snap = self.snapshot
        if snap is None:  # pragma: no cover - compaction always records one
            return
        pr.become_snapshot(snap.meta.index, self.tick_count)
        self._send(InstallSnapshot(frm=self.id, to=peer, term=self.term, snapshot=snap))

    def _broadcast_heartbeat(self, take_reads: bool) -> None:
        number = self.read_only.open_round(self.id, self.tick_count, self.log.committed, take_reads)
        for peer, pr in sorted(self.prs.items()):
            if peer == self.id:
                continue
            self._send(
                Heartbeat(
                    frm=self.id,
                    to=peer,
                    term=self.term,
                    commit=min(pr.match, self.log.committed),
                    round=number,
                )
            )
        if self.conf.voters == {self.id}:
            self._release_rounds(self.read_only.ack(self.id, number, self.conf.voters))

    # -- candidate ----------------------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
        elif isinstance(m, VoteResponse):
            if m.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return
            self.votes.setdefault(m.frm, m.granted)
            result = vote_result(self.conf.voters, self.votes)
            if result is VoteResult.WON:
                if self.role is Role.PRE_CANDIDATE:
                    self.become_candidate(force=False)
                else:
                    self.become_leader()
            elif result is VoteResult.LOST:
                self.become_follower(self.term, None)

    # -- follower -----------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self.lead = m.frm
            self.election_elapsed = 0
            self._handle_append(m)
        elif isinstance(m, Heartbeat):
            self.lead = m.frm
            self.election_elapsed = 0
            if self.log.commit_to(m.commit):
                self._apply_committed_conf()
            self._send(HeartbeatResponse(frm=self.id, to=m.frm, term=self.term, round=m.round))
        elif isinstance(m, InstallSnapshot):
            self.lead = m.frm
            self.election_elapsed = 0
            self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self.promotable():
                self.campaign(force=True)
        elif isinstance(m, ReadIndexResponse):
            # Only reads still waiting: a duplicated answer must not release twice.
            answered = [c for c in m.ctxs if self.forwarded_reads.pop(c, None) is not None]
            for ctx in answered:
                if m.reject:
                    self.dropped_reads.append(ctx)
                else:
                    self.read_states.append(ReadState(ctx, m.index))

    def _handle_append(self, m: AppendEntries) -> None:
        log = self.log
        if m.prev_index < log.committed:
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, index=log.committed))
            return
        old_commit = log.committed
        old_last = log.last_index()
        last_new = log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last_new is None:
            hint_index = min(m.prev_index, log.last_index())
            hint_index = log.find_conflict_by_term(hint_index, m.prev_term)
            hint_term = log.term(hint_index) or 0
            self._send(
                AppendResponse(
                    frm=self.id,
                    to=m.frm,
                    term=self.term,
                    index=m.prev_index,
                    reject=True,
                    reject_hint=hint_index,
                    hint_term=hint_term,
                )
            )
            return
        if m.entries:
            first_changed = min(old_last + 1, m.entries[0].index)
            self._truncate_conf_index(first_changed)
            self._index_conf_entries(first_changed)
        if log.committed > old_commit:
            self._apply_committed_conf()
        # §5.3 + persistence contract: acknowledge only once durable.
        self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, index=last_new))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.snapshot.meta
        log = self.log
        if meta.index <= log.committed:
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, index=log.committed))
            return
        if log.match_term(meta.index, meta.term):
            # We have the entries; just learn they are committed.
            log.commit_to(meta.index)
            self._apply_committed_conf()
        else:
            log.restore(m.snapshot)
            self.snapshot = m.snapshot
            self.conf = meta.conf_state
            self.pending_conf = []
            self.role = self._follower_role()
        self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, index=log.committed))

    # ------------------------------------------------------------------
    # Persistence feedback
    # ------------------------------------------------------------------

    def on_persisted(self, index: int, term: int) -> None:
        if self.log.on_persisted(index, term) and self.role is Role.LEADER:
            if self._maybe_commit():
                self._broadcast_append()

    def on_snapshot_persisted(self, meta: SnapshotMeta) -> None:
        if self.log.snapshot_in_flight == meta:
            self.log.snapshot_in_flight = None
        if self.log.snapshot_index == meta.index and self.log.persisted < meta.index:
            self.log.persisted = meta.index

    # ------------------------------------------------------------------
    # Membership
    # ------------------------------------------------------------------

    def _index_conf_entries(self, start: int) -> None:
        log = self.log
        for idx in range(max(start, log.first_index()), log.last_index() + 1):
            if log.entry(idx).type is EntryType.CONF_CHANGE and idx not in self.pending_conf:
                self.pending_conf.append(idx)
        self.pending_conf.sort()

    def _truncate_conf_index(self, first_changed: int) -> None:
        self.pending_conf = [i for i in self.pending_conf if i < first_changed]

    def _apply_committed_conf(self) -> None:
        """Membership changes take effect once known committed (membership.py)."""
        changed = False
        while self.pending_conf and self.pending_conf[0] <= self.log.committed:
            idx = self.pending_conf.pop(0)
            try:
                change = ConfChange.decode(self.log.entry(idx).data)
            except ValueError:
                continue  # a malformed change applies as nothing, on every replica
            self.conf = membership.apply(self.conf, change)
            changed = True
        if changed:
            self._on_conf_changed()

    def _on_conf_changed(self) -> None:
        members = self.conf.members()
        if self.role is Role.LEADER:
            last = self.log.last_index()
            for peer in members:
                if peer not in self.prs:
                    self.prs[peer] = self._new_progress(peer, last)
                    self.dirty[peer] = True
                self.prs[peer].is_learner = peer in self.conf.learners
            for peer in list(self.prs):
                if peer not in members:
                    del self.prs[peer]
                    self.dirty.pop(peer, None)
            if self.lead_transferee is not None and self.lead_transferee not in self.conf.voters:
                self.lead_transferee = None
            if self.id not in self.conf.voters:
                # We removed (or demoted) ourselves: hand over to the most
                # up-to-date voter right away rather than wait for a timeout.
                best = max(
                    (p for p in self.conf.voters if p in self.prs),
                    key=lambda p: (self.prs[p].match, -p),
                    default=None,
                )
                if best is not None:
                    self._send_timeout_now(best)
                self.become_follower(self.term, None)
                return
            if self._maybe_commit():
                self._broadcast_append()
            self._release_rounds(self.read_only.recheck(self.conf.voters))
        elif self.role in (Role.FOLLOWER, Role.LEARNER):
            self.role = self._follower_role()

    # ------------------------------------------------------------------
    # Reads bookkeeping
    # ------------------------------------------------------------------

    def _drop_read(self, pending: PendingRead) -> None:
        if pending.requester == self.id:
            self.dropped_reads.append(pending.ctx)
        # Reads of other nodes: the requester drops them when its leader
        # changes or its deadline passes.

    def _drop_all_reads(self) -> None:
        for pending in self.read_only.drain():
            self._drop_read(pending)
        for pending in self.reads_before_commit:
            self._drop_read(pending)
        self.reads_before_commit = []
        self.dropped_reads.extend(self.forwarded_reads)
        self.dropped_reads.extend(self.reads_to_forward)
        self.forwarded_reads = {}
        self.reads_to_forward = []
