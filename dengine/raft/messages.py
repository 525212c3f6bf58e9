"""Values the Raft core consumes and produces.

Every message between peers is one frozen attrs class. All of them carry
``frm`` (sender id), ``to`` (receiver id) and ``term`` (the sender's term; for
a pre-vote request, the term the sender *would* campaign in).

Nothing here knows about bytes on the wire: dengine.codec maps these classes
to msgpack and back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Union

import attrs


class EntryType(enum.IntEnum):
    NORMAL = 0  # application command; empty data = the leader's no-op
    CONF_CHANGE = 1  # data is an encoded ConfChange (see ConfChange.encode)


@attrs.frozen(slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@attrs.frozen(slots=True)
class HardState:
    """What must be durable before a vote or an append acknowledgement leaves."""

    term: int = 0
    vote: int | None = None
    commit: int = 0


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0  # add a non-voting member (it receives the log)
    PROMOTE = 1  # turn a caught-up learner into a voter
    REMOVE = 2  # remove a voter or a learner (the leader included)
    # Only in the bootstrap entries every initial member writes identically at
    # indexes 1..n of a new cluster; never accepted as a proposal.
    ADD_VOTER = 3
    # Change what a member's context says (its addresses), not its role.
    UPDATE = 4


#: The most bytes a membership change may carry as context.
MAX_CONF_CONTEXT = 1024


@attrs.frozen(slots=True)
class ConfChange:
    """A single-server membership change (see docs/design.md for why)."""

    type: ConfChangeType
    node_id: int
    # Opaque to the core: what the state machine records of the member (its
    # addresses; dengine.kv.members). Empty in bootstrap entries written
    # before contexts existed.
    context: bytes = b""

    def encode(self) -> bytes:
        # Fixed, tiny, self-contained layout so the pure core can read
        # membership entries without a codec dependency:
        # 1 byte type, 8 bytes big-endian node id, then the context.
        return bytes([int(self.type)]) + int(self.node_id).to_bytes(8, "big") + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if not 9 <= len(data) <= 9 + MAX_CONF_CONTEXT:
            raise ValueError(f"conf change payload must be 9 to {9 + MAX_CONF_CONTEXT} bytes, got {len(data)}")
        return cls(ConfChangeType(data[0]), int.from_bytes(data[1:9], "big"), bytes(data[9:]))


def _node_set(nodes: Iterable[int]) -> frozenset[int]:
    # A typed converter: with ``converter=frozenset`` mypy's attrs plugin types
    # the __init__ argument as an unsolved ``Iterable[_T_co]``.
    return frozenset(nodes)


@attrs.frozen(slots=True)
class ConfState:
    """The membership in force: voters and learners (disjoint sets)."""

    voters: frozenset[int] = attrs.field(factory=frozenset, converter=_node_set)
    learners: frozenset[int] = attrs.field(factory=frozenset, converter=_node_set)

    def members(self) -> frozenset[int]:
        return self.voters | self.learners


@attrs.frozen(slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf_state: ConfState


@attrs.frozen(slots=True)
class Snapshot:
    """A state-machine image covering every entry up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes = b""


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"


@attrs.frozen(slots=True)
class SoftState:
    """Volatile state the driver may want to observe; never persisted."""

    role: Role
    leader: int | None
    term: int
    conf_state: ConfState


@attrs.frozen(slots=True)
class ReadState:
    """A ReadIndex request released: serve the read with ``ctx`` once the
    local state machine has applied ``index``."""

    ctx: bytes
    index: int


# --------------------------------------------------------------------------
# Messages between peers
# --------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class AppendEntries:
    frm: int
    to: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...] = ()
    commit: int = 0


@attrs.frozen(slots=True, kw_only=True)
class AppendResponse:
    frm: int
    to: int
    term: int
    # On success: the highest index known to match (and durable) on the sender.
    # On rejection: the prev_index that was rejected.
    index: int
    reject: bool = False
    # Fast backtracking hint on rejection: the sender's last index and the
    # (term, first index of that term) of its entry at min(prev_index, last).
    reject_hint: int = 0
    hint_term: int = 0


@attrs.frozen(slots=True, kw_only=True)
class RequestVote:
    frm: int
    to: int
    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    # Set by a leadership transfer: the receiver ignores its leader lease.
    force: bool = False


@attrs.frozen(slots=True, kw_only=True)
class VoteResponse:
    frm: int
    to: int
    term: int
    granted: bool
    pre_vote: bool = False


@attrs.frozen(slots=True, kw_only=True)
class InstallSnapshot:
    frm: int
    to: int
    term: int
    snapshot: Snapshot


@attrs.frozen(slots=True, kw_only=True)
class Heartbeat:
    frm: int
    to: int
    term: int
    commit: int
    # The leader's heartbeat round; echoed so the leader can tell which of its
    # rounds (ReadIndex confirmation, lease renewal) the answer belongs to.
    round: int = 0


@attrs.frozen(slots=True, kw_only=True)
class HeartbeatResponse:
    frm: int
    to: int
    term: int
    round: int = 0


@attrs.frozen(slots=True, kw_only=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index on behalf of its callers."""

    frm: int
    to: int
    term: int
    ctxs: tuple[bytes, ...]


@attrs.frozen(slots=True, kw_only=True)
class ReadIndexResponse:
    frm: int
    to: int
    term: int
    ctxs: tuple[bytes, ...]
    index: int
    # True when the leader could not serve the request (it is not leader any
    # more); the follower drops the reads so its callers can retry.
    reject: bool = False


@attrs.frozen(slots=True, kw_only=True)
class TimeoutNow:
    """Leadership transfer: the receiver campaigns at once, ignoring leases."""

    frm: int
    to: int
    term: int


@attrs.frozen(slots=True, kw_only=True)
class TransferLeader:
    """A follower forwards a transfer request to the leader."""

    frm: int
    to: int
    term: int
    transferee: int


Message = Union[
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    InstallSnapshot,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    TransferLeader,
]

MESSAGE_TYPES: tuple[type, ...] = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    InstallSnapshot,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    TransferLeader,
)


def needs_durability(m: Message) -> bool:
    """Whether ``m`` may leave only once the Ready that produced it is durable.

    * an AppendResponse acknowledges entries (or a snapshot, or a commit
      point) the leader will count toward commit: they must be on disk;
      a rejection carries our term, which must not be forgotten either;
    * a real (not pre-) VoteResponse or RequestVote promises a vote and a
      term that must survive a crash (§5.2: at most one vote per term).

    Pre-vote traffic changes no state and leaves at once, as does everything
    else (appends, heartbeats and their answers, reads, transfers).
    """
    if type(m) is AppendResponse:
        return True
    if type(m) is VoteResponse or type(m) is RequestVote:
        return not m.pre_vote
    return False
