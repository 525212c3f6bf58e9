"""Leader election for a trio service, with fencing tokens.

Several replicas of a service run the same program; exactly one of them --
the leader -- runs the scheduler, which writes jobs to a storage service.
Each replica

* opens a :class:`~dengine.concurrency.Session` (a lease kept alive while
  it runs),
* campaigns in an :class:`~dengine.concurrency.Election` and waits until
  it leads,
* runs the scheduler only while it leads, in a nursery that is cancelled
  when its session is lost,
* passes the election's fencing token (``election.revision``) with every
  write, so the storage refuses a deposed leader that has not noticed yet,
* resigns when its work is done, which hands leadership to the next in line.

A separate observer follows who leads with ``Election.observe()``.

The demo runs three replicas and the observer in one process, on a
single-node engine in a temporary directory. The second leader stalls half
way through its term (think of a long garbage-collection pause) and loses
its lease meanwhile: the third replica takes over at once. When the stalled
leader wakes up, either its session has already told it that it lost (its
work is cancelled) or its next write reaches the storage with a stale
token and is refused. Run it with

    python examples/leader_election.py

``replica()`` works unchanged on the remote client: give it
``dengine.open_client(endpoints)`` instead of ``engine.client``, one
replica per process (docs/coordination.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
from typing import Any

import attrs
import trio

import dengine
from dengine.concurrency import Election, Session

ELECTION = b"/elections/scheduler"
#: Seconds the cluster waits after a replica stops renewing before another
#: one takes over. At least the engine's minimum (1.5 election timeouts).
SESSION_TTL = 2.0

log = logging.getLogger("leader_election")


class StaleToken(Exception):
    """The storage refused a write: a newer leader has written since."""


@attrs.frozen
class Write:
    job: int
    token: int
    replica: str


class JobStore:
    """Stands for a storage service outside dengine (a database, an object
    store). It remembers the largest fencing token it has seen and refuses
    writes that carry a smaller one."""

    def __init__(self) -> None:
        self.highest = 0
        self.accepted: list[Write] = []
        self.refused: list[Write] = []
        self.changed = trio.Event()

    def write(self, job: int, *, token: int, replica: str) -> None:
        write = Write(job, token, replica)
        if token < self.highest:
            self.refused.append(write)
            raise StaleToken(f"token {token} is older than {self.highest}")
        self.highest = token
        self.accepted.append(write)
        self.changed.set()
        self.changed = trio.Event()


async def scheduler(store: JobStore, name: str, token: int, *, jobs: int, job_interval: float,
                    stall_after: int | None = None, stall: float = 0.0) -> None:
    """The work only the leader may do: ``jobs`` writes, each with the
    leader's fencing token. With ``stall_after``, it stops for ``stall``
    seconds after that many jobs."""
    for job in range(jobs):
        store.write(job, token=token, replica=name)
        log.info("%s: job %d written with token %d", name, job, token)
        if job + 1 == stall_after:
            log.warning("%s: stalls for %.1f s", name, stall)
            await trio.sleep(stall)
        else:
            await trio.sleep(job_interval)


async def replica(client: Any, name: str, store: JobStore, *, terms: list[tuple[str, int]] | None = None,
                  **work: Any) -> None:
    """One replica: campaign, run the scheduler while leading and while the
    session holds, then resign. ``work``: the scheduler's options."""
    async with Session(client, ttl=SESSION_TTL) as session:
        election = Election(session, ELECTION)
        await election.campaign(name.encode())          # returns once we lead
        token = election.revision                       # larger for every new leader
        log.info("%s: leading with fencing token %d", name, token)
        if terms is not None:
            terms.append((name, token))
        async with trio.open_nursery() as nursery:       # cancelled when the session is lost
            nursery.start_soon(_cancel_when_lost, session, nursery.cancel_scope)
            try:
                await scheduler(store, name, token, **work)
            except StaleToken as exc:
                log.warning("%s: deposed; the storage refused a write (%s)", name, exc)
            nursery.cancel_scope.cancel()
        if session.lost.is_set():
            log.warning("%s: its session was lost; it stopped leading", name)
        await election.resign()                         # the next candidate takes over
    log.info("%s: done", name)


async def _cancel_when_lost(session: Session, scope: trio.CancelScope) -> None:
    await session.lost.wait()
    scope.cancel()


async def observer(client: Any, seen: list[bytes], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    """Follow who leads without standing for election."""
    async with Session(client, ttl=SESSION_TTL) as session:
        task_status.started()
        async for value in Election(session, ELECTION).observe():
            log.info("observer: the leader is now %s", value.decode())
            seen.append(value)


async def demo(data_dir: str, replicas: int = 3, *, stagger: float = 0.1, jobs: int = 5,
               job_interval: float = 0.05, stall_after: int | None = 2, stall: float = 0.2) -> dict[str, Any]:
    """Run ``replicas`` replicas, started ``stagger`` seconds apart, and an
    observer on a single-node engine in ``data_dir``. With ``stall_after``
    (and at least three replicas), the second replica stalls after that
    many jobs and its lease is revoked meanwhile. Returns what happened: the
    leaders' terms, the storage's accepted and refused writes, and the
    leaders the observer saw."""
    store = JobStore()
    terms: list[tuple[str, int]] = []
    seen: list[bytes] = []
    names = [f"replica-{i + 1}" for i in range(replicas)]
    async with dengine.open_engine(data_dir) as engine:
        await engine.wait_ready(timeout=10)
        client = engine.client
        async with trio.open_nursery() as nursery:
            await nursery.start(observer, client, seen)
            async with trio.open_nursery() as workers:
                for i, name in enumerate(names):
                    work: dict[str, Any] = {"jobs": jobs, "job_interval": job_interval}
                    if i == 1 and replicas > 2 and stall_after is not None:  # someone must take over
                        work.update(stall_after=stall_after, stall=stall)
                    workers.start_soon(functools.partial(replica, client, name, store, terms=terms, **work))
                    await trio.sleep(stagger)
                if replicas > 2 and stall_after is not None:
                    await _lose_lease_of(client, store, names[1], stall_after)
            nursery.cancel_scope.cancel()  # every replica is done: stop the observer
    return {"terms": terms, "accepted": store.accepted, "refused": store.refused, "observed": seen}


async def _lose_lease_of(client: Any, store: JobStore, name: str, after: int) -> None:
    """Once ``name`` has written ``after`` jobs (and stalls), revoke its
    lease. A real stall longer than the TTL would let the lease expire; in
    this one-process demo the session's renewals go on in another task, so
    the demo ends the lease itself."""
    while sum(1 for w in store.accepted if w.replica == name) < after:
        await store.changed.wait()
    scan = await client.scan_prefix(ELECTION + b"/")
    head = min(scan.entries, key=lambda kv: kv.create_revision)   # the leader's key, value and lease
    assert head.value == name.encode(), head
    log.warning("%s loses its lease (%d) while it stalls", name, head.lease)
    await client.revoke_lease(head.lease)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(demo, tmp, args.replicas)
    print("leaders (replica, fencing token):", result["terms"])
    print("writes accepted:", len(result["accepted"]), " refused as stale:", len(result["refused"]))
    print("leaders seen by the observer:", [v.decode() for v in result["observed"]])


if __name__ == "__main__":
    main()
