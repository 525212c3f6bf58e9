"""One long-lived worker thread for a node's durable writes.

``trio.to_thread.run_sync`` per WAL write costs about 150 µs of hand-offs on a
small VM (a cached thread is woken, a capacity limiter taken, a context
copied, checkpoints passed on the way in and out), as much as the fsync it
wraps. The persister writes one job at a time, so it needs one thread, not a
pool: :class:`WorkerThread` is that thread, started once through
``trio.lowlevel.start_thread_soon`` (what ``to_thread`` is built on) and fed
through a queue; each result comes back
with ``TrioToken.run_sync_soon`` (what ``trio.from_thread`` is built on,
without making the thread wait for the loop). A round trip costs about a
third of a ``to_thread`` call (benchmarks: docs/benchmarks.md, "Where a
single write's time goes").

The thread runs only the function it is given, on data handed to it; it
never touches what the trio loop owns. :meth:`WorkerThread.submit` queues a
job from synchronous code (the node's pass that found a write to make starts
it there, without a hop through the persister task); :meth:`WorkerThread.wait`
and :meth:`WorkerThread.call` wait for a job even when cancelled (as
``to_thread.run_sync`` does without ``abandon_on_cancel``), and the thread's
task returns only once every queued job has ended: a write that started is
finished before the node unwinds and closes its storage.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from dengine.errors import EngineStopped

T = TypeVar("T")

_STOP = None


def _ignore(_result: object) -> None:
    """start_thread_soon's delivery: _serve reports its end itself."""


class Pending(Generic[T]):
    """A job queued on the worker thread. :meth:`WorkerThread.wait` waits
    for it; it runs to its end whether or not anyone waits."""

    __slots__ = ("fn", "args", "value", "error", "done", "_task")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = False
        self._task: trio.lowlevel.Task | None = None

    def _finish(self) -> None:
        """On the trio loop, once the thread is through with the job."""
        self.done = True
        if self._task is not None:
            trio.lowlevel.reschedule(self._task)


class WorkerThread:
    """Run blocking calls, one at a time, on one dedicated thread.

    ``await nursery.start(worker.run)`` starts it; :meth:`call` runs one
    function there, or :meth:`submit` queues it at once from synchronous
    code and :meth:`wait` collects it. When the task running :meth:`run` is
    cancelled, the thread finishes the jobs already queued and exits, and
    ``run`` returns only then (a write that was queued ends before its
    storage can be closed); later submissions raise
    :class:`~dengine.errors.EngineStopped`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Pending[Any] | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._open = False
        self._exited = trio.Event()

    @property
    def open(self) -> bool:
        """Whether :meth:`submit` accepts jobs."""
        return self._open

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._open = True
        # trio's own thread starter (to_thread is built on it), not
        # to_thread.run_sync: it has no checkpoint, so the thread surely runs
        # even if this task is cancelled at once, and stopping can wait for
        # the jobs queued; its result comes back through _exited.
        trio.lowlevel.start_thread_soon(self._serve, _ignore, name=f"dengine {self.name}")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._open = False
            self._jobs.put(_STOP)
            # The thread ends the jobs queued, then exits.
            with trio.CancelScope(shield=True):
                await self._exited.wait()

    def _serve(self) -> None:
        token = self._token
        assert token is not None
        try:
            while (job := self._jobs.get()) is not _STOP:
                try:
                    job.value = job.fn(*job.args)
                except BaseException as exc:  # noqa: BLE001 - handed back to the caller as is
                    job.error = exc
                token.run_sync_soon(job._finish)
        except trio.RunFinishedError:
            return
        try:
            token.run_sync_soon(self._exited.set)
        except trio.RunFinishedError:
            return

    def submit(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        """Queue ``fn(*args)`` on the worker thread now; it starts as soon as
        the jobs before it are done."""
        if not self._open:
            raise EngineStopped(f"the {self.name} thread has stopped")
        job: Pending[T] = Pending(fn, args)
        self._jobs.put(job)
        return job

    async def wait(self, job: Pending[T]) -> T:
        """The result of a submitted job, or its exception. Not abortable:
        a caller cancelled meanwhile still waits for the job's end (see the
        module doc)."""
        if job.done:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            job._task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(lambda _raise_cancel: trio.lowlevel.Abort.FAILED)
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[no-any-return]

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread; its result, or its exception."""
        if not self._open:
            raise EngineStopped(f"the {self.name} thread has stopped")
        await trio.lowlevel.checkpoint_if_cancelled()
        return await self.wait(self.submit(fn, *args))
