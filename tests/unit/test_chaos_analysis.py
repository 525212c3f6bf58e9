"""tests.chaos.analysis: how a chaos run measures failover.

The gap after a leader cut-off runs from the cut to the first acknowledged
write invoked after it; an over-long one is explained by listing what every
client was doing during it.
"""

from __future__ import annotations

import math

from tests.chaos.analysis import Gap, clients_during, leader_cut_gaps
from tests.chaos.checker import GET, PUT
from tests.chaos.faults import FaultEvent
from tests.chaos.workload import FAIL, OK, UNKNOWN_OUTCOME, Record


def rec(ident: int, client: int, kind: str, invoke: float, complete: float, outcome: str,
        error: str = "") -> Record:
    return Record(ident, client, kind, b"/k", invoke=invoke, complete=complete, outcome=outcome, error=error,
                  consistency="linearizable" if kind == GET else "")


def test_the_gap_ends_at_the_first_acknowledged_write_invoked_after_the_cut() -> None:
    records = [
        rec(0, 0, PUT, 9.9, 10.05, OK),  # invoked before the cut: does not end the gap
        rec(1, 1, PUT, 10.1, 10.4, FAIL, "NotLeader: no leader"),
        rec(2, 1, GET, 10.5, 10.6, OK),  # a read does not end it
        rec(3, 2, PUT, 10.2, 10.9, OK),
        rec(4, 0, PUT, 10.3, 10.7, OK),
    ]
    ev = FaultEvent(1, "isolate-leader", 10.0, end=12.0, leader=1, leader_cut=True, cut_at=10.0)
    ((got_ev, gap),) = leader_cut_gaps(records, [ev, FaultEvent(2, "delay", 11.0)], 20.0)
    assert got_ev is ev
    assert (gap.start, gap.end) == (10.0, 10.7)
    assert math.isclose(gap.seconds, 0.7)


def test_a_cut_no_write_followed_is_a_gap_to_the_end() -> None:
    ev = FaultEvent(1, "kill", 10.0, end=12.0, leader_cut=True, cut_at=10.0)
    ((_, gap),) = leader_cut_gaps([rec(0, 0, PUT, 10.5, math.inf, UNKNOWN_OUTCOME)], [ev], 30.0)
    assert (gap.seconds, gap.note) == (20.0, "no write acknowledged after it")


def test_clients_during_a_gap_lists_every_op_in_flight_in_client_order() -> None:
    records = [
        rec(0, 1, PUT, 9.0, 9.5, OK),  # ended before the gap: not listed
        rec(5, 1, PUT, 2.0, math.inf, UNKNOWN_OUTCOME, "LeaderChanged"),  # long before, never answered: not listed
        rec(1, 1, PUT, 9.8, 11.3, FAIL, "Timeout: no answer within 1.5 s"),
        rec(2, 0, GET, 10.2, 10.4, FAIL, "NotLeader: node 2 is not the leader"),
        rec(3, 0, PUT, 10.45, math.inf, UNKNOWN_OUTCOME, "Unavailable: the write may or may not have been applied"),
        rec(4, 2, PUT, 12.0, 12.1, OK),  # began after the gap: not listed
    ]
    lines = clients_during(records, Gap(1.5, 10.0, 11.5))
    assert lines == [
        "    client 0: get linearizable invoked +0.200s, done +0.400s: fail (NotLeader: node 2 is not the leader)",
        "    client 0: put invoked +0.450s, done never: unknown "
        "(Unavailable: the write may or may not have been applied)",
        "    client 1: put invoked -0.200s, done +1.300s: fail (Timeout: no answer within 1.5 s)",
    ]
    assert clients_during(records, Gap(1.5, 10.0, 11.5), limit=1)[-1] == "    ... and 2 more"
