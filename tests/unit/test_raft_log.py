"""The Raft log (dengine/raft/log.py) against a naive list of terms, plus the
rules written at the top of log.py.

The model: ``terms[i - 1]`` is the term of the entry at index ``i``, the whole
history including what a snapshot covers. Generated logs obey Raft's shape
(terms never decrease along the log) and a follower shares with the leader at
least its committed prefix (Leader Completeness), so every generated append is
one a real leader could send.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine.raft.log import LogInvariantBroken, RaftLog
from dengine.raft.messages import ConfState, Entry, Snapshot, SnapshotMeta


def make_log(terms: list[int], snap: int = 0, committed: int = 0) -> RaftLog:
    snapshot = Snapshot(SnapshotMeta(snap, terms[snap - 1], ConfState())) if snap else None
    ents = [Entry(i, t) for i, t in enumerate(terms, start=1) if i > snap]
    return RaftLog(snapshot=snapshot, entries=ents, committed=committed)


def term_of(terms: list[int], index: int) -> int | None:
    if index == 0:
        return 0
    return terms[index - 1] if 1 <= index <= len(terms) else None


@st.composite
def raft_terms(draw: st.DrawFn, min_size: int = 0, max_size: int = 12, start: int = 1) -> list[int]:
    steps = draw(st.lists(st.integers(0, 2), min_size=min_size, max_size=max_size))
    out, t = [], start
    for s in steps:
        t += s
        out.append(t)
    return out


@st.composite
def leader_and_follower(draw: st.DrawFn) -> tuple[list[int], list[int], int, int]:
    """(leader terms, follower terms, follower snapshot index, follower commit)."""
    shared = draw(raft_terms(max_size=6))
    top = shared[-1] if shared else 1
    leader = shared + draw(raft_terms(max_size=6, start=top))
    follower = shared + draw(raft_terms(max_size=6, start=top))
    committed = draw(st.integers(0, len(shared)))
    snap = draw(st.integers(0, committed))
    return leader, follower, snap, committed


@given(data=leader_and_follower(), st_data=st.data())
def test_maybe_append_matches_a_list_model(
    data: tuple[list[int], list[int], int, int], st_data: st.DataObject
) -> None:
    leader, follower, snap, committed = data
    log = make_log(follower, snap, committed)
    prev = st_data.draw(st.integers(committed, len(leader)), label="prev")
    count = st_data.draw(st.integers(0, len(leader) - prev), label="count")
    commit = st_data.draw(st.integers(0, len(leader)), label="leader commit")
    prev_term = term_of(leader, prev)
    assert prev_term is not None
    ents = [Entry(i, leader[i - 1]) for i in range(prev + 1, prev + 1 + count)]

    # The dumb model of §5.3.
    model = list(follower)
    if term_of(model, prev) != prev_term:
        expected_last, expected_commit = None, committed
    else:
        for e in ents:
            if e.index <= len(model) and model[e.index - 1] == e.term:
                continue
            model = model[: e.index - 1] + [x.term for x in ents if x.index >= e.index]
            break
        expected_last = prev + count
        expected_commit = max(committed, min(commit, expected_last))

    got = log.maybe_append(prev, prev_term, commit, ents)
    assert got == expected_last
    assert [e.term for e in log.entries] == model[snap:]
    assert [e.index for e in log.entries] == list(range(snap + 1, len(model) + 1))
    assert log.committed == expected_commit
    # A truncation lowers ``persisted`` to the last entry still the same one.
    same = 0
    while same < min(len(model), len(follower)) and model[same] == follower[same]:
        same += 1
    assert log.persisted == same


@given(data=leader_and_follower())
def test_find_conflict_matches_a_naive_scan(data: tuple[list[int], list[int], int, int]) -> None:
    leader, follower, snap, committed = data
    log = make_log(follower, snap, committed)
    ents = [Entry(i, t) for i, t in enumerate(leader, start=1)]
    for lo in range(0, len(ents) + 1):
        batch = ents[lo:]
        expected = 0
        for e in batch:
            if e.index <= snap:
                continue  # covered by the snapshot: committed, identical
            if term_of(follower, e.index) != e.term:
                expected = e.index
                break
        assert log.find_conflict(batch) == expected


@given(terms=raft_terms(min_size=1), st_data=st.data())
def test_find_conflict_by_term_matches_a_naive_scan(terms: list[int], st_data: st.DataObject) -> None:
    snap = st_data.draw(st.integers(0, len(terms)), label="snapshot index")
    log = make_log(terms, snap, committed=snap)
    index = st_data.draw(st.integers(0, len(terms) + 3), label="index")
    term = st_data.draw(st.integers(0, terms[-1] + 1), label="term")
    expected = snap
    for i in range(min(index, len(terms)), snap, -1):
        if terms[i - 1] <= term:
            expected = i
            break
    assert log.find_conflict_by_term(index, term) == expected


@given(terms=raft_terms(min_size=1), st_data=st.data())
def test_is_up_to_date_matches_5_4_1(terms: list[int], st_data: st.DataObject) -> None:
    log = make_log(terms)
    li = st_data.draw(st.integers(0, len(terms) + 2))
    lt = st_data.draw(st.integers(0, terms[-1] + 1))
    expected = (lt, li) >= (terms[-1], len(terms))  # compare last term, then length
    assert log.is_up_to_date(li, lt) == expected


# -- rules at the top of log.py ---------------------------------------------------


def test_committed_entries_are_never_truncated() -> None:
    log = make_log([1, 1, 2, 2], committed=3)
    with pytest.raises(LogInvariantBroken):
        log.append([Entry(3, 5)])
    log.append([Entry(4, 5)])  # the uncommitted suffix may go
    assert [e.term for e in log.entries] == [1, 1, 2, 5]


def test_append_refuses_a_gap() -> None:
    log = make_log([1, 1])
    with pytest.raises(LogInvariantBroken):
        log.append([Entry(4, 1)])


def test_commit_index_never_decreases() -> None:
    log = make_log([1, 1, 1], committed=3)
    assert not log.commit_to(1)
    assert log.committed == 3
    assert log.commit_to(99) is False and log.committed == 3  # capped at last


def test_5_4_2_maybe_commit_only_for_an_entry_of_the_given_term() -> None:
    log = make_log([1, 2, 3])
    assert not log.maybe_commit(2, term=3)
    assert log.maybe_commit(3, term=3) and log.committed == 3


def test_on_persisted_is_ignored_when_the_entry_was_replaced() -> None:
    log = RaftLog()
    log.append([Entry(1, 1), Entry(2, 1)])
    log.append([Entry(2, 2)])  # 2@1 replaced before its fsync was reported
    assert not log.on_persisted(2, 1)
    assert log.persisted == 0
    assert log.on_persisted(2, 2) and log.persisted == 2


def test_committed_entries_are_handed_out_once_even_before_local_durability() -> None:
    log = RaftLog()
    log.append([Entry(i, 1) for i in (1, 2, 3)])
    assert log.next_committed() == []  # nothing committed yet
    log.commit_to(2)
    assert [e.index for e in log.next_committed()] == [1, 2]  # a majority has them
    log.commit_to(3)
    assert [e.index for e in log.next_committed()] == [3]
    assert log.next_committed() == [] and not log.has_next_committed()
    # ... but compaction waits for local durability.
    with pytest.raises(LogInvariantBroken):
        log.compact(3, 1)
    log.on_persisted(3, 1)
    log.compact(3, 1)
    assert log.snapshot_index == 3


def test_unstable_entries_are_handed_once_and_again_after_a_truncation() -> None:
    log = RaftLog()
    log.append([Entry(1, 1), Entry(2, 1)])
    assert len(log.unstable_entries()) == 2
    log.mark_handed()
    assert log.unstable_entries() == []
    log.append([Entry(2, 2), Entry(3, 2)])
    assert log.unstable_entries() == [Entry(2, 2), Entry(3, 2)]


def test_compaction_only_of_applied_and_persisted_entries() -> None:
    log = make_log([1, 1, 2, 2], committed=4)
    log.next_committed()  # applied 4
    log.compact(3, 2)
    assert (log.first_index(), log.term(3), log.term(2)) == (4, 2, None)
    with pytest.raises(LogInvariantBroken):
        log.slice(3, 5)
    fresh = RaftLog()
    fresh.append([Entry(1, 1)])
    fresh.commit_to(1)
    with pytest.raises(LogInvariantBroken):
        fresh.compact(1, 1)  # neither applied nor durable


def test_entries_must_be_contiguous_after_the_snapshot() -> None:
    with pytest.raises(LogInvariantBroken):
        RaftLog(entries=[Entry(1, 1), Entry(3, 1)])


def test_slice_respects_count_and_bytes_but_returns_at_least_one() -> None:
    log = RaftLog(entries=[Entry(i, 1, data=b"x" * 100) for i in range(1, 6)])
    assert [e.index for e in log.slice(1, 6, max_count=2)] == [1, 2]
    assert [e.index for e in log.slice(1, 6, max_bytes=250)] == [1, 2]
    assert [e.index for e in log.slice(1, 6, max_bytes=1)] == [1]
