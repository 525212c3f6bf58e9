"""Per-follower progress (dengine/raft/progress.py): the in-flight window
against a list, and the PROBE / REPLICATE / SNAPSHOT rules at the top of
progress.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dengine.raft.progress import Inflights, Progress, ProgressState

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 5)),  # add last + k (indexes increase)
        st.tuples(st.just("free_le"), st.integers(0, 60)),
        st.tuples(st.just("free_first_one"), st.just(0)),
        st.tuples(st.just("reset"), st.just(0)),
    ),
    max_size=60,
)


@given(capacity=st.integers(1, 8), script=ops)
def test_inflights_matches_a_list(capacity: int, script: list[tuple[str, int]]) -> None:
    infl = Inflights(capacity)
    model: list[int] = []
    last = 0
    for op, arg in script:
        if op == "add":
            if len(model) >= capacity:
                continue  # the leader never adds to a full window
            last += arg + 1
            infl.add(last)
            model.append(last)
        elif op == "free_le":
            infl.free_le(arg)
            while model and model[0] <= arg:
                model.pop(0)
        elif op == "free_first_one":
            infl.free_first_one()
            model = model[1:]
        else:
            infl.reset()
            model = []
        assert list(infl._items) == model
        assert len(infl) == len(model)
        assert infl.full() == (len(model) >= capacity)


def progress(match: int = 5, next_: int = 6, state: ProgressState = ProgressState.PROBE) -> Progress:
    return Progress(match=match, next=next_, inflights=Inflights(4), state=state)


def test_probe_sends_one_append_then_pauses_until_an_answer() -> None:
    pr = progress()
    assert not pr.is_paused()
    pr.probe_sent = True
    assert pr.is_paused()
    assert pr.maybe_update(7)
    assert not pr.is_paused() and (pr.match, pr.next) == (7, 8)


def test_replicate_pauses_when_the_window_is_full() -> None:
    pr = progress(state=ProgressState.REPLICATE)
    for i in range(6, 10):
        assert not pr.is_paused()
        pr.optimistic_update(i)
        pr.inflights.add(i)
    assert pr.is_paused() and pr.next == 10


def test_snapshot_state_is_paused_and_probe_resumes_after_the_snapshot() -> None:
    pr = progress(match=3, next_=4)
    pr.become_snapshot(20, tick=7)
    assert pr.is_paused() and pr.pending_snapshot == 20
    pr.become_probe()
    assert pr.state is ProgressState.PROBE and pr.next == 21


def test_stale_acknowledgement_does_not_move_match_back() -> None:
    pr = progress(match=9, next_=10)
    assert not pr.maybe_update(4)
    assert (pr.match, pr.next) == (9, 10)


def test_rejection_in_probe_uses_the_hint_but_never_goes_below_match() -> None:
    pr = progress(match=2, next_=11)
    assert pr.maybe_decr_to(10, match_hint=6)
    assert pr.next == 7
    pr2 = progress(match=5, next_=11)
    assert pr2.maybe_decr_to(10, match_hint=0)
    assert pr2.next == 6


def test_out_of_order_rejection_is_ignored() -> None:
    pr = progress(match=2, next_=11)
    assert not pr.maybe_decr_to(8, match_hint=3)  # we are probing 10, not 8
    assert pr.next == 11
    rep = progress(match=8, next_=15, state=ProgressState.REPLICATE)
    assert not rep.maybe_decr_to(7, match_hint=3)  # below match: stale
    assert rep.maybe_decr_to(12, match_hint=3)
    assert rep.next == 9
