"""Does a peer message make sense on its own? (h11's "the peer misbehaved")

``check_message(m, self_id=...)`` returns None for a message a correct peer
could have sent, or one short plain sentence saying what is wrong with it.
It is pure and stateless: it looks only at the message and at this node's
id, never at our log or term, so it answers the same on every node, at any
time, and never raises whatever the fields hold. The driver drops (and
counts) what it refuses before the core sees it.

dengine.codec already refuses bytes that are not a message of the right
shape; this module checks the *meaning*, for messages that came through the
codec and for those that did not (the in-memory transport, the simulator's
hostile peers), so it checks field types as well.

Rules (what every correct peer keeps; the core's own messages all pass, see
tests/unit/test_raft_validate.py):

* Field types: ids, terms, indexes, commits, rounds are integers (not bools)
  from 0 to 2**64-1 (what the wire carries); flags are bools; ctxs and entry
  data are bytes; entries are Entry values of a known EntryType; a snapshot
  is a Snapshot with a SnapshotMeta and a ConfState of sets of node ids.
* Addressing: node ids are positive; the message is addressed to this node
  (a correct peer sends only to the node its connection's handshake named,
  so anything else was misrouted; the core would ignore it silently, the
  driver counts it); it does not claim to come from this node.
* Index 0 is the empty log's position and has term 0; every real entry (a
  snapshot's last one included) was created by a leader, in a term >= 1. So
  (prev_index, prev_term), (last_index, last_term), an AppendResponse's
  rejection hint, and a snapshot's (index, term) pair 0 with 0 only.
* Terms never exceed the message's own term: a leader's log holds no entry
  of a later term than its own, a candidate's log none of its campaign term
  (§5.1), a follower's none above its current term.
* AppendEntries (§5.3): entries are contiguous, the first one at
  prev_index + 1; their terms never go down and start at prev_term or above
  (log terms increase with the index). ``commit`` may exceed the last index
  the message carries: the leader sends its own commit index and the
  follower applies min(commit, last new index) (log.maybe_append). An empty
  AppendEntries (heartbeat, probe) is normal.
* Leader messages (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow)
  and vote requests come from a term >= 1: term 0 is before any election.
* RequestVote: a pre-vote is never forced (a leadership transfer campaigns
  without pre-vote, §3.10 / §9.6).
* AppendResponse rejection: the hint is at most the rejected index (the
  follower searches down from min(prev_index, its last index)).
* InstallSnapshot (§7): the snapshot covers at least index 1; its
  configuration has at least one voter and no node is both voter and
  learner (membership never removes the last voter).
* ReadIndexRequest carries at least one read. A granted ReadIndexResponse
  has an index >= 1: a leader answers reads only after committing an entry
  of its own term (§6.4), and a read index of 0 would let a stale read
  through. (A rejection's index is meaningless and not checked.)
* TransferLeader names a positive node id; it may name the sender (a
  follower asking to lead) or the leader itself (which then does nothing).

Not checked, on purpose: anything that needs our state (is the sender a
member, is its term current, does prev_index match our log); the *content*
of a CONF_CHANGE entry (the core applies a malformed change as nothing, on
every replica alike, so refusing to replicate it would stall the log).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dengine.raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    TransferLeader,
    VoteResponse,
)

__all__ = ["check_message"]

_UINT64_MAX = 2**64 - 1
_MESSAGE_TYPES = frozenset(MESSAGE_TYPES)


def check_message(m: Message, *, self_id: int) -> str | None:
    """None if ``m`` makes sense on its own for node ``self_id``, else one
    short sentence saying what is wrong. Never raises."""
    if type(m) not in _MESSAGE_TYPES:
        return f"{type(m).__name__} is not a Raft peer message"
    problem = (
        _uint(m.frm, "sender id")
        or _uint(m.to, "receiver id")
        or _uint(m.term, "term")
    )
    if problem:
        return problem
    if m.frm == 0:
        return "message from node 0"
    if m.to != self_id:
        return f"message to node {_num(m.to)} delivered to node {_num(self_id)}"
    if m.frm == self_id:
        return f"message from node {m.frm}, which is this node"
    return _CHECKS[type(m)](m)


# -- helpers: each returns a problem or None -----------------------------------


def _num(value: object) -> str:
    """An integer for a message (a huge one is not spelled out: int -> str
    of thousands of digits is slow, and refused past 4300 digits)."""
    if type(value) is not int:
        return f"({type(value).__name__})"
    if -_UINT64_MAX <= value <= _UINT64_MAX:
        return str(value)
    return "(beyond 64 bits)"


def _uint(value: object, name: str) -> str | None:
    if type(value) is not int:
        return f"{name} is not an integer ({type(value).__name__})"
    if value < 0:
        return f"negative {name} {_num(value)}"
    if value > _UINT64_MAX:
        return f"{name} does not fit in 64 bits"
    return None


def _bool(value: object, name: str) -> str | None:
    if type(value) is not bool:
        return f"{name} is not a boolean ({type(value).__name__})"
    return None


def _bytes_seq(value: object, name: str) -> str | None:
    if type(value) not in (tuple, list):
        return f"{name} is not a sequence ({type(value).__name__})"
    for item in value:  # type: ignore[attr-defined]
        if type(item) is not bytes:
            return f"{name} holds a {type(item).__name__}, not bytes"
    return None


def _position(index: int, term: int, index_name: str, term_name: str) -> str | None:
    """Index 0 pairs with term 0 only; real entries have a term >= 1."""
    if index == 0 and term != 0:
        return f"{term_name} {term} at {index_name} 0: index 0 has term 0"
    if index != 0 and term == 0:
        return f"{term_name} 0 at {index_name} {index}: only index 0 has term 0"
    return None


def _not_above_term(term: int, m: Message, term_name: str) -> str | None:
    if term > m.term:
        return f"{term_name} {term} is above the message term {m.term}"
    return None


def _elected_term(m: Message) -> str | None:
    if m.term == 0:
        return f"{type(m).__name__} in term 0, before any election"
    return None


def _node_ids(value: object, name: str) -> str | None:
    if type(value) is not frozenset:
        return f"{name} is not a set ({type(value).__name__})"
    for node in value:
        problem = _uint(node, f"a node id in {name}")
        if problem:
            return problem
        if node == 0:
            return f"{name} lists node 0"
    return None


# -- one check per message type ---------------------------------------------------


def _check_append(m: AppendEntries) -> str | None:
    problem = (
        _uint(m.prev_index, "prev_index")
        or _uint(m.prev_term, "prev_term")
        or _uint(m.commit, "commit")
        or _elected_term(m)
    )
    if problem:
        return problem
    problem = _position(m.prev_index, m.prev_term, "prev_index", "prev_term") or _not_above_term(
        m.prev_term, m, "prev_term"
    )
    if problem:
        return problem
    entries = m.entries
    if type(entries) not in (tuple, list):
        return f"entries is not a sequence ({type(entries).__name__})"
    index, term = m.prev_index, m.prev_term
    for k, e in enumerate(entries):
        problem = _check_entry(e)
        if problem:
            return problem
        if e.index != index + 1:
            if k == 0:
                return f"first entry index {_num(e.index)} does not follow prev_index {index}"
            return f"append entries are not contiguous: index {_num(e.index)} follows {index}"
        if e.term < term:
            if k == 0:
                return f"first entry term {e.term} is below prev_term {term}"
            return f"entry terms go down: {e.term} after {term}"
        problem = _position(e.index, e.term, "entry index", "entry term") or _not_above_term(e.term, m, "entry term")
        if problem:
            return problem
        index, term = e.index, e.term
    return None


def _check_entry(e: object) -> str | None:
    if type(e) is not Entry:
        return f"an entry is a {type(e).__name__}, not an Entry"
    problem = _uint(e.index, "entry index") or _uint(e.term, "entry term")
    if problem:
        return problem
    if not isinstance(e.type, EntryType):
        return f"entry {e.index} has an unknown type ({type(e.type).__name__})"
    if type(e.data) is not bytes:
        return f"entry {e.index} data is not bytes ({type(e.data).__name__})"
    return None


def _check_append_response(m: AppendResponse) -> str | None:
    problem = (
        _uint(m.index, "index")
        or _bool(m.reject, "reject")
        or _uint(m.reject_hint, "rejection hint")
        or _uint(m.hint_term, "hint term")
    )
    if problem or not m.reject:
        return problem
    if m.reject_hint > m.index:
        return f"rejection hint {m.reject_hint} is above the rejected index {m.index}"
    if m.reject_hint == 0 and m.hint_term != 0:
        return f"hint term {m.hint_term} at rejection hint 0: index 0 has term 0"
    return _not_above_term(m.hint_term, m, "hint term")


def _check_vote_request(m: RequestVote) -> str | None:
    problem = (
        _uint(m.last_index, "last_index")
        or _uint(m.last_term, "last_term")
        or _bool(m.pre_vote, "pre_vote")
        or _bool(m.force, "force")
        or _elected_term(m)
    )
    if problem:
        return problem
    problem = _position(m.last_index, m.last_term, "last_index", "last_term") or _not_above_term(
        m.last_term, m, "last_term"
    )
    if problem:
        return problem
    if m.pre_vote and m.force:
        return "a pre-vote request is never forced"
    return None


def _check_vote_response(m: VoteResponse) -> str | None:
    return _bool(m.granted, "granted") or _bool(m.pre_vote, "pre_vote")


def _check_snapshot(m: InstallSnapshot) -> str | None:
    problem = _elected_term(m)
    if problem:
        return problem
    snap = m.snapshot
    if type(snap) is not Snapshot:
        return f"the snapshot is a {type(snap).__name__}, not a Snapshot"
    if type(snap.data) is not bytes:
        return f"snapshot data is not bytes ({type(snap.data).__name__})"
    meta = snap.meta
    if type(meta) is not SnapshotMeta:
        return f"the snapshot meta is a {type(meta).__name__}, not a SnapshotMeta"
    problem = _uint(meta.index, "snapshot index") or _uint(meta.term, "snapshot term")
    if problem:
        return problem
    if meta.index == 0:
        return "snapshot at index 0 covers nothing"
    problem = _position(meta.index, meta.term, "snapshot index", "snapshot term") or _not_above_term(
        meta.term, m, "snapshot term"
    )
    if problem:
        return problem
    conf = meta.conf_state
    if type(conf) is not ConfState:
        return f"the snapshot configuration is a {type(conf).__name__}, not a ConfState"
    problem = _node_ids(conf.voters, "snapshot voters") or _node_ids(conf.learners, "snapshot learners")
    if problem:
        return problem
    if not conf.voters:
        return "snapshot configuration has no voters"
    both = conf.voters & conf.learners
    if both:
        return f"snapshot configuration lists node {min(both)} as both voter and learner"
    return None


def _check_heartbeat(m: Heartbeat) -> str | None:
    return _uint(m.commit, "commit") or _uint(m.round, "round") or _elected_term(m)


def _check_heartbeat_response(m: HeartbeatResponse) -> str | None:
    return _uint(m.round, "round")


def _check_read_request(m: ReadIndexRequest) -> str | None:
    problem = _bytes_seq(m.ctxs, "read contexts")
    if problem:
        return problem
    if not m.ctxs:
        return "read index request carries no reads"
    return None


def _check_read_response(m: ReadIndexResponse) -> str | None:
    problem = _bytes_seq(m.ctxs, "read contexts") or _uint(m.index, "read index") or _bool(m.reject, "reject")
    if problem:
        return problem
    if not m.reject and m.index == 0:
        return "read index 0 granted: a leader serves reads only after its first commit"
    return None


def _check_timeout_now(m: TimeoutNow) -> str | None:
    return _elected_term(m)


def _check_transfer(m: TransferLeader) -> str | None:
    problem = _uint(m.transferee, "transferee")
    if problem:
        return problem
    if m.transferee == 0:
        return "transfer to node 0"
    return None


_CHECKS: dict[type, Callable[[Any], str | None]] = {
    AppendEntries: _check_append,
    AppendResponse: _check_append_response,
    RequestVote: _check_vote_request,
    VoteResponse: _check_vote_response,
    InstallSnapshot: _check_snapshot,
    Heartbeat: _check_heartbeat,
    HeartbeatResponse: _check_heartbeat_response,
    ReadIndexRequest: _check_read_request,
    ReadIndexResponse: _check_read_response,
    TimeoutNow: _check_timeout_now,
    TransferLeader: _check_transfer,
}

assert set(_CHECKS) == _MESSAGE_TYPES, "every peer message type needs a check"
