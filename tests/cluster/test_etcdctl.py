"""The real etcdctl 3.4 against a real etcd 3.4 and against `dengine serve
--etcd-address`: the same commands, outputs equal in shape.

Each test function starts one real etcd and one single-node dengine (about
a second each), runs its commands against both and compares what etcdctl
printed (stdout, stderr, exit code) after :func:`normalise` (text) or
:func:`assert_same_json` (``-w json``). Every case uses its own key prefix.
The last test runs a 3-node dengine alone: writes and leases through a
follower. dengine-only checks (no etcd to compare with) say so.

Rules of tests/cluster: free ports on 127.0.0.1, every process stopped by
its PID in a finally, every wait bounded in time.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from tests.cluster.etcd_helpers import ETCDCTL, dengine_with_etcd, etcdctl, needs_etcd, real_etcd

pytestmark = needs_etcd

# --------------------------------------------------------------------------
# Normalising what legitimately differs
# --------------------------------------------------------------------------

_LEASE_ID = re.compile(r"\b[0-9a-f]{16}\b")
_REMAINING = re.compile(r"remaining\(-?\d+s\)")
_TOOK = re.compile(r"took = \S+")
_DB_SIZE = re.compile(r"\b\d+(?:\.\d+)? [kMGT]?B\b")
_LOG_TS = re.compile(r'"ts":"[^"]*"')
_LOG_TARGET = re.compile(r'"target":"[^"]*"')
_FIELDS = re.compile(r'^"(ClusterID|MemberID|Revision|RaftTerm|CreateRevision|ModRevision)" : \d+$', re.M)
_NUMBER = re.compile(r"(?<![\w.<])\d+(?![\w.>])")


def normalise(text: str | bytes, known: Mapping[str, str] = {}, *, numbers: bool = False,
              lease_keys: tuple[str, ...] = ()) -> str:
    """etcdctl's text output with what legitimately differs between etcd and
    dengine replaced; everything else (words, line structure, field order,
    punctuation) is kept exactly. In this order:

    1. table lines (``+---+`` borders and ``| a | b |`` rows) lose their
       padding: every border run of ``-`` becomes one ``-``, every cell is
       stripped (column widths follow the values);
    2. every string of ``known`` (a server's address and peer URL, version
       string; for the outputs that show them, its member id in hex and
       member name) becomes its placeholder, longest first, where it is a whole token
       (no letter, digit, ``_`` or ``.`` either side);
    3. ``<prefix>/<hex>`` for each prefix of ``lease_keys`` (the keys lock
       and elect create, named after their session's lease) becomes
       ``<prefix>/<LEASE>``;
    4. lease ids (exactly 16 lower-case hex digits) become ``<LEASE>``;
    5. ``remaining(59s)`` (TTL remaining) becomes ``remaining(<S>s)`` and
       ``took = 2.1ms`` (health check time) ``took = <T>``;
    6. DB sizes (``20 kB``, ``134 MB``) become ``<SIZE>``;
    7. in etcdctl's own JSON log lines (stderr), ``"ts"`` and ``"target"``
       (a time, a random client id) become ``<TS>`` and ``<TARGET>``;
    8. in ``-w fields`` output, the numbers of ``"ClusterID"``,
       ``"MemberID"``, ``"Revision"``, ``"RaftTerm"``, ``"CreateRevision"``
       and ``"ModRevision"`` become ``<N>``;
    9. with ``numbers``: every other standalone decimal number becomes
       ``<N>`` (raft term and indexes of ``endpoint status``).
    """
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = []
    for line in text.split("\n"):
        if line.startswith("+") and set(line) <= {"+", "-"}:
            line = re.sub(r"-+", "-", line)
        elif line.startswith("|") and line.endswith("|"):
            line = "|" + "|".join(f" {cell.strip()} " for cell in line[1:-1].split("|")) + "|"
        lines.append(line)
    text = "\n".join(lines)
    for raw in sorted(known, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.]){re.escape(raw)}(?![\w.])", known[raw], text)
    for prefix in lease_keys:
        text = re.sub(rf"{re.escape(prefix)}/[0-9a-f]+\b", f"{prefix}/<LEASE>", text)
    text = _LEASE_ID.sub("<LEASE>", text)
    text = _REMAINING.sub("remaining(<S>s)", text)
    text = _TOOK.sub("took = <T>", text)
    text = _DB_SIZE.sub("<SIZE>", text)
    text = _LOG_TS.sub('"ts":"<TS>"', text)
    text = _LOG_TARGET.sub('"target":"<TARGET>"', text)
    text = _FIELDS.sub(r'"\1" : <N>', text)
    if numbers:
        text = _NUMBER.sub("<N>", text)
    return text


#: JSON fields whose values legitimately differ (their type must still match).
_VOLATILE_JSON = frozenset({
    "cluster_id", "member_id", "revision", "raft_term", "create_revision", "mod_revision", "lease", "ID", "id",
    "leader", "dbSize", "dbSizeInUse", "raftIndex", "raftTerm", "raftAppliedIndex", "ttl", "took", "Endpoint",
    "endpoint", "name", "peerURLs", "clientURLs",
})


def json_diff(etcd: Any, dengine: Any, path: str = "$") -> list[str]:
    """The differences between two decoded ``-w json`` outputs: the same
    keys at every level, the same list lengths, equal values except under
    the keys of :data:`_VOLATILE_JSON` and a string ``version`` (the server
    version), where only the type must match."""
    if isinstance(etcd, dict) and isinstance(dengine, dict):
        out = []
        if set(etcd) != set(dengine):
            out.append(f"{path}: keys {sorted(etcd)} (etcd) != {sorted(dengine)} (dengine)")
        for k in sorted(set(etcd) & set(dengine)):
            a, b = etcd[k], dengine[k]
            if k in _VOLATILE_JSON or (k == "version" and isinstance(a, str)):
                if type(a) is not type(b):
                    out.append(f"{path}.{k}: {a!r} (etcd) and {b!r} (dengine) differ in type")
                elif isinstance(a, list) and len(a) != len(b):
                    out.append(f"{path}.{k}: {len(a)} items (etcd) != {len(b)} (dengine)")
            else:
                out.extend(json_diff(a, b, f"{path}.{k}"))
        return out
    if isinstance(etcd, list) and isinstance(dengine, list):
        if len(etcd) != len(dengine):
            return [f"{path}: {len(etcd)} items (etcd) != {len(dengine)} (dengine)"]
        return [d for i, (a, b) in enumerate(zip(etcd, dengine)) for d in json_diff(a, b, f"{path}[{i}]")]
    return [] if etcd == dengine else [f"{path}: {etcd!r} (etcd) != {dengine!r} (dengine)"]


def assert_same_json(etcd: str | bytes, dengine: str | bytes) -> None:
    """Both outputs are JSON (one document, or one per line) of the same shape (:func:`json_diff`)."""
    a = [json.loads(line) for line in (etcd.decode() if isinstance(etcd, bytes) else etcd).splitlines() if line]
    b = [json.loads(line) for line in (dengine.decode() if isinstance(dengine, bytes) else dengine).splitlines()
         if line]
    diff = json_diff(a, b)
    assert not diff, "\n".join(diff) + f"\netcd:    {etcd!r}\ndengine: {dengine!r}"


# --------------------------------------------------------------------------
# The two servers
# --------------------------------------------------------------------------


@dataclass
class Face:
    """One server as etcdctl sees it: its endpoint and the strings of its
    outputs :func:`normalise` replaces."""

    endpoint: str
    known: dict[str, str] = field(default_factory=dict)
    member: str = ""  # its member id in hex
    name: str = ""  # its member name
    gateway: str = ""  # its JSON gateway (host:port)

    def names(self, member: bool) -> dict[str, str]:
        """What :func:`normalise` replaces in this server's outputs (``member``: its id and name too)."""
        return {**self.known, self.member: "<MEMBER>", self.name: "<NAME>"} if member else self.known

    async def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return await etcdctl(self.endpoint, *args, stdin=stdin)


async def face(endpoint: str, peer: str, name: str, gateway: str) -> Face:
    done = await etcdctl(endpoint, "endpoint", "status", "-w", "json")
    assert done.returncode == 0, done
    status = json.loads(done.stdout)[0]["Status"]
    return Face(endpoint, {
        f"http://{endpoint}": "<CLIENT-URL>", endpoint: "<ENDPOINT>", f"http://{peer}": "<PEER-URL>",
        status["version"]: "<VERSION>",
    }, member=f"{status['header']['member_id']:x}", name=name, gateway=gateway)


@asynccontextmanager
async def both(tmp: pathlib.Path) -> AsyncIterator[tuple[Face, Face]]:
    """A real etcd and a 1-node dengine, as (etcd, dengine)."""
    async with real_etcd(tmp) as etcd, dengine_with_etcd(tmp, 1) as cluster:
        yield (await face(etcd.endpoint, etcd.peer, "default", etcd.endpoint),
               await face(cluster.grpc[1], cluster.peers[1], "node-1", cluster.gateway[1]))


async def compare(etcd: Face, dengine: Face, *args: str, stdin: bytes | None = None, json_out: bool = False,
                  numbers: bool = False, member: bool = False, lease_keys: tuple[str, ...] = ()) -> str:
    """Run ``etcdctl ARGS`` on both; assert the same exit code and the same
    normalised stdout and stderr (JSON shapes with ``json_out``; ``member``:
    member ids and names are replaced too). The etcd one's stdout, decoded."""
    a = await etcd.run(*args, stdin=stdin)
    b = await dengine.run(*args, stdin=stdin)
    what = f"etcdctl {' '.join(args)}\netcd:    {a}\ndengine: {b}"
    assert a.returncode == b.returncode, what
    if json_out:
        assert_same_json(a.stdout, b.stdout)
    else:
        assert normalise(a.stdout, etcd.names(member), numbers=numbers, lease_keys=lease_keys) == \
            normalise(b.stdout, dengine.names(member), numbers=numbers, lease_keys=lease_keys), what
    assert normalise(a.stderr, etcd.names(member), lease_keys=lease_keys) == \
        normalise(b.stderr, dengine.names(member), lease_keys=lease_keys), what
    return a.stdout.decode()


# --------------------------------------------------------------------------
# etcdctl in the background (watch, lock holders, elect)
# --------------------------------------------------------------------------


class Background:
    """A running etcdctl: what it printed so far."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = bytearray()
        self.err = bytearray()

    async def pump(self, stream: trio.abc.ReceiveStream, buf: bytearray) -> None:
        async for chunk in stream:
            buf += chunk

    async def wait_for(self, needle: bytes, timeout: float = 10, count: int = 1) -> None:
        with trio.move_on_after(timeout):
            while self.out.count(needle) < count:
                await trio.sleep(0.05)
            return
        raise AssertionError(f"{needle!r} not printed within {timeout} s: out={bytes(self.out)!r} "
                             f"err={bytes(self.err)!r}")


@asynccontextmanager
async def background(endpoint: str, *args: str) -> AsyncIterator[Background]:
    """``etcdctl --endpoints=<endpoint> ARGS`` running; killed (by its PID) on the way out."""
    assert ETCDCTL is not None
    env = {**os.environ, "ETCDCTL_API": "3"}
    env.pop("ETCDCTL_ENDPOINTS", None)
    proc = await trio.lowlevel.open_process([ETCDCTL, f"--endpoints={endpoint}", *args], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    bg = Background(proc)

    async def stop() -> None:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            with trio.move_on_after(10):
                await proc.wait()

    try:
        async with trio.open_nursery() as nursery:
            assert proc.stdout is not None and proc.stderr is not None
            nursery.start_soon(bg.pump, proc.stdout, bg.out)
            nursery.start_soon(bg.pump, proc.stderr, bg.err)
            try:
                yield bg
            finally:
                await stop()
                nursery.cancel_scope.deadline = trio.current_time() + 5  # let the pumps drain the pipes
    finally:
        await stop()  # also when the pumps could not start


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------


async def test_put_get_del(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        p = "/kv/"
        c = (etcd, dengine)
        await compare(*c, "put", p + "a", "1")
        await compare(*c, "put", p + "b", "22")
        await compare(*c, "put", p + "c", "3")
        await compare(*c, "put", p + "a", "111", "--prev-kv")
        await compare(*c, "put", "/kv0", "outside")
        await compare(*c, "get", p + "a")
        await compare(*c, "get", p + "missing")
        await compare(*c, "get", p, "--prefix")
        await compare(*c, "get", p, "--prefix", "-w", "json", json_out=True)
        await compare(*c, "get", p + "a", "-w", "json", json_out=True)
        await compare(*c, "get", p + "missing", "-w", "json", json_out=True)
        await compare(*c, "get", p, "--prefix", "--keys-only")
        await compare(*c, "get", p, "--prefix", "--keys-only", "-w", "json", json_out=True)
        await compare(*c, "get", p, "--prefix", "--print-value-only")
        await compare(*c, "get", p, "--prefix", "--limit", "2")
        await compare(*c, "get", p, "--prefix", "--limit", "2", "-w", "json", json_out=True)
        for target in ("KEY", "VALUE", "VERSION", "CREATE", "MODIFY"):
            for order in ("ASCEND", "DESCEND"):
                await compare(*c, "get", p, "--prefix", f"--sort-by={target}", f"--order={order}")
        await compare(*c, "get", p + "b", "--from-key")
        await compare(*c, "get", p + "b", "--from-key", "--limit", "1")
        await compare(*c, "get", p + "a", p + "c")  # a [key, range_end) range
        await compare(*c, "get", p, "--prefix", "-w", "fields")
        # etcdctl 3.4 has no --count-only (3.5 added it): the same refusal from both.
        await compare(*c, "get", p, "--prefix", "--count-only")
        # ... so count_only goes through the JSON gateways (etcd's on its client port).
        body = {"key": base64.b64encode(p.encode()).decode(), "range_end": base64.b64encode(b"/kv0").decode(),
                "count_only": True}
        ga, gb = [await http_post(f.gateway, "/v3/kv/range", body) for f in c]
        assert ga[0] == gb[0] == 200, (ga, gb)
        assert not json_diff(ga[1], gb[1]), (json_diff(ga[1], gb[1]), ga, gb)
        assert ga[1]["count"] == "3" and "kvs" not in ga[1], ga
        await compare(*c, "del", p + "b", "--prev-kv")
        await compare(*c, "del", p + "missing")
        await compare(*c, "del", p, "--prefix", "--prev-kv")
        await compare(*c, "del", p, "--prefix")
        await compare(*c, "del", p, "--prefix", "-w", "json", json_out=True)
        await compare(*c, "get", "/kv", "--prefix")


async def test_txn(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        c = (etcd, dengine)
        await compare(*c, "put", "/txn/k", "v1")
        await compare(*c, "put", "/txn/other", "o")
        ok = b'value("/txn/k") = "v1"\n\nput /txn/k v2\nget /txn/k\n\nput /txn/failed x\n\n'
        await compare(*c, "txn", stdin=ok)
        fail = b'value("/txn/k") = "v1"\nversion("/txn/other") = "1"\n\nput /txn/k v3\n\n' \
               b'get /txn/k\ndel /txn/other --prev-kv\nput /txn/failed yes\n\n'
        await compare(*c, "txn", stdin=fail)
        await compare(*c, "get", "/txn/", "--prefix")
        ok_json = b'mod("/txn/k") > "0"\ncreate("/txn/none") = "0"\n\nput /txn/k v4\nget /txn/k\n' \
                  b'del /txn/failed\n\nput /txn/failed no\n\n'
        await compare(*c, "txn", "-w", "json", stdin=ok_json, json_out=True)
        fail_json = b'value("/txn/k") = "nope"\n\nput /txn/k v5\n\nget /txn/ --prefix\nput /txn/x y\n\n'
        await compare(*c, "txn", "-w", "json", stdin=fail_json, json_out=True)
        await compare(*c, "get", "/txn/", "--prefix")


async def test_leases(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        c = (etcd, dengine)
        await compare(*c, "lease", "list")
        granted = await compare(*c, "lease", "grant", "60")
        a = (await etcd.run("lease", "list")).stdout.split()[-1].decode()
        b = (await dengine.run("lease", "list")).stdout.split()[-1].decode()
        assert granted.split()[1] == a
        ids = {"etcd": a, "dengine": b}

        async def both_with_id(*args: str, json_out: bool = False) -> None:
            """The same command on both, ``ID`` standing for each server's lease id."""
            ra = await etcd.run(*[ids["etcd"] if x == "ID" else x for x in args])
            rb = await dengine.run(*[ids["dengine"] if x == "ID" else x for x in args])
            what = f"etcdctl {' '.join(args)}\netcd:    {ra}\ndengine: {rb}"
            assert ra.returncode == rb.returncode, what
            if json_out:
                assert_same_json(ra.stdout, rb.stdout)
            else:
                assert normalise(ra.stdout, etcd.known) == normalise(rb.stdout, dengine.known), what
            assert normalise(ra.stderr, etcd.known) == normalise(rb.stderr, dengine.known), what

        await both_with_id("put", "/lease/k1", "v1", "--lease", "ID")
        await both_with_id("put", "/lease/k2", "v2", "--lease=ID")
        await compare(*c, "get", "/lease/k1", "-w", "json", json_out=True)
        await compare(*c, "lease", "list")
        await compare(*c, "lease", "list", "-w", "json", json_out=True)
        await both_with_id("lease", "keep-alive", "--once", "ID")
        await both_with_id("lease", "keep-alive", "--once", "ID", "-w", "json", json_out=True)
        await both_with_id("lease", "timetolive", "ID")
        await both_with_id("lease", "timetolive", "--keys", "ID")
        await both_with_id("lease", "timetolive", "--keys", "ID", "-w", "json", json_out=True)
        await compare(*c, "lease", "grant", "30", "-w", "json", json_out=True)
        await both_with_id("lease", "revoke", "ID")
        await compare(*c, "get", "/lease/", "--prefix")
        await both_with_id("lease", "timetolive", "ID")  # "already expired"
        await both_with_id("lease", "timetolive", "--keys", "ID")
        await both_with_id("lease", "timetolive", "ID", "-w", "json", json_out=True)
        await both_with_id("lease", "keep-alive", "--once", "ID")
        await both_with_id("lease", "revoke", "ID")
        await both_with_id("put", "/lease/k3", "v3", "--lease", "ID")
        await compare(*c, "lease", "list")


async def test_errors(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        c = (etcd, dengine)
        await compare(*c, "put", "/err/k", "v")
        await compare(*c, "lease", "revoke", "1234abcd")
        await compare(*c, "lease", "keep-alive", "--once", "1234abcd")
        await compare(*c, "lease", "timetolive", "1234abcd")
        await compare(*c, "get", "/err/k", "--rev", "99999999")
        await compare(*c, "get", "/err/", "--prefix", "--rev", "99999999", "-w", "json")
        await compare(*c, "put", "", "v")
        await compare(*c, "alarm", "list")
        # dengine only: what dengine does not do fails clearly, naming dengine.
        for args, what in ((("defrag",), "defragment"), (("endpoint", "hashkv"), "hashkv"),
                           (("snapshot", "save", str(tmp_path / "snap.db")), "snapshot"),
                           (("user", "list"), "authentication")):
            done = await dengine.run(*args)
            err = done.stderr.decode()
            assert done.returncode != 0, (args, done)
            assert "code = Unimplemented" in err and "dengine: " in err and what in err, (args, err)


async def test_cluster_and_endpoint(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        c = (etcd, dengine)
        await compare(*c, "member", "list", member=True)
        await compare(*c, "member", "list", "-w", "table", member=True)
        await compare(*c, "member", "list", "-w", "json", json_out=True)
        await compare(*c, "endpoint", "status", member=True, numbers=True)
        await compare(*c, "endpoint", "status", "-w", "table", member=True, numbers=True)
        await compare(*c, "endpoint", "status", "-w", "json", json_out=True)
        await compare(*c, "endpoint", "health")
        await compare(*c, "endpoint", "health", "-w", "json", json_out=True)


async def watch_output(face: Face, prefix: str, *args: str) -> str:
    """What ``etcdctl watch --prefix PREFIX ARGS`` prints for a fixed
    sequence of writes under ``prefix`` (and one outside), the events of
    the marker key written until the watch is registered taken out."""
    marker = prefix + "marker"
    as_json = "-w" in args

    def printed(key: str) -> bytes:
        """How a key shows in the watcher's output (base64 in JSON)."""
        return base64.b64encode(key.encode()) if as_json else key.encode()

    async with background(face.endpoint, "watch", "--prefix", prefix, *args) as w:
        with trio.fail_after(15):
            while printed(marker) not in w.out:
                done = await face.run("put", marker, "m")
                assert done.returncode == 0, done
                with trio.move_on_after(0.5):
                    while printed(marker) not in w.out:
                        await trio.sleep(0.02)
        seen = bytes(w.out)
        for args2 in (("put", prefix + "a", "1"), ("put", prefix + "a", "2"), ("put", prefix[:-1] + "0", "no"),
                      ("put", prefix + "b", "3"), ("del", prefix + "a"), ("del", prefix, "--prefix"),
                      ("put", prefix + "end", "done")):
            done = await face.run(*args2)
            assert done.returncode == 0, done
        await w.wait_for(printed(prefix + "end"), count=1 + seen.count(printed(prefix + "end")))
        await trio.sleep(0.2)  # anything wrongly printed after the last event
    out = bytes(w.out).decode()
    if as_json:
        return "\n".join(line for line in out.splitlines() if printed(marker).decode() not in line)
    return out[out.rindex(f"{marker}\nm\n") + len(f"{marker}\nm\n"):]


async def test_watch_prefix(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        a = await watch_output(etcd, "/w1/")
        b = await watch_output(dengine, "/w1/")
        assert a == b
        assert a.startswith("PUT\n/w1/a\n1\n")
        a = await watch_output(etcd, "/w2/", "--prev-kv")
        b = await watch_output(dengine, "/w2/", "--prev-kv")
        assert a == b
        a = await watch_output(etcd, "/w3/", "-w", "json")
        b = await watch_output(dengine, "/w3/", "-w", "json")
        assert_same_json(a, b)


async def test_watch_prev_kv_json(tmp_path: pathlib.Path) -> None:
    """The previous key-values of watch events are whole KeyValues in etcd."""
    async with both(tmp_path) as (etcd, dengine):
        a = await watch_output(etcd, "/w4/", "--prev-kv", "-w", "json")
        b = await watch_output(dengine, "/w4/", "--prev-kv", "-w", "json")
        assert_same_json(a, b)


async def lock_run(face: Face, tmp: pathlib.Path, name: str) -> tuple[str, str, str]:
    """A lock taken with a command; then two contenders: (first's output, second's, the order file)."""
    done = await face.run("lock", name, "--", "echo", "locked")
    assert done.returncode == 0, done
    simple = done.stdout.decode() + done.stderr.decode()
    order = tmp / f"order-{name}"
    async with background(face.endpoint, "lock", name, "--", "sh", "-c",
                          f"echo first; echo in >> {order}; sleep 1; echo out >> {order}") as first:
        await first.wait_for(b"first")
        second = await face.run("lock", name, "--", "sh", "-c", f"echo second; echo second >> {order}")
        assert second.returncode == 0, second
        with trio.fail_after(10):
            await first.proc.wait()
    return simple, bytes(first.out).decode() + "|" + second.stdout.decode(), order.read_text()


async def test_lock(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        a = await lock_run(etcd, tmp_path, "etcd-lock")
        b = await lock_run(dengine, tmp_path, "dengine-lock")
        assert a == b == ("locked\n", "first\n|second\n", "in\nout\nsecond\n")
        # A holder without a command prints the key it holds (named after its lease).
        outs = []
        for f in (etcd, dengine):
            async with background(f.endpoint, "lock", "/locks/held") as holder:
                await holder.wait_for(b"\n\n")
                await trio.sleep(0.2)  # anything more it would print
                outs.append(normalise(bytes(holder.out), lease_keys=("/locks/held",)))
        assert outs[0] == outs[1] == "/locks/held/<LEASE>\n\n"


async def elect_run(face: Face) -> tuple[str, str]:
    """(the campaigner's output once leader, an observer's ``elect -l``), normalised."""
    async with background(face.endpoint, "elect", "/elect/job", "candidate-1") as campaigner:
        await campaigner.wait_for(b"candidate-1\n")
        async with background(face.endpoint, "elect", "-l", "/elect/job") as observer:
            await observer.wait_for(b"candidate-1\n")
            await trio.sleep(0.2)
        return (normalise(bytes(campaigner.out), lease_keys=("/elect/job",)),
                normalise(bytes(observer.out), lease_keys=("/elect/job",)))


async def test_elect(tmp_path: pathlib.Path) -> None:
    async with both(tmp_path) as (etcd, dengine):
        a = await elect_run(etcd)
        b = await elect_run(dengine)
        assert a == b
        assert a[0] == "/elect/job/<LEASE>\ncandidate-1\n"


async def http_post(address: str, path: str, body: Any, timeout: float = 10) -> tuple[int, Any]:
    """POST ``body`` as JSON (connection closed after the answer): (status, decoded JSON)."""
    host, port = address.rsplit(":", 1)
    data = json.dumps(body).encode()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
                                  f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            answer = bytearray()
            while chunk := await stream.receive_some(65536):
                answer += chunk
    head, _, payload = bytes(answer).partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _unchunk(payload)
    return int(head.split()[1]), json.loads(payload)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


async def test_three_nodes_through_a_follower(tmp_path: pathlib.Path) -> None:
    """dengine only: a write, a lease grant and a keep-alive sent to a follower are forwarded to the leader."""
    async with dengine_with_etcd(tmp_path, 3) as cluster:
        statuses = {}
        for i, ep in cluster.grpc.items():
            done = await etcdctl(ep, "endpoint", "status", "-w", "json")
            assert done.returncode == 0, done
            statuses[i] = json.loads(done.stdout)[0]["Status"]
        leaders = {s["leader"] for s in statuses.values()}
        assert len(leaders) == 1, statuses
        (leader,) = leaders
        follower = next(i for i, s in statuses.items() if s["header"]["member_id"] != leader)
        table = await etcdctl(cluster.grpc[follower], "endpoint", "status", "-w", "table",
                              endpoints=list(cluster.grpc.values()))
        assert normalise(table.stdout).count("| true |") == 1, table

        done = await etcdctl(cluster.grpc[follower], "put", "/follower/k", "from-a-follower")
        assert (done.returncode, done.stdout) == (0, b"OK\n"), done
        for i, ep in cluster.grpc.items():
            done = await etcdctl(ep, "get", "/follower/k")
            assert (done.returncode, done.stdout) == (0, b"/follower/k\nfrom-a-follower\n"), (i, done)

        done = await etcdctl(cluster.grpc[follower], "lease", "grant", "30")
        assert done.returncode == 0, done
        assert re.fullmatch(rb"lease [0-9a-f]{16} granted with TTL\(30s\)\n", done.stdout), done
        lease = done.stdout.split()[1].decode()
        done = await etcdctl(cluster.grpc[follower], "lease", "keep-alive", "--once", lease)
        assert (done.returncode, done.stdout.decode()) == (0, f"lease {lease} keepalived with TTL(30)\n"), done
        done = await etcdctl(cluster.grpc[follower], "put", "/follower/leased", "x", "--lease", lease)
        assert done.returncode == 0, done
        for ep in cluster.grpc.values():
            done = await etcdctl(ep, "lease", "timetolive", "--keys", lease)
            assert done.returncode == 0, done
            assert normalise(done.stdout) == \
                "lease <LEASE> granted with TTL(30s), remaining(<S>s), attached keys([/follower/leased])\n", done
