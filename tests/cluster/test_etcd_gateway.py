"""etcd's v3 JSON gateway of a real `dengine serve --etcd-gateway-address`,
against real programs: etcd3gw (a requests-based client) drives it, and the
JSON examples of etcd's gateway guide (etcd.io/docs/v3.5/dev-guide/
api_grpc_gateway/: put, range, watch, txn) plus the lease calls and the
usual errors are sent as raw HTTP to a real etcd 3.4 and to dengine: same
HTTP status, same JSON shape (the same keys at every level; values differ
only where revisions, ids, terms and cluster/member ids do).

Known differences, asserted as such: an unknown path is etcd's plain-text
``404 Not Found`` and dengine's JSON error (same status); a GET on a POST
path is 405 in both (text vs JSON); the messages of body decoding errors are
Go's vs Python's (same status and code); RPCs dengine does not serve
(defragment) are 501 naming dengine where etcd answers 200 ``{}``.

Rules: free ports on 127.0.0.1; every process is stopped by its PID in a
finally (the helpers' context managers); every wait is bounded; each test
runs under an absolute fail_after. etcd3gw blocks: it runs in threads.
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import pytest
import trio

from tests.cluster.etcd_helpers import HttpConn as Conn
from tests.cluster.etcd_helpers import Response, dengine_with_etcd, needs_etcd, real_etcd

etcd3gw = pytest.importorskip("etcd3gw")

DEADLINE = 40
T = TypeVar("T")

#: Values that may differ between etcd and dengine (the shape may not).
LOOSE = frozenset({"cluster_id", "member_id", "revision", "raft_term", "create_revision", "mod_revision", "ID"})


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


# -- a tiny HTTP/1.1 client (stdlib + trio) --------------------------------------


def request(method: str, path: str, body: bytes | str = b"", *, length: int | None = None) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data) if length is None else length}\r\nConnection: close\r\n\r\n").encode() + data


async def call(address: str, path: str, body: Any = None, *, method: str = "POST", timeout: float = 10) -> Response:
    """One request on its own connection; ``body``: a JSON value, or str/bytes sent as is."""
    raw = body if isinstance(body, (str, bytes)) else (b"" if body is None else json.dumps(body))
    with trio.fail_after(timeout):
        conn = await Conn.open(address)
        try:
            await conn.stream.send_all(request(method, path, raw))
            return await conn.response()
        finally:
            await conn.aclose()


# -- comparing etcd's JSON with dengine's ----------------------------------------


def assert_same_shape(etcd: Any, ours: Any, *, loose: frozenset[str] = LOOSE, values: bool = True,
                      where: str = "$") -> None:
    """The same keys at every level (and list lengths); with ``values`` also
    the same values, except under the ``loose`` keys."""
    if isinstance(etcd, dict):
        assert isinstance(ours, dict) and set(etcd) == set(ours), f"{where}: etcd {etcd} vs dengine {ours}"
        for key in etcd:
            assert_same_shape(etcd[key], ours[key], loose=loose, values=values and key not in loose,
                              where=f"{where}.{key}")
    elif isinstance(etcd, list):
        assert isinstance(ours, list) and len(etcd) == len(ours), f"{where}: etcd {etcd} vs dengine {ours}"
        for i, (a, b) in enumerate(zip(etcd, ours, strict=True)):
            assert_same_shape(a, b, loose=loose, values=values, where=f"{where}[{i}]")
    else:
        assert type(etcd) is type(ours), f"{where}: etcd {etcd!r} vs dengine {ours!r}"
        if values:
            assert etcd == ours, f"{where}: etcd {etcd!r} vs dengine {ours!r}"


@attrs.define
class Transcript:
    """What one server answered to the scripted requests, by step name."""

    steps: dict[str, Response] = attrs.field(factory=dict)
    watch: list[bytes] = attrs.field(factory=list)
    watch_head: Response | None = None


async def run_script(address: str) -> Transcript:
    """The documented examples, the lease calls and the error cases, in order."""
    out = Transcript()
    s = out.steps

    async def step(name: str, path: str, body: Any = None, *, method: str = "POST") -> Any:
        s[name] = await call(address, path, body, method=method)
        return s[name].json() if s[name].status == 200 else None

    foo, bar = "Zm9v", "YmFy"  # as in the guide: base64 of "foo", "bar"
    put = await step("put", "/v3/kv/put", f'{{"key": "{foo}", "value": "{bar}"}}')
    rev = put["header"]["revision"]
    await step("range", "/v3/kv/range", f'{{"key": "{foo}"}}')
    await step("range prefix", "/v3/kv/range", f'{{"key": "{foo}", "range_end": "Zm9w"}}')
    await step("range none", "/v3/kv/range", {"key": b64("nothing")})
    # The guide's two transactions (lowerCamel names), with this server's revision and the version they lead to.
    await step("txn create", "/v3/kv/txn", '{"compare":[{"target":"CREATE","key":"%s","createRevision":"%s"}],'
                                            '"success":[{"requestPut":{"key":"%s","value":"%s"}}]}'
                                            % (foo, rev, foo, bar))
    await step("txn version", "/v3/kv/txn", '{"compare":[{"version":"2","result":"EQUAL","target":"VERSION",'
                                             '"key":"%s"}],"success":[{"requestRange":{"key":"%s"}}]}' % (foo, foo))
    await step("txn failure", "/v3/kv/txn", {"compare": [{"key": foo, "target": "VALUE", "value": b64("other")}],
                                             "success": [], "failure": [{"request_delete_range": {
                                                 "key": foo, "prev_kv": True}}]})
    await step("txn failed, no failure ops", "/v3/kv/txn",
               {"compare": [{"key": foo, "target": "VERSION", "result": "GREATER", "version": 5}]})
    await step("delete none", "/v3/kv/deleterange", {"key": foo})

    # The guide's watch: a chunked stream, "created" first, then one chunk per change made elsewhere.
    with trio.fail_after(10):
        conn = await Conn.open(address)
        try:
            await conn.stream.send_all(request("POST", "/v3/watch", '{"create_request": {"key":"%s"} }' % foo))
            out.watch_head = await conn.head()
            out.watch.append(await conn.chunk() or b"")
            await step("watched put", "/v3/kv/put", f'{{"key": "{foo}", "value": "{bar}"}}')
            out.watch.append(await conn.chunk() or b"")
            await step("watched delete", "/v3/kv/deleterange", {"key": foo, "range_end": "Zm9w"})
            out.watch.append(await conn.chunk() or b"")
        finally:
            await conn.aclose()

    grant = await step("lease grant", "/v3/lease/grant", {"TTL": 30, "ID": 0})
    lease = grant["ID"]
    await step("put with lease", "/v3/kv/put", {"key": foo, "value": bar, "lease": lease})
    await step("lease keepalive", "/v3/lease/keepalive", {"ID": lease})
    await step("lease timetolive", "/v3/lease/timetolive", {"ID": lease, "keys": True})
    await step("lease leases", "/v3/lease/leases", {})
    await step("lease revoke", "/v3/lease/revoke", {"ID": lease})
    await step("range after revoke", "/v3/kv/range", {"key": foo})
    await step("keepalive unknown", "/v3/lease/keepalive", {"ID": 12345})
    await step("timetolive unknown", "/v3/lease/timetolive", {"ID": 12345})
    await step("member list", "/v3/cluster/member/list", {})
    await step("status", "/v3/maintenance/status", {})
    await step("version", "/version", method="GET")

    # Errors.
    await step("revoke unknown", "/v3/kv/lease/revoke", {"ID": 12345})
    await step("put unknown lease", "/v3/kv/put", {"key": foo, "value": bar, "lease": 12345})
    await step("no key", "/v3/kv/range", "")
    await step("malformed", "/v3/kv/range", '{"key": ')
    await step("wrong type", "/v3/kv/range", '{"key": 5}')
    await step("wrong int", "/v3/kv/range", '{"key": "Zm9v", "limit": "abc"}')
    await step("not an object", "/v3/kv/range", "[1]")
    await step("unknown enum", "/v3/kv/range", {"key": foo, "sort_order": "SIDEWAYS"})
    await step("duplicate key", "/v3/kv/txn", {"success": [{"request_put": {"key": foo, "value": bar}},
                                                           {"request_delete_range": {"key": foo}}]})
    await step("unknown path", "/v3/kv/nothing", "{}")
    await step("get on post", "/v3/kv/range", method="GET")
    return out


def assert_matches(etcd: Transcript, ours: Transcript) -> None:
    e, d = etcd.steps, ours.steps
    assert list(e) == list(d)
    shape_only = {"member list", "status", "version"}
    loose_ttl = {"lease timetolive"}  # TTL counts down
    errors = {"revoke unknown", "put unknown lease", "no key", "malformed", "wrong type", "wrong int",
              "not an object", "unknown enum", "duplicate key", "unknown path", "get on post"}
    for name in e:
        assert e[name].status == d[name].status, f"{name}: etcd {e[name]} vs dengine {d[name]}"
        if name in errors:
            continue
        assert e[name].headers["content-type"] == d[name].headers["content-type"] == "application/json", name
        loose = LOOSE | {"TTL"} if name in loose_ttl else LOOSE
        assert_same_shape(e[name].json(), d[name].json(), loose=loose, values=name not in shape_only,
                          where=name)

    # The same etcd error, exactly, where dengine maps one.
    for name, status, code, message in (
        ("revoke unknown", 404, 5, "etcdserver: requested lease not found"),
        ("put unknown lease", 404, 5, "etcdserver: requested lease not found"),
        ("no key", 400, 3, "etcdserver: key is not provided"),
        ("duplicate key", 400, 3, "etcdserver: duplicate key given in txn request"),
    ):
        for side in (e, d):
            assert (side[name].status, side[name].json()) == (status, {"error": message, "code": code,
                                                                      "message": message}), name
    # Decoding errors: the same status and code; the text is each side's JSON decoder's.
    for name in ("malformed", "wrong type", "wrong int", "not an object", "unknown enum"):
        for side in (e, d):
            doc = side[name].json()
            assert side[name].status == 400 and doc["code"] == 3 and doc["error"] == doc["message"], (name, doc)
    # Mux-level refusals: etcd's are plain text, dengine's JSON; the statuses match.
    assert (e["unknown path"].status, e["unknown path"].body) == (404, b"Not Found\n")
    assert d["unknown path"].json()["code"] == 5
    assert e["get on post"].status == d["get on post"].status == 405
    assert d["get on post"].headers["allow"] == "POST"

    # The watch stream: chunked JSON, one message per chunk, created first, then the PUT and DELETE events.
    for side in (etcd, ours):
        assert side.watch_head is not None and side.watch_head.status == 200
        assert side.watch_head.headers["transfer-encoding"] == "chunked"
        assert side.watch_head.headers["content-type"] == "application/json"
        for chunk in side.watch:
            assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1, chunk
        created, put, delete = (json.loads(c) for c in side.watch)
        assert set(created) == {"result"} and set(created["result"]) == {"header", "created"}
        assert created["result"]["created"] is True
        assert [ev.get("type", "PUT") for ev in put["result"]["events"] + delete["result"]["events"]] == [
            "PUT", "DELETE"]
    for mine, theirs in zip(ours.watch, etcd.watch, strict=True):
        assert_same_shape(json.loads(theirs), json.loads(mine))


@needs_etcd
async def test_the_guide_examples_answer_as_real_etcd(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with real_etcd(tmp_path) as etcd:
            theirs = await run_script(etcd.endpoint)
        async with dengine_with_etcd(tmp_path, 1) as cluster:
            ours = await run_script(cluster.gateway[1])
            address = cluster.gateway[1]
            # Only dengine: the body limit (4 MiB) and an RPC it does not serve.
            with trio.fail_after(10):
                conn = await Conn.open(address)
                try:
                    await conn.stream.send_all(request("POST", "/v3/kv/put", length=4 * 1024 * 1024 + 1))
                    big = await conn.response()
                finally:
                    await conn.aclose()
            assert big.status == 413 and "limit of 4194304" in big.json()["error"]
            defrag = await call(address, "/v3/maintenance/defragment", {})
            assert (defrag.status, defrag.json()["code"]) == (501, 12)
            assert defrag.json()["message"].startswith("dengine: defragment")
            assert (await call(address, "/v3beta/kv/range", {"key": b64("x")})).status == 200
        assert_matches(theirs, ours)
        # The API level each announces (etcd3gw and Patroni pick /v3/ from it).
        assert (theirs.steps["version"].json()["etcdserver"].split(".")[:2],
                ours.steps["version"].json()) == (["3", "4"], {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"})


# -- etcd3gw -----------------------------------------------------------------------


async def blocking(fn: Callable[..., T], *args: Any, timeout: float = 15, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a thread, bounded (the thread is abandoned on timeout)."""
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), abandon_on_cancel=True)


