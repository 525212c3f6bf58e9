"""Majority arithmetic, as pure functions.

Raft §5.3/§5.4: an entry is committed once it is stored (durably) on a
majority of voters; §5.2: a candidate wins once a majority of voters granted
it their vote. Learners never count.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The largest index that a majority of ``voters`` has (``match`` maps a
    voter to the highest index known durable on it; missing means 0).

    Sorted descending, the value at position ``majority - 1`` is held by at
    least ``majority`` voters and no larger value is.
    """
    if not voters:
        return 0
    values = sorted((match.get(v, 0) for v in voters), reverse=True)
    return values[majority(len(values)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    if not voters:
        return VoteResult.LOST
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], members: Collection[int]) -> bool:
    """Whether ``members`` includes a majority of ``voters``."""
    if not voters:
        return False
    return sum(1 for v in voters if v in members) >= majority(len(voters))
