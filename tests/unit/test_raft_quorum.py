"""Majority arithmetic (dengine/raft/quorum.py) against dumb oracles.

Rules pinned: §5.3/§5.4 an index is committed when a majority of *voters*
holds it; §5.2 a candidate wins with a majority of voters' grants and loses
once a majority is out of reach; learners and strangers never count.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dengine.raft.quorum import VoteResult, committed_index, has_quorum, majority, vote_result

ids = st.integers(min_value=1, max_value=9)
voter_sets = st.frozensets(ids, max_size=7)


def oracle_committed(voters: frozenset[int], match: dict[int, int]) -> int:
    """The largest index held by more than half of the voters, by brute force."""
    best = 0
    for candidate in {0, *match.values()}:
        holders = sum(1 for v in voters if match.get(v, 0) >= candidate)
        if holders * 2 > len(voters):
            best = max(best, candidate)
    return best


def oracle_sort_and_pick(voters: frozenset[int], match: dict[int, int]) -> int:
    if not voters:
        return 0
    values = sorted(match.get(v, 0) for v in voters)
    return values[(len(values) - 1) // 2]  # the median, rounding down


@given(voters=voter_sets, match=st.dictionaries(ids, st.integers(0, 50)))
def test_committed_index_matches_sort_and_pick(voters: frozenset[int], match: dict[int, int]) -> None:
    got = committed_index(voters, match)
    assert got == oracle_sort_and_pick(voters, match)
    assert got == oracle_committed(voters, match)


@given(voters=voter_sets, match=st.dictionaries(ids, st.integers(0, 50)), learner=st.integers(10, 20))
def test_committed_index_ignores_non_voters(voters: frozenset[int], match: dict[int, int], learner: int) -> None:
    assert committed_index(voters, {**match, learner: 10**6}) == committed_index(voters, match)


def oracle_vote(voters: frozenset[int], votes: dict[int, bool]) -> VoteResult:
    n = len(voters)
    yes = sum(1 for v in voters if votes.get(v) is True)
    no = sum(1 for v in voters if votes.get(v) is False)
    if n and yes * 2 > n:
        return VoteResult.WON
    if not n or (n - no) * 2 <= n:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(voters=voter_sets, votes=st.dictionaries(st.integers(1, 12), st.booleans()))
def test_vote_result_matches_counting(voters: frozenset[int], votes: dict[int, bool]) -> None:
    assert vote_result(voters, votes) is oracle_vote(voters, votes)


@given(voters=voter_sets, members=st.frozensets(st.integers(1, 12)))
def test_has_quorum_matches_counting(voters: frozenset[int], members: frozenset[int]) -> None:
    expected = bool(voters) and len(voters & members) * 2 > len(voters)
    assert has_quorum(voters, members) == expected


def test_majority_of_small_clusters() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_5_2_single_voter_wins_alone_and_empty_config_never_wins() -> None:
    assert vote_result({1}, {1: True}) is VoteResult.WON
    assert vote_result(set(), {1: True}) is VoteResult.LOST
    assert committed_index(set(), {1: 5}) == 0