def gw_client(address: str) -> Any:
    host, port = address.rsplit(":", 1)
    return etcd3gw.client(host=host, port=int(port), timeout=10)


async def _kv_lease_lock(client: Any) -> None:
    run = blocking
    assert await run(client.put, "/app/a", "1") is True
    assert await run(client.put, "/app/b", b"\x00\xff") is True
    assert await run(client.get, "/app/a") == [b"1"]
    assert await run(client.get, "/app/missing") == []
    prefix = await run(client.get_prefix, "/app/")
    assert [(v, m["key"]) for v, m in prefix] == [(b"1", b"/app/a"), (b"\x00\xff", b"/app/b")]
    assert prefix[0][1]["version"] == "1" and "lease" not in prefix[0][1]
    assert await run(client.delete, "/app/b") is True
    assert await run(client.delete, "/app/b") is False  # nothing deleted: "deleted" left out, as etcd
    # create and replace are transactions.
    assert await run(client.create, "/app/c", "x") is True
    assert await run(client.create, "/app/c", "y") is False
    assert await run(client.replace, "/app/c", "x", "z") is True
    assert await run(client.replace, "/app/c", "x", "w") is False
    assert await run(client.get, "/app/c") == [b"z"]
    assert await run(client.delete_prefix, "/app/") is True
    assert await run(client.get_prefix, "/app/") == []

    # Leases.
    lease = await run(client.lease, 30)
    assert lease.id > 0
    assert await run(client.put, "/lease/k1", "v", lease) is True
    assert await run(client.create, "/lease/k2", "v", lease) is True
    assert 28 <= await run(lease.ttl) <= 30
    assert await run(lease.refresh) == 30
    assert sorted(await run(lease.keys)) == [b"/lease/k1", b"/lease/k2"]
    (_, meta), _ = await run(client.get_prefix, "/lease/")
    assert int(meta["lease"]) == lease.id
    assert await run(lease.revoke) is True
    assert await run(client.get_prefix, "/lease/") == []
    assert await run(lease.ttl) == -1
    assert await run(lease.refresh) == -1  # gone: TTL left out
    with pytest.raises(etcd3gw.exceptions.Etcd3Exception) as caught:
        await run(lease.revoke)
    assert "etcdserver: requested lease not found" in caught.value.detail_text

    # Locks (a txn on /locks/<name> with a lease).
    first, second = client.lock("job", ttl=30), client.lock("job", ttl=30)
    assert await run(first.acquire) is True
    assert await run(first.is_acquired) is True
    assert await run(second.acquire) is False  # held: etcd3gw's acquire does not wait, it fails
    assert await run(second.is_acquired) is False
    assert await run(first.refresh) == 30
    assert await run(first.release) is True
    assert await run(first.is_acquired) is False
    assert await run(second.acquire) is True
    assert await run(first.release) is False  # not the holder
    assert await run(second.release) is True

    members = await run(client.members)
    assert len(members) == 1 and set(members[0]) >= {"ID", "name", "peerURLs", "clientURLs"}
    assert members[0]["clientURLs"] == [client.base_url]
    status = await run(client.status)
    assert {"header", "version", "dbSize", "leader", "raftIndex", "raftTerm"} <= set(status)
    assert status["leader"] == status["header"]["member_id"]


