"""One long-lived worker thread for a node's durable writes.

``trio.to_thread.run_sync`` per WAL write costs about 150 µs of hand-offs on a
small VM (a cached thread is woken, a capacity limiter taken, a context
copied, checkpoints passed on the way in and out), as much as the fsync it
wraps. The persister writes one job at a time, so it needs one thread, not a
pool: :class:`WorkerThread` is that thread, started once through
``trio.to_thread.run_sync`` and fed through a queue; each result comes back
with ``TrioToken.run_sync_soon`` (what ``trio.from_thread`` is built on,
without making the thread wait for the loop). A round trip costs about a
third of a ``to_thread`` call (benchmarks: docs/benchmarks.md, "Where a
single write's time goes").

The thread runs only the function it is given, on data handed to it; it
never touches what the trio loop owns. :meth:`WorkerThread.call` waits for
its job even when cancelled (as ``to_thread.run_sync`` does without
``abandon_on_cancel``): a write that started is finished before the node
unwinds and closes its storage.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from dengine.errors import EngineStopped

T = TypeVar("T")

_STOP = None


class _Job:
    __slots__ = ("fn", "args", "value", "error", "task")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.args = args
        self.value: Any = None
        self.error: BaseException | None = None
        self.task = task


class WorkerThread:
    """Run blocking calls, one at a time, on one dedicated thread.

    ``await nursery.start(worker.run)`` starts it; :meth:`call` runs one
    function there. When the task running :meth:`run` is cancelled, the
    thread finishes the jobs already queued and exits; later calls raise
    :class:`~dengine.errors.EngineStopped`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._open = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._open = True
        task_status.started()
        try:
            # Its own limiter: a thread kept for the node's lifetime must not
            # hold one of the default limiter's tokens that to_thread callers share.
            await trio.to_thread.run_sync(self._serve, abandon_on_cancel=True, limiter=trio.CapacityLimiter(1))
        finally:
            self._open = False
            self._jobs.put(_STOP)

    def _serve(self) -> None:
        token = self._token
        assert token is not None
        while (job := self._jobs.get()) is not _STOP:
            try:
                job.value = job.fn(*job.args)
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller as is
                job.error = exc
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, job.task)
            except trio.RunFinishedError:
                return

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread; its result, or its exception."""
        if not self._open:
            raise EngineStopped(f"the {self.name} thread has stopped")
        await trio.lowlevel.checkpoint_if_cancelled()
        job = _Job(fn, args, trio.lowlevel.current_task())
        self._jobs.put(job)
        # Not abortable: the job runs to its end once queued (see the module doc).
        await trio.lowlevel.wait_task_rescheduled(lambda _raise_cancel: trio.lowlevel.Abort.FAILED)
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[no-any-return]
