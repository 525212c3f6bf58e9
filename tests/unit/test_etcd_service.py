"""dengine.etcd.service on a single in-process engine: the etcd semantics a
client can notice that etcdctl, the gateway clients and Patroni do not
reach -- watch ids, filters, cancel and progress requests, fragments, a
compacted start, an overflowing watcher, reads at an older revision, puts
that keep the value or the lease. Every test under an absolute fail_after."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import dengine
from dengine.config.settings import RaftSettings, WatchSettings
from dengine.etcd import service as service_module
from dengine.etcd.schema import MESSAGES as M
from dengine.etcd.service import EtcdError, EtcdService, etcd_error

DEADLINE = 20


@asynccontextmanager
async def etcd_service(tmp_path: pathlib.Path, **watch: Any) -> AsyncIterator[EtcdService]:
    raft = RaftSettings(tick_interval_ms=10, watch=WatchSettings(**watch)) if watch else RaftSettings(
        tick_interval_ms=10)
    async with dengine.open_engine(config=dengine.Config.single_node(str(tmp_path / "d"), raft=raft)) as engine:
        await engine.wait_ready(timeout=10)
        yield EtcdService(engine)


class Stream:
    """One Watch stream: requests in, responses collected."""

    def __init__(self, service: EtcdService) -> None:
        self.service = service
        self.send_req, self._recv_req = trio.open_memory_channel[Any](16)
        self.responses: list[Any] = []
        self._changed = trio.Event()
        #: While set, responses wait (a client that does not read).
        self.hold: trio.Event | None = None

    async def _collect(self, response: Any) -> None:
        if self.hold is not None:
            await self.hold.wait()
        self.responses.append(response)
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.service.watch(self._recv_req, self._collect)

    async def create(self, **fields: Any) -> None:
        await self.send_req.send(M["WatchRequest"](create_request=M["WatchCreateRequest"](**fields)))

    async def until(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        while not predicate(self.responses):
            await self._changed.wait()
        return self.responses


@asynccontextmanager
async def watch_stream(service: EtcdService) -> AsyncIterator[Stream]:
    stream = Stream(service)
    async with trio.open_nursery() as nursery:
        await nursery.start(stream.run)
        yield stream
        nursery.cancel_scope.cancel()


def events_of(responses: list[Any], wid: int) -> list[tuple[int, bytes, bytes]]:
    return [(e.type, e.kv.key, e.kv.value) for r in responses if r.watch_id == wid for e in r.events]


async def put(service: EtcdService, key: bytes, value: bytes, **fields: Any) -> Any:
    return await service.put(M["PutRequest"](key=key, value=value, **fields))


async def test_watch_ids_filters_progress_and_cancel(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as svc, watch_stream(svc) as w:
            await w.create(key=b"ab", range_end=b"ac")  # an etcd prefix with no slash: a range watch
            await w.create(key=b"ab", range_end=b"ac", watch_id=7, filters=[0])  # NOPUT: deletes only
            await w.create(key=b"x", watch_id=7)  # the id is taken
            created = await w.until(lambda rs: len(rs) >= 3)
            assert [(r.watch_id, r.created, r.canceled) for r in created[:3]] == [
                (0, True, False), (7, True, False), (7, True, True)]
            assert created[2].cancel_reason == "etcdserver: duplicate watch ID"
            await put(svc, b"abc", b"1")
            await put(svc, b"ad", b"no")  # outside [ab, ac)
            await svc.delete_range(M["DeleteRangeRequest"](key=b"abc"))
            await w.until(lambda rs: len(events_of(rs, 0)) >= 2 and len(events_of(rs, 7)) >= 1)
            assert events_of(w.responses, 0) == [(0, b"abc", b"1"), (1, b"abc", b"")]
            assert events_of(w.responses, 7) == [(1, b"abc", b"")]
            # A progress request is answered for the whole stream (watch id -1), at the current revision.
            await w.send_req.send(M["WatchRequest"](progress_request=M["WatchProgressRequest"]()))
            progress = (await w.until(lambda rs: any(r.watch_id == -1 for r in rs)))[-1]
            assert progress.watch_id == -1 and progress.header.revision == svc.engine.status().applied_index
            # Cancel watch 0: it says so, and gets nothing more.
            await w.send_req.send(M["WatchRequest"](cancel_request=M["WatchCancelRequest"](watch_id=0)))
            await w.until(lambda rs: any(r.watch_id == 0 and r.canceled for r in rs))
            await put(svc, b"abd", b"2")
            await svc.delete_range(M["DeleteRangeRequest"](key=b"abd"))
            await w.until(lambda rs: len(events_of(rs, 7)) >= 2)
            assert events_of(w.responses, 0) == [(0, b"abc", b"1"), (1, b"abc", b"")]


async def test_prev_kv_carries_the_key_as_it_was(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as svc, watch_stream(svc) as w:
            lease = await svc.lease_grant(M["LeaseGrantRequest"](TTL=60))
            first = await put(svc, b"/k", b"v1", lease=lease.ID)
            await w.create(key=b"/k", prev_kv=True)
            await w.until(lambda rs: len(rs) >= 1)
            second = await put(svc, b"/k", b"v2")
            (resp,) = [r for r in await w.until(lambda rs: len(rs) >= 2) if r.events]
            (event,) = resp.events
            assert (event.kv.value, event.kv.mod_revision, event.kv.version) == (b"v2", second.header.revision, 2)
            prev = event.prev_kv
            assert (prev.value, prev.mod_revision, prev.create_revision, prev.version, prev.lease) == (
                b"v1", first.header.revision, first.header.revision, 1, lease.ID)


async def test_a_start_older_than_the_history_is_compacted(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path, history_size=4) as svc, watch_stream(svc) as w:
            revisions = [(await put(svc, b"/h/%d" % i, b"x")).header.revision for i in range(10)]
            await w.create(key=b"/h/", range_end=b"/h0", start_revision=revisions[0])
            await w.create(key=b"/h/", range_end=b"/h0", start_revision=revisions[-1], watch_id=5)
            responses = await w.until(lambda rs: any(r.canceled for r in rs) and any(r.events for r in rs))
            # As etcd: created first, then canceled with the compact revision.
            (created, gone) = [r for r in responses if r.watch_id == 0]
            assert created.created and not created.canceled
            floor = svc.engine._node.watch.first_retained_revision
            assert gone.canceled and gone.compact_revision == floor > revisions[0]
            assert gone.cancel_reason == "etcdserver: mvcc: required revision has been compacted"
            kept = next(r for r in responses if r.watch_id == 5)
            assert kept.created and not kept.canceled
            assert events_of(w.responses, 5) == [(0, b"/h/9", b"x")]  # replayed from the history
            # A read at an older revision: answered while nothing in its range changed since, else compacted.
            old = await svc.range(M["RangeRequest"](key=b"/h/0", revision=revisions[5]))
            # (the header names the store's revision now, as etcd's does)
            assert [kv.key for kv in old.kvs] == [b"/h/0"] and old.header.revision >= revisions[-1]
            with pytest.raises(EtcdError, match="compacted"):
                await svc.range(M["RangeRequest"](key=b"/h/", range_end=b"/h0", revision=revisions[5]))
            with pytest.raises(EtcdError, match="future revision"):
                await svc.range(M["RangeRequest"](key=b"/h/0", revision=revisions[-1] + 100))


async def test_large_batches_come_in_fragments_when_asked(tmp_path: pathlib.Path) -> None:
    big = b"v" * 400_000
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as svc, watch_stream(svc) as w:
            await w.create(key=b"/f/", range_end=b"/f0", fragment=True, watch_id=1)
            await w.create(key=b"/f/", range_end=b"/f0", watch_id=2)
            await w.until(lambda rs: len(rs) >= 2)
            ops = [M["RequestOp"](request_put=M["PutRequest"](key=b"/f/%d" % i, value=big)) for i in range(4)]
            result = await svc.txn(M["TxnRequest"](success=ops))
            assert result.succeeded
            await w.until(lambda rs: len(events_of(rs, 1)) >= 4 and len(events_of(rs, 2)) >= 4)
            parts = [r for r in w.responses if r.watch_id == 1 and r.events]
            assert len(parts) >= 2 and all(p.fragment for p in parts[:-1]) and not parts[-1].fragment
            assert all(p.ByteSize() < service_module.FRAGMENT_BYTES + len(big) + 1000 for p in parts)
            whole = [r for r in w.responses if r.watch_id == 2 and r.events]
            assert len(whole) == 1 and not whole[0].fragment and len(whole[0].events) == 4


async def test_a_watcher_that_falls_behind_is_canceled_with_where_to_resume(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path, watcher_buffer_size=4) as svc, watch_stream(svc) as w:
            await w.create(key=b"/o/", range_end=b"/o0")
            await w.until(lambda rs: len(rs) >= 1)
            w.hold = trio.Event()  # the client stops reading
            for i in range(30):
                await put(svc, b"/o/%d" % i, b"x")
            w.hold.set()
            (last,) = [r for r in await w.until(lambda rs: any(r.canceled for r in rs)) if r.canceled]
            delivered = events_of(w.responses, 0)
            assert 0 < len(delivered) < 30
            assert last.cancel_reason.startswith("dengine: the watcher fell behind")
            resume = int(last.cancel_reason.rsplit(" ", 1)[1])
            # Nothing was skipped silently: resuming from the revision named gets every later change.
            async with watch_stream(svc) as again:
                await again.create(key=b"/o/", range_end=b"/o0", start_revision=resume)
                await again.until(lambda rs: len(events_of(rs, 0)) >= 30 - len(delivered))
                keys = [k for _, k, _ in delivered] + [k for _, k, _ in events_of(again.responses, 0)]
                assert keys == [b"/o/%d" % i for i in range(30)]


async def test_at_most_so_many_watches_per_stream(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MAX_WATCHES_PER_STREAM", 2)
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as svc, watch_stream(svc) as w:
            for i in range(3):
                await w.create(key=b"/m/%d" % i)
            third = (await w.until(lambda rs: len(rs) >= 3))[2]
            assert third.canceled and "at most 2 watches per stream" in third.cancel_reason


async def test_puts_that_keep_the_value_or_the_lease(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as svc:
            lease = await svc.lease_grant(M["LeaseGrantRequest"](TTL=60))
            await put(svc, b"/i", b"v1", lease=lease.ID)
            kept = await put(svc, b"/i", b"v2", ignore_lease=True, prev_kv=True)
            assert kept.prev_kv.value == b"v1"
            (kv,) = (await svc.range(M["RangeRequest"](key=b"/i"))).kvs
            assert (kv.value, kv.lease) == (b"v2", lease.ID)
            await put(svc, b"/i", b"", ignore_value=True)  # drops the lease, keeps the value
            (kv,) = (await svc.range(M["RangeRequest"](key=b"/i"))).kvs
            assert (kv.value, kv.lease) == (b"v2", 0)
            for fields, message in (({"key": b"/none", "ignore_value": True}, "key not found"),
                                    ({"key": b"/i", "value": b"x", "ignore_value": True}, "value is provided"),
                                    ({"key": b"/i", "lease": lease.ID, "ignore_lease": True}, "lease is provided"),
                                    ({"key": b""}, "key is not provided")):
                with pytest.raises(EtcdError, match=message) as info:
                    await svc.put(M["PutRequest"](**fields))
                assert info.value.code == "INVALID_ARGUMENT"


async def test_lease_ttls_as_etcd_gives_them(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as svc:
            floor = svc.engine.min_lease_ttl_ms / 1000
            for asked in (0, -5, 1):
                granted = await svc.lease_grant(M["LeaseGrantRequest"](TTL=asked))
                assert granted.TTL == max(1, int(-(-floor // 1)))  # the minimum, in whole seconds
            with pytest.raises(EtcdError, match="too large lease TTL"):
                await svc.lease_grant(M["LeaseGrantRequest"](TTL=10**12))
            gone = await svc.lease_time_to_live(M["LeaseTimeToLiveRequest"](ID=12345))
            assert gone.TTL == -1
            renewed = await svc.lease_keep_alive_once(M["LeaseKeepAliveRequest"](ID=12345))
            assert renewed.TTL == 0



async def test_txn_limits_answer_as_etcd(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as svc:
            many = [M["RequestOp"](request_put=M["PutRequest"](key=b"/t/%d" % i, value=b"v")) for i in range(200)]
            # The faces turn what the service raises into etcd's answer with etcd_error.
            with pytest.raises(dengine.InvalidArgument) as info:
                await svc.txn(M["TxnRequest"](success=many))
            answer = etcd_error(info.value)
            assert (answer.code, answer.message) == ("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
            twice = [M["RequestOp"](request_put=M["PutRequest"](key=b"/t/k", value=v)) for v in (b"1", b"2")]
            with pytest.raises(dengine.InvalidArgument) as info:
                await svc.txn(M["TxnRequest"](success=twice))
            assert etcd_error(info.value).message == "etcdserver: duplicate key given in txn request"


async def test_member_urls_forget_a_removed_member(tmp_path: pathlib.Path) -> None:
    """The etcd face caches the other members' announced URLs; a removed
    member's entry goes with it (the cache holds the members there are)."""
    from dengine.etcd.server import EtcdApi

    asked: list[str] = []

    class Forward:  # stands in for the forwarding client: what each member announces
        async def status(self, *, endpoint: str, timeout: float) -> Any:
            asked.append(endpoint)
            return type("Status", (), {"etcd_urls": {"grpc": [f"http://{endpoint}-grpc"], "gateway": []}})()

    with trio.fail_after(DEADLINE):
        async with etcd_service(tmp_path) as service:
            engine = service.engine
            api = EtcdApi(engine=engine, forward=Forward())
            await engine.add_member("127.0.0.1:1", node_id=2, client_address="127.0.0.1:2")
            await engine.add_member("127.0.0.1:3", node_id=3, client_address="127.0.0.1:4")
            want = {2: ["http://127.0.0.1:2-grpc"], 3: ["http://127.0.0.1:4-grpc"]}
            assert await api.urls_of("grpc") == want
            assert await api.urls_of("grpc") == want and sorted(asked) == ["127.0.0.1:2", "127.0.0.1:4"]  # cached
            await engine.remove_member(2)
            assert await api.urls_of("grpc") == {3: ["http://127.0.0.1:4-grpc"]}
            assert set(api.member_urls) == {3} and len(asked) == 2