async def _watch(client: Any) -> None:
    run = blocking
    range_url = client.get_url("/kv/range")
    revision = int((await run(lambda: client.post(range_url, json={"key": b64("/w/")})))["header"]["revision"])
    # From the next revision: no event can slip in before the watch exists.
    events, cancel = await run(client.watch, "/w/key", start_revision=revision + 1)
    prefix_events, prefix_cancel = await run(client.watch_prefix, "/wp/", start_revision=revision + 1)
    try:
        await run(client.put, "/w/key", "v1")
        await run(client.put, "/wp/a", "x")
        await run(client.put, "/w/other", "ignored")
        await run(client.delete, "/w/key")
        await run(client.delete_prefix, "/wp/")
        put = await run(next, events)
        delete = await run(next, events)
        assert "type" not in put and (put["kv"]["key"], put["kv"]["value"], put["kv"]["version"]) == (
            b"/w/key", b"v1", "1")
        assert delete["type"] == "DELETE" and delete["kv"]["key"] == b"/w/key" and "value" not in delete["kv"]
        assert int(delete["kv"]["mod_revision"]) > int(put["kv"]["mod_revision"]) > revision
        prefix_put, prefix_delete = await run(next, prefix_events), await run(next, prefix_events)
        assert (prefix_put["kv"]["key"], prefix_put["kv"]["value"]) == (b"/wp/a", b"x")
        assert (prefix_delete.get("type"), prefix_delete["kv"]["key"]) == ("DELETE", b"/wp/a")
    finally:
        cancel()
        prefix_cancel()
    assert await run(list, events) == []  # cancelled: the iterator ends


