"""Real `dengine serve` processes whose peer links all cross a LinkProxy.

Every node B has a front proxy, and every node's ``--initial-cluster`` lists
each member at its front: B listens on a real port nobody is told
(``--peer-address``) and advertises its front (``--advertise-peer-address``,
etcd's listen / advertise split). The replicated member table, which is
what peers dial once it exists, therefore holds fronts only. A front reads
the Hello of each connection and relays it as the proxy of link
``sender -> B``, with that link's faults. (Before the advertise setting a
node listed itself at its real port, the first leader wrote that into the
member table, and every link into it bypassed the proxies: partitions
around it cut one direction only.)

Processes are started, killed (SIGKILL), paused (SIGSTOP) and resumed
(SIGCONT) by their PID only, through the trio.Process objects this module
owns; :meth:`ChaosCluster.stop_all` (called in a finally) resumes and kills
every one it started and waits for it.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
from typing import IO

import trio

import dengine
from dengine import Config
from dengine.api import Status
from tests.chaos.proxy import BLACKHOLE, RESET, LinkProxy
from tests.integration.cluster_helpers import free_ports

__all__ = ["ChaosCluster", "election_timeout"]

CLUSTER_ID = "chaos"


def election_timeout(tick_ms: float) -> float:
    """The minimum election timeout, in seconds, of a node started with
    DENGINE_RAFT__TICK_INTERVAL_MS=tick_ms (read from the config, so a change of
    the defaults is followed)."""
    cfg = Config.from_env(env={"DENGINE_RAFT__TICK_INTERVAL_MS": str(tick_ms)})
    return cfg.raft.election_ticks * cfg.raft.tick_interval_ms / 1000


class ChaosCluster:
    def __init__(self, workdir: pathlib.Path, n: int, *, tick_ms: float, rng: random.Random) -> None:
        self.workdir = workdir
        self.n = n
        self.ids = list(range(1, n + 1))
        self.tick_ms = tick_ms
        self.rng = rng
        ports = free_ports(2 * n)
        self.peer_ports = {i: ports[i - 1] for i in self.ids}
        self.client_ports = {i: ports[n + i - 1] for i in self.ids}
        self.proxies: dict[tuple[int, int], LinkProxy] = {}
        for a in self.ids:
            for b in self.ids:
                if a != b:  # every proxy routes a connection to the link its Hello names
                    self.proxies[(a, b)] = LinkProxy(a, b, self.peer_ports[b], random.Random(rng.random()),
                                                     self.proxies)
        # What every node dials for B: relays each connection as the link its Hello names.
        self.fronts = {b: LinkProxy(0, b, self.peer_ports[b], random.Random(rng.random()), self.proxies)
                       for b in self.ids}
        self.procs: dict[int, trio.Process] = {}
        self.paused: set[int] = set()
        self.logs: dict[int, IO[bytes]] = {}
        self.starts = {i: 0 for i in self.ids}
        self.kills = 0
        self.pauses = 0

    # -- addresses ---------------------------------------------------------------

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.client_ports[i]}"

    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in self.ids]

    def node_of(self, endpoint: str) -> int | None:
        for i in self.ids:
            if self.endpoint(i) == endpoint:
                return i
        return None

    def front(self, b: int) -> str:
        """The peer address every node dials for ``b`` (its front proxy)."""
        return f"127.0.0.1:{self.fronts[b].port}"

    def initial_cluster(self) -> str:
        return ",".join(f"{b}={self.front(b)}" for b in self.ids)

    def argv(self, i: int) -> list[str]:
        clients = ",".join(f"{j}={self.endpoint(j)}" for j in self.ids)
        return [
            sys.executable, "-m", "dengine", "serve", "--metrics-address", "off", "--id", str(i),
            "--data-dir", str(self.workdir / f"n{i}"),
            "--peer-address", f"127.0.0.1:{self.peer_ports[i]}", "--advertise-peer-address", self.front(i),
            "--client-address", self.endpoint(i),
            "--initial-cluster", self.initial_cluster(),
            "--client-addresses", clients, "--cluster-id", CLUSTER_ID,
        ]

    # -- proxies -------------------------------------------------------------------

    async def start_proxies(self, nursery: trio.Nursery) -> None:
        for proxy in (*self.proxies.values(), *self.fronts.values()):
            await nursery.start(proxy.serve)

    def links_between(self, group_a: set[int] | list[int], group_b: set[int] | list[int]) -> list[LinkProxy]:
        """Both directions of every link between the two groups."""
        return [p for (a, b), p in self.proxies.items()
                if (a in group_a and b in group_b) or (a in group_b and b in group_a)]

    def cut(self, links: list[LinkProxy], mode: str = BLACKHOLE) -> None:
        assert mode in (BLACKHOLE, RESET)
        for p in links:
            p.set_mode(mode)

    def heal_links(self) -> None:
        for p in self.proxies.values():
            p.heal()

    def impaired_links(self) -> list[str]:
        return [p.name for p in self.proxies.values() if p.impaired]

    # -- processes -------------------------------------------------------------------

    def running(self) -> list[int]:
        return [i for i in self.ids if i in self.procs]

    def responsive(self) -> list[int]:
        return [i for i in self.ids if i in self.procs and i not in self.paused]

    async def start(self, i: int) -> None:
        assert i not in self.procs
        log = self.logs[i] = open(self.workdir / f"n{i}.log", "ab")  # noqa: SIM115 - closed in _reap
        env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": str(self.tick_ms)}
        self.procs[i] = await trio.lowlevel.open_process(self.argv(i), stdout=log, stderr=subprocess.STDOUT, env=env)
        self.starts[i] += 1

    async def kill(self, i: int) -> None:
        """kill -9 by PID, then wait for it."""
        proc = self.procs.pop(i)
        self.paused.discard(i)
        self.kills += 1
        await self._reap(i, proc, signal.SIGKILL)

    async def _reap(self, i: int, proc: trio.Process, sig: int) -> None:
        try:
            if proc.returncode is None:
                proc.send_signal(sig)
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(10):
                    await proc.wait()
        finally:
            log = self.logs.pop(i, None)
            if log is not None:
                log.close()

    def pause(self, i: int) -> None:
        proc = self.procs[i]
        proc.send_signal(signal.SIGSTOP)
        self.paused.add(i)
        self.pauses += 1

    def resume(self, i: int) -> None:
        proc = self.procs.get(i)
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
        self.paused.discard(i)

    def exited(self) -> dict[int, int]:
        """Nodes that exited on their own (not killed by us): id -> code."""
        return {i: p.returncode for i, p in self.procs.items() if p.returncode is not None}

    async def stop_all(self) -> None:
        """Resume and kill -9 every process this cluster started, by PID."""
        with trio.CancelScope(shield=True):
            for i in list(self.procs):
                self.resume(i)
            for i in list(self.procs):
                await self._reap(i, self.procs.pop(i), signal.SIGKILL)

    def log_tail(self, i: int, chars: int = 2000) -> str:
        try:
            return (self.workdir / f"n{i}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- queries ---------------------------------------------------------------------

    async def statuses(self, admin: dengine.Client, timeout: float = 0.5) -> dict[int, Status]:
        """The status of every responsive node that answers within ``timeout``."""
        out: dict[int, Status] = {}

        async def one(i: int) -> None:
            try:
                out[i] = await admin.status(endpoint=self.endpoint(i), timeout=timeout)
            except (dengine.DengineError, OSError, trio.BrokenResourceError):
                pass

        async with trio.open_nursery() as nursery:
            for i in self.responsive():
                nursery.start_soon(one, i)
        return out

    async def wait_whole(self, admin: dengine.Client, seconds: float) -> bool:
        """Poll (bounded) until every node answers its status and one of them
        leads; False on timeout."""
        with trio.move_on_after(seconds):
            while True:
                sts = await self.statuses(admin, 0.5)
                if len(sts) == len(self.ids) and any(s.role == "leader" for s in sts.values()):
                    return True
                await trio.sleep(0.1)
        return False

    async def find_leader(self, admin: dengine.Client, timeout: float = 0.5) -> tuple[int, int] | None:
        """(leader id, term) of the highest-term node that says it is leader."""
        sts = await self.statuses(admin, timeout)
        leaders = [(s.term, i) for i, s in sts.items() if s.role == "leader"]
        if not leaders:
            return None
        term, i = max(leaders)
        return i, term

    async def wait_leader(self, admin: dengine.Client, seconds: float, *, not_in: set[int] = frozenset(),  # type: ignore[assignment]
                          among: set[int] | None = None) -> tuple[int, int] | None:
        """Poll (bounded) until a leader outside ``not_in`` (and inside
        ``among``) is seen by a majority-side node; None on timeout."""
        with trio.move_on_after(seconds):
            while True:
                sts = await self.statuses(admin, 0.5)
                best: tuple[int, int] | None = None
                for i, s in sts.items():
                    if among is not None and i not in among:
                        continue
                    if s.role == "leader" and i not in not_in and (best is None or s.term > best[1]):
                        best = (i, s.term)
                if best is not None:
                    return best
                await trio.sleep(0.1)
        return None
