"""The chaos run (`python -m tests.chaos`) as tests.

Real `dengine serve` processes behind fault-injecting proxies, clients
recording a history, watchers, a TTL check across a leader change; the run's
last line is ``ops=N unknown=U faults=F anomalies=A lost=L``.

Each run is a subprocess with a hard timeout; the run itself kills every
node it started by PID in a finally, and bounds every wait.
"""

from __future__ import annotations

import contextlib

import pathlib
from functools import partial
import random
import re
import struct
import subprocess
import sys

import msgpack
import pytest
import trio

from tests.chaos.proxy import BLACKHOLE, RESET, UP, LinkProxy

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAST = re.compile(r"^ops=(\d+) unknown=(\d+) faults=(\d+) anomalies=(\d+) lost=(\d+)$")


def _chaos(tmp: pathlib.Path, *args: str, timeout: float) -> tuple[dict[str, int], str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.chaos", "--workdir", str(tmp / "chaos"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )
    out = proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    m = LAST.match(lines[-1]) if lines else None
    assert m is not None, f"no summary line (exit code {proc.returncode}):\n{out[-6000:]}"
    counts = dict(zip(("ops", "unknown", "faults", "anomalies", "lost"), map(int, m.groups())))
    return counts, out, proc.returncode


def _digest(out: str) -> str:
    """What to show on failure: the report, not every progress line."""
    keep = [line for line in out.splitlines() if not line.startswith("[")]
    return "\n".join(keep[-120:])


def test_chaos_run_finds_no_anomaly(tmp_path: pathlib.Path) -> None:
    # 35 s keeps the default run short; the slow campaigns below run for minutes.
    counts, out, code = _chaos(tmp_path, "--seconds", "35", "--seed", "1", timeout=240)
    assert counts["anomalies"] == 0 and counts["lost"] == 0, _digest(out)
    assert code == 0, _digest(out)
    assert counts["faults"] >= 5 and counts["ops"] > 500, _digest(out)


def test_planted_stale_reads_are_caught(tmp_path: pathlib.Path) -> None:
    # 18 s: seeds 2, 3 and 4 each caught the bug on every key at this length.
    counts, out, code = _chaos(tmp_path, "--seconds", "18", "--seed", "2", "--plant-bug", "stale-reads",
                               timeout=180)
    assert counts["anomalies"] > 0 and code == 1, _digest(out)
    # The linearizability checker itself (not only the watch checks) saw it.
    assert "NOT LINEARIZABLE" in out or "quick check" in out, _digest(out)


@pytest.mark.slow
@pytest.mark.parametrize(("nodes", "seconds", "seed"), [(3, 180, 7), (5, 120, 8)])
def test_long_chaos_run_finds_no_anomaly(tmp_path: pathlib.Path, nodes: int, seconds: int, seed: int) -> None:
    counts, out, code = _chaos(tmp_path, "--seconds", str(seconds), "--seed", str(seed), "--nodes", str(nodes),
                               timeout=seconds + 300)
    assert counts["anomalies"] == 0 and counts["lost"] == 0, _digest(out)
    assert code == 0, _digest(out)


# -- the link proxy on its own (fast) -------------------------------------------


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def _read_frames(stream: trio.abc.Stream, buf: bytearray, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        while len(buf) >= 4 and len(buf) - 4 >= struct.unpack_from(">I", buf)[0]:
            size = struct.unpack_from(">I", buf)[0]
            out.append(bytes(buf[4 : 4 + size]))
            del buf[: 4 + size]
            if len(out) == n:
                return out
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError(f"stream ended after {len(out)} frames")
        buf += data
    return out


async def test_link_proxy_passes_drops_duplicates_and_reorders_whole_frames() -> None:
    """A peer-like server behind the proxy: it reads a hello, answers a welcome,
    then only reads frames. The stream stays valid whatever the proxy does."""
    received: trio.MemorySendChannel[bytes]
    received, got = trio.open_memory_channel[bytes](1000)

    async def server(stream: trio.SocketStream) -> None:
        buf = bytearray()
        (hello,) = await _read_frames(stream, buf, 1)
        await stream.send_all(_frame(b"welcome:" + hello))
        try:
            while True:
                for body in await _read_frames(stream, buf, 1):
                    await received.send(body)
        except (EOFError, trio.BrokenResourceError):
            pass

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
            target = listeners[0].socket.getsockname()[1]
            proxy = LinkProxy(1, 2, target, random.Random(5))
            await nursery.start(proxy.serve)

            opened: list[trio.SocketStream] = []

            async def connect() -> tuple[trio.SocketStream, bytearray]:
                stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
                opened.append(stream)
                await stream.send_all(_frame(b"hello"))
                buf = bytearray()
                assert await _read_frames(stream, buf, 1) == [b"welcome:hello"]
                return stream, buf

            async def drain(n: int) -> list[bytes]:
                return [await got.receive() for _ in range(n)]

            stream, _ = await connect()
            await stream.send_all(b"".join(_frame(b"a%d" % i) for i in range(50)))
            assert await drain(50) == [b"a%d" % i for i in range(50)]

            proxy.set_mode(BLACKHOLE)
            await stream.send_all(b"".join(_frame(b"lost%d" % i) for i in range(20)))
            await trio.sleep(0.2)
            proxy.set_mode(UP)
            await stream.send_all(_frame(b"after"))
            assert await drain(1) == [b"after"]
            assert proxy.dropped == 20

            proxy.set_impairments(duplicate=1.0)
            await stream.send_all(_frame(b"d"))
            assert await drain(2) == [b"d", b"d"]

            proxy.set_impairments(reorder=0.5, delay=0.001, jitter=0.002)
            sent = [b"r%d" % i for i in range(200)]
            for body in sent:
                await stream.send_all(_frame(body))
            out = await drain(200)
            assert sorted(out) == sorted(sent) and out != sent and proxy.reordered > 0
            proxy.heal()

            # A new connection while the link is a black hole: its hello waits for the heal.
            proxy.set_mode(BLACKHOLE)
            with trio.move_on_after(0.3) as scope:
                await connect()
            assert scope.cancelled_caught
            proxy.set_mode(UP)
            stream2, _ = await connect()
            await stream2.send_all(_frame(b"second"))
            assert await drain(1) == [b"second"]

            # Reset closes open connections at once.
            proxy.set_mode(RESET)
            with trio.fail_after(5):
                while await stream2.receive_some(100):
                    pass
            proxy.heal()
            for s in opened:
                await s.aclose()
            nursery.cancel_scope.cancel()


async def test_a_proxy_applies_the_faults_of_the_link_its_hello_names() -> None:
    """Nodes dial a peer at the address the member table records: the proxy
    of one link, whoever dials. The sender in the Hello picks the link."""

    async def server(stream: trio.SocketStream) -> None:
        buf = bytearray()
        await _read_frames(stream, buf, 1)
        await stream.send_all(_frame(b"welcome"))
        with contextlib.suppress(EOFError, trio.BrokenResourceError):
            while True:
                await _read_frames(stream, buf, 1)

    def hello(node_id: int) -> bytes:
        return _frame(msgpack.packb(["hello", 1, "chaos", node_id, "peer"]))

    async def dial(port: int, node_id: int) -> bool:
        """True if the handshake went through."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(hello(node_id))
            try:
                return await _read_frames(stream, bytearray(), 1) == [b"welcome"]
            except (EOFError, trio.BrokenResourceError):
                return False
        finally:
            await stream.aclose()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
            target = listeners[0].socket.getsockname()[1]
            links: dict[tuple[int, int], LinkProxy] = {}
            for src in (1, 3):
                links[(src, 2)] = LinkProxy(src, 2, target, random.Random(src), links)
                await nursery.start(links[(src, 2)].serve)
            links[(1, 2)].set_mode(RESET)
            # Node 3 reaches node 2 through link 1->2's port: link 3->2 is up, so it passes.
            assert await dial(links[(1, 2)].port, 3)
            assert (links[(1, 2)].connections, links[(3, 2)].connections) == (0, 1)
            # Node 1, through either port, is refused: its link is cut.
            assert not await dial(links[(3, 2)].port, 1)
            assert not await dial(links[(1, 2)].port, 1)
            assert links[(1, 2)].connections == 2
            nursery.cancel_scope.cancel()


async def test_every_peer_link_crosses_its_proxy(tmp_path: pathlib.Path) -> None:
    """Three real servers as a chaos run starts them: the member table the
    peers dial holds only the front proxies (no node's real peer port), and
    a leader cut off both ways never hears of the leader elected without it.
    Before the advertise setting the first leader recorded its real port,
    and links into it bypassed every fault."""
    import dengine
    from tests.chaos.cluster import CLUSTER_ID, ChaosCluster

    cluster = ChaosCluster(tmp_path, 3, tick_ms=30, rng=random.Random(7))
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await cluster.start_proxies(nursery)
            try:
                for i in cluster.ids:
                    await cluster.start(i)
                async with dengine.open_client(cluster.endpoints(), cluster_id=CLUSTER_ID, timeout=5) as admin:
                    first = await cluster.wait_leader(admin, 60)
                    assert first is not None, cluster.log_tail(1)
                    await admin.put(b"/k", b"v")  # the member table is applied everywhere by now
                    for i in cluster.ids:
                        async with dengine.open_client([cluster.endpoint(i)], cluster_id=CLUSTER_ID,
                                                       timeout=5) as one:
                            members = await one.members()
                        assert {m.node_id: m.peer_address for m in members} == \
                            {j: cluster.front(j) for j in cluster.ids}, (i, members)
                    leader = first[0]
                    others = [i for i in cluster.ids if i != leader]
                    cluster.cut(cluster.links_between({leader}, others), BLACKHOLE)
                    new = await cluster.wait_leader(admin, 20, not_in={leader}, among=set(others))
                    assert new is not None, "the two connected nodes elected no leader"
                    await admin.put(b"/k", b"after the cut")
                    st = await admin.status(endpoint=cluster.endpoint(leader))
                    assert st.leader_id != new[0] and st.term < new[1], (st, new)
            finally:
                await cluster.stop_all()
                nursery.cancel_scope.cancel()


# -- the analysis of a run on made-up records (fast) ---------------------------------------


def _recorder(events: list[tuple[int, str, bytes, bytes, bytes | None]], *, start: int = 1) -> object:
    from dengine import WatchEventType
    from tests.chaos.workload import END_KEY, WatchEventRecord, WatchRecorder

    w = WatchRecorder(0, None, start)  # type: ignore[arg-type]
    w.first_start = start
    for rev, kind, key, value, prev in events:
        w.events.append(WatchEventRecord(WatchEventType[kind], key, value, prev, rev, 0.0))
    last = events[-1][0] if events else start
    w.events.append(WatchEventRecord(WatchEventType.PUT, END_KEY, b"end", None, last + 1, 0.0))
    w.end_seen.set()
    return w


def test_watch_check_accepts_events_sharing_a_revision_and_flags_a_missing_one() -> None:
    from tests.chaos import analysis
    from tests.chaos.workload import OK, Record

    k = b"/chaos/k0"
    records = [
        Record(0, 0, "put", k, value=b"a", outcome=OK, revision=3, invoke=0, complete=1),
        Record(1, 1, "put", k, value=b"b", outcome=OK, revision=3, invoke=0, complete=1),
        Record(2, 1, "cas", k, value=b"c", expected=b"a", outcome=OK, result=True, invoke=2, complete=3),
    ]
    # One Raft entry applied b then a; the cas came later.
    good = _recorder([(3, "PUT", k, b"b", None), (3, "PUT", k, b"a", b"b"), (5, "PUT", k, b"c", b"a")])
    assert analysis.check_watch(good, records) == []  # type: ignore[arg-type]
    # The second event of revision 3 is missing: a gap, a broken prev_kv chain.
    bad = _recorder([(3, "PUT", k, b"b", None), (5, "PUT", k, b"c", b"a")])
    problems = analysis.check_watch(bad, records)  # type: ignore[arg-type]
    assert any("missed acknowledged put /chaos/k0=a at revision 3" in p for p in problems), problems
    assert any("prev_value" in p for p in problems), problems
    assert analysis.compare_watchers([good, bad])  # type: ignore[list-item]


def test_lost_write_is_the_last_acknowledged_write_missing_on_a_node() -> None:
    from tests.chaos import analysis
    from tests.chaos.workload import OK, UNKNOWN_OUTCOME, Record

    k = b"/chaos/k0"
    records = [
        Record(0, 0, "put", k, value=b"a", outcome=OK, invoke=0, complete=1),
        Record(1, 0, "put", k, value=b"b", outcome=OK, invoke=2, complete=3),
    ]
    assert analysis.lost_writes(records, {1: {k: b"b"}, 2: {k: b"b"}}, [k])[0] == 0
    assert analysis.lost_writes(records, {1: {k: b"b"}, 2: {k: b"a"}}, [k])[0] == 1
    # An unknown write after it may have overwritten it: no conclusion.
    records.append(Record(2, 1, "put", k, value=b"c", outcome=UNKNOWN_OUTCOME, invoke=4))
    assert analysis.lost_writes(records, {1: {k: b"a"}}, [k])[0] == 0
