"""Single-server membership changes: validation and application.

Why single-server changes and not joint consensus (thesis §4.2 vs §4.3):
adding or removing one voter at a time means any majority of the old
configuration overlaps any majority of the new one, so no extra joint phase
is needed. It is safe under failures given three rules, all enforced by the
core:
1. At most one membership change is in the log uncommitted at a time.
2. A leader proposes one only after it has committed an entry of its own term
   (this closes the single-server bug Ongaro described in 2015).
3. A change takes effect on each node when that node learns it is committed,
   and committed changes are never undone.
New members join as learners (non-voting, they receive the log) and are
promoted once caught up, so a slow new member never stalls commits.
"""

from __future__ import annotations

from dengine.errors import InvalidArgument
from dengine.raft.messages import ConfChange, ConfChangeType, ConfState


def validate(conf: ConfState, change: ConfChange) -> None:
    """Raise InvalidArgument naming the problem if ``change`` cannot apply to ``conf``."""
    node = change.node_id
    if not isinstance(node, int) or node <= 0:
        raise InvalidArgument(f"node id must be a positive integer, got {node!r}")
    if change.type is ConfChangeType.ADD_LEARNER:
        if node in conf.voters:
            raise InvalidArgument(f"node {node} is already a voter")
        if node in conf.learners:
            raise InvalidArgument(f"node {node} is already a learner")
    elif change.type is ConfChangeType.PROMOTE:
        if node not in conf.learners:
            raise InvalidArgument(f"node {node} is not a learner, so it cannot be promoted")
    elif change.type is ConfChangeType.REMOVE:
        if node not in conf.members():
            raise InvalidArgument(f"node {node} is not a member")
        if conf.voters == {node}:
            raise InvalidArgument(f"node {node} is the last voter; removing it would leave no cluster")
    elif change.type is ConfChangeType.ADD_VOTER:
        raise InvalidArgument("ADD_VOTER is only for bootstrap; add a learner and promote it instead")
    else:  # pragma: no cover - enum is closed
        raise InvalidArgument(f"unknown membership change {change.type!r}")


def apply(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``. A change that does not apply (it
    was valid when proposed but is not now) leaves ``conf`` unchanged, the
    same way on every replica."""
    node = change.node_id
    voters, learners = set(conf.voters), set(conf.learners)
    if change.type is ConfChangeType.ADD_LEARNER and node not in voters:
        learners.add(node)
    elif change.type is ConfChangeType.ADD_VOTER:
        learners.discard(node)
        voters.add(node)
    elif change.type is ConfChangeType.PROMOTE and node in learners:
        learners.discard(node)
        voters.add(node)
    elif change.type is ConfChangeType.REMOVE and not (voters == {node}):
        voters.discard(node)
        learners.discard(node)
    return ConfState(voters=voters, learners=learners)
