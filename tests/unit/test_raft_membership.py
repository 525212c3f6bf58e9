"""Single-server membership changes (dengine/raft/membership.py, thesis §4.1).

Rules pinned: a change is validated against the configuration it applies to;
applying is total and deterministic (a change that no longer applies is a
no-op on every replica); voters and learners stay disjoint; and the reason
single-server changes are safe -- every majority of the old voters meets
every majority of the new ones -- checked by brute force.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine.errors import InvalidArgument
from dengine.raft import membership
from dengine.raft.messages import ConfChange, ConfChangeType, ConfState

A, P, R, V = ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE, ConfChangeType.REMOVE, ConfChangeType.ADD_VOTER
CONF = ConfState(voters={1, 2, 3}, learners={4})


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (ConfChange(A, 0), "positive integer"),
        (ConfChange(A, 2), "already a voter"),
        (ConfChange(A, 4), "already a learner"),
        (ConfChange(P, 2), "not a learner"),
        (ConfChange(P, 9), "not a learner"),
        (ConfChange(R, 9), "not a member"),
        (ConfChange(V, 5), "bootstrap"),
    ],
)
def test_invalid_change_is_refused_with_a_reason(change: ConfChange, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        membership.validate(CONF, change)


def test_removing_the_last_voter_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="last voter"):
        membership.validate(ConfState(voters={1}, learners={2}), ConfChange(R, 1))


@pytest.mark.parametrize(
    ("change", "voters", "learners"),
    [
        (ConfChange(A, 5), {1, 2, 3}, {4, 5}),
        (ConfChange(P, 4), {1, 2, 3, 4}, set()),
        (ConfChange(R, 2), {1, 3}, {4}),
        (ConfChange(R, 4), {1, 2, 3}, set()),
        (ConfChange(V, 4), {1, 2, 3, 4}, set()),  # bootstrap entries only
    ],
)
def test_valid_change_applies(change: ConfChange, voters: set[int], learners: set[int]) -> None:
    if change.type is not V:
        membership.validate(CONF, change)
    assert membership.apply(CONF, change) == ConfState(voters=voters, learners=learners)


@pytest.mark.parametrize(
    "change",
    [ConfChange(A, 2), ConfChange(P, 2), ConfChange(P, 9), ConfChange(R, 9)],
)
def test_change_that_no_longer_applies_is_a_no_op(change: ConfChange) -> None:
    assert membership.apply(CONF, change) == CONF


def test_removing_the_last_voter_applies_as_nothing() -> None:
    conf = ConfState(voters={1})
    assert membership.apply(conf, ConfChange(R, 1)) == conf


def test_conf_change_encoding_round_trips_and_rejects_bad_sizes() -> None:
    for change in (ConfChange(A, 1), ConfChange(R, 2**63)):
        assert ConfChange.decode(change.encode()) == change
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x00")


def majorities(voters: frozenset[int]) -> list[frozenset[int]]:
    need = len(voters) // 2 + 1
    return [frozenset(c) for c in itertools.combinations(sorted(voters), need)]


changes = st.builds(ConfChange, st.sampled_from([A, P, R]), st.integers(1, 6))


@given(
    voters=st.frozensets(st.integers(1, 6), min_size=1, max_size=5),
    learners=st.frozensets(st.integers(1, 6), max_size=3),
    script=st.lists(changes, max_size=8),
)
def test_4_1_every_valid_change_keeps_old_and_new_majorities_overlapping(
    voters: frozenset[int], learners: frozenset[int], script: list[ConfChange]
) -> None:
    conf = ConfState(voters=voters, learners=learners - voters)
    for change in script:
        try:
            membership.validate(conf, change)
        except InvalidArgument:
            assert membership.apply(conf, change) == conf  # refused here, a no-op everywhere
            continue
        new = membership.apply(conf, change)
        assert not new.voters & new.learners
        assert new.voters  # never empty
        assert len(new.voters ^ conf.voters) <= 1  # one server at a time
        for old_q in majorities(conf.voters):
            for new_q in majorities(new.voters):
                assert old_q & new_q, (conf, change)
        conf = new
