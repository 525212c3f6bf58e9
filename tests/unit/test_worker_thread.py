"""The node's dedicated WAL thread (dengine/runtime/worker.py)."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from dengine.errors import EngineStopped
from dengine.runtime.worker import WorkerThread


async def test_calls_run_on_one_thread_that_is_not_the_loops_and_return_in_order() -> None:
    worker = WorkerThread("test")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        idents = [await worker.call(threading.get_ident) for _ in range(20)]
        assert len(set(idents)) == 1 and idents[0] != threading.get_ident()
        assert await worker.call(sum, [1, 2, 3]) == 6
        nursery.cancel_scope.cancel()


async def test_an_exception_in_the_thread_reaches_the_caller() -> None:
    worker = WorkerThread("test")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with pytest.raises(ZeroDivisionError):
            await worker.call(lambda: 1 // 0)
        assert await worker.call(int, "7") == 7  # the thread survived it
        nursery.cancel_scope.cancel()


async def test_a_caller_cancelled_before_queueing_runs_nothing() -> None:
    worker = WorkerThread("test")
    ran: list[bool] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.CancelScope() as scope:
            scope.cancel()
            await worker.call(ran.append, True)
        assert scope.cancelled_caught and ran == []
        nursery.cancel_scope.cancel()


async def test_a_caller_cancelled_while_its_job_runs_waits_for_the_job_to_end() -> None:
    # As a write that started must end before the node closes its storage.
    worker = WorkerThread("test")
    started, release = threading.Event(), threading.Event()
    events: list[str] = []

    def job() -> str:
        started.set()
        release.wait(10)
        events.append("job ended")
        return "done"

    async def cancel_when_started(scope: trio.CancelScope) -> None:
        await trio.to_thread.run_sync(started.wait, 10)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()  # the cancellation had its chance to cut the wait short
        events.append("released")
        release.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_when_started, scope)
                result = await worker.call(job)
                events.append(f"call returned {result}")
                await trio.lowlevel.checkpoint()
            assert scope.cancelled_caught
            nursery.cancel_scope.cancel()
    assert events == ["released", "job ended", "call returned done"]


async def test_calls_after_the_thread_stopped_raise_engine_stopped() -> None:
    worker = WorkerThread("WAL writer")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(EngineStopped, match="WAL writer thread has stopped"):
        await worker.call(int)
    with pytest.raises(EngineStopped, match="WAL writer thread has stopped"):
        worker.submit(int)


async def test_a_submitted_job_starts_before_anyone_waits_and_wait_collects_it() -> None:
    worker = WorkerThread("test")
    ran = threading.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        pending = worker.submit(lambda: ran.set() or "ok")
        # No checkpoint of ours in between: the thread runs it on its own.
        assert await trio.to_thread.run_sync(ran.wait, 10)
        assert await worker.wait(pending) == "ok"
        failing = worker.submit(lambda: 1 // 0)
        with pytest.raises(ZeroDivisionError):
            await worker.wait(failing)
        nursery.cancel_scope.cancel()


async def test_stopping_waits_for_jobs_submitted_that_nobody_waits_for() -> None:
    # The node may queue a write from a pass and be cancelled before its
    # persister waits: the thread's task must not return before that write
    # ends (the storage is closed right after).
    worker = WorkerThread("test")
    release = threading.Event()
    events: list[str] = []

    def job() -> None:
        release.wait(10)
        events.append("job ended")

    async def release_when_blocked() -> None:
        await trio.testing.wait_all_tasks_blocked()
        events.append("released")
        release.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                worker.submit(job)
                nursery.cancel_scope.cancel()
                outer.start_soon(release_when_blocked)
            events.append("worker stopped")
    assert events == ["released", "job ended", "worker stopped"]
    assert not worker.open


async def test_a_worker_whose_task_starts_cancelled_stops_at_once() -> None:
    # Its task can be cancelled before it ever ran (the node's nursery
    # cancelled while starting): stopping must not wait for a thread that a
    # cancelled to_thread call would never have started.
    worker = WorkerThread("test")
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.run)
    assert not worker.open