@needs_etcd
@pytest.mark.parametrize("server", ["etcd", "dengine"])
async def test_etcd3gw_drives_the_gateway(tmp_path: pathlib.Path, server: str) -> None:
    """The same etcd3gw session against real etcd (to keep the test honest) and dengine."""
    with trio.fail_after(DEADLINE):
        if server == "etcd":
            async with real_etcd(tmp_path) as etcd:
                await _with_client(etcd.endpoint)
        else:
            async with dengine_with_etcd(tmp_path, 1) as cluster:
                await _with_client(cluster.gateway[1])


async def _with_client(address: str) -> None:
    client = gw_client(address)
    try:
        assert await blocking(lambda: client.api_path) == "/v3/"  # discovered through GET /version
        await _kv_lease_lock(client)
        await _watch(client)
    finally:
        client.session.close()


async def test_a_body_that_never_arrives_is_bounded(tmp_path: pathlib.Path) -> None:
    """With small timeouts (in-process): a stalled body is answered 408 and the connection closed."""
    import dengine
    from dengine.etcd.gateway import GatewayOptions, open_gateway
    from dengine.etcd.service import EtcdService

    options = GatewayOptions(head_timeout=0.5, body_timeout=0.5, idle_timeout=0.5)
    with trio.fail_after(DEADLINE):
        async with dengine.open_engine(tmp_path / "d") as engine:
            await engine.wait_ready(timeout=10)
            async with open_gateway(EtcdService(engine), "127.0.0.1:0", options=options) as gw:
                conn = await Conn.open(gw.address)
                try:
                    await conn.stream.send_all(request("POST", "/v3/kv/put", '{"key": "YQ=="', length=1000))
                    start = trio.current_time()
                    with trio.fail_after(5):
                        resp = await conn.response()
                        assert not await conn._fill()  # then closed
                    assert resp.status == 408 and resp.json()["message"] == (
                        "dengine: the request body did not arrive in time")
                    assert trio.current_time() - start < 3
                finally:
                    await conn.aclose()
