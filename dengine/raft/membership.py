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

from collections.abc import Collection

from dengine.errors import InvalidArgument, MembershipChangeRefused
from dengine.raft.messages import ConfChange, ConfChangeType, ConfState
from dengine.raft.quorum import has_quorum


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
    elif change.type is ConfChangeType.UPDATE:
        if node not in conf.members():
            raise InvalidArgument(f"node {node} is not a member")
    else:  # pragma: no cover - enum is closed
        raise InvalidArgument(f"unknown membership change {change.type!r}")


def apply(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``. A change that does not apply (it
    was valid when proposed but is not now) leaves ``conf`` unchanged, the
    same way on every replica; so does UPDATE, which changes only what the
    state machine records of a member."""
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


def check_safe(conf: ConfState, change: ConfChange, *, active: Collection[int], learner_lag: int | None,
               max_lag: int) -> None:
    """Raise MembershipChangeRefused if ``change`` is valid but not safe now
    (etcd's strict reconfiguration check), as the leader sees the cluster:
    ``active`` are the members it heard from within an election timeout
    (itself included), ``learner_lag`` how many entries a learner to
    promote is behind its log (None: it never acknowledged an entry)."""
    node = change.node_id
    if change.type is ConfChangeType.PROMOTE:
        if node not in active or learner_lag is None:
            raise MembershipChangeRefused(
                f"node {node} has not answered the leader yet (or not within an election timeout); promote it "
                "once it is running and caught up"
            )
        if learner_lag > max_lag:
            raise MembershipChangeRefused(
                f"node {node} is {learner_lag} entries behind the leader (raft.learner_max_lag is {max_lag}); "
                "promote it once it has caught up"
            )
    if change.type not in (ConfChangeType.PROMOTE, ConfChangeType.REMOVE):
        return  # a learner added or an address changed: the quorum stays as it is
    after = apply(conf, change)
    reachable = set(active) & after.voters
    if not has_quorum(after.voters, reachable):
        what = "promoting" if change.type is ConfChangeType.PROMOTE else "removing"
        raise MembershipChangeRefused(
            f"{what} node {node} would leave {len(reachable)} of {len(after.voters)} voters reachable from the "
            "leader, not a majority; bring members back first"
        )
