"""RaftConfig.validate(): one plain sentence per bad field; RaftCore refuses
a bad config with InvalidArgument naming the field."""

from __future__ import annotations

import random

import pytest

from dengine.errors import InvalidArgument
from dengine.raft.core import RaftConfig, RaftCore

BAD = [
    ({"id": 0}, "node id"),
    ({"id": -3}, "node id"),
    ({"initial_voters": frozenset({1, 0})}, "initial voters"),
    ({"heartbeat_tick": 0, "election_tick": 10}, "heartbeat_tick"),
    ({"election_tick": 3, "heartbeat_tick": 3}, "election_tick"),
    ({"max_inflight": 0}, "max_inflight"),
    ({"max_append_entries": 0}, "max_append_entries"),
    ({"max_append_bytes": 0}, "max_append_bytes"),
    ({"max_clock_drift": -0.1}, "max_clock_drift"),
    ({"max_clock_drift": 1.0}, "max_clock_drift"),
    ({"election_tick": 2, "max_clock_drift": 0.5}, "lease cannot be safe"),
    ({"max_uncommitted_bytes": 0}, "max_uncommitted_bytes"),
    ({"max_committed_bytes_per_ready": 0}, "max_committed_bytes_per_ready"),
]


def test_default_config_is_valid() -> None:
    assert RaftConfig(id=1).validate() == []
    assert RaftConfig(id=7, initial_voters=frozenset({7, 8, 9}), max_clock_drift=0).validate() == []


@pytest.mark.parametrize(("fields", "name"), BAD)
def test_validate_gives_one_sentence_naming_the_bad_field(fields: dict[str, object], name: str) -> None:
    kw: dict[str, object] = {"id": 1, **fields}
    problems = RaftConfig(**kw).validate()  # type: ignore[arg-type]
    assert len(problems) == 1, problems
    (sentence,) = problems
    assert name in sentence
    assert sentence[0].isalpha() and sentence.endswith(".")


@pytest.mark.parametrize(("fields", "name"), BAD)
def test_raft_core_refuses_a_bad_config_naming_the_field(fields: dict[str, object], name: str) -> None:
    kw: dict[str, object] = {"id": 1, **fields}
    with pytest.raises(InvalidArgument, match=name):
        RaftCore(RaftConfig(**kw), rng=random.Random(0))  # type: ignore[arg-type]


def test_every_bad_field_is_reported_at_once() -> None:
    problems = RaftConfig(id=0, max_inflight=0, max_append_bytes=0).validate()
    assert len(problems) == 3
