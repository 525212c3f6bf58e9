"""ONE KV suite run against the embedded client and the remote client.

The fixture ``kv`` yields either ``engine.client`` of a single-node engine
or a ``dengine.open_client`` connected to a single-node ``open_server`` on
127.0.0.1 (port 0). Every test runs under an absolute ``fail_after``; the
two clients must give the same answers and raise the same exceptions.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

import dengine
from dengine import Config, InvalidArgument, ReadConsistency, WatchEventType

DEADLINE = 20


def _config(tmp_path: pathlib.Path) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"), client_address="127.0.0.1:0")
    return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))


@pytest.fixture(params=["embedded", "remote"])
async def kv(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Any]:
    with trio.fail_after(DEADLINE):
        if request.param == "embedded":
            async with dengine.open_engine(config=_config(tmp_path)) as engine:
                await engine.wait_ready(timeout=5)
                yield engine.client
        else:
            async with dengine.open_server(_config(tmp_path)) as server:
                await server.wait_ready(timeout=5)
                async with dengine.open_client([server.client_address], timeout=5) as client:
                    yield client


async def test_put_get_roundtrip(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        rev1 = await kv.put(b"/config/timeout", b"30")
        rev2 = await kv.put(b"/config/retries", b"3")
        assert rev2 > rev1 > 0
        assert await kv.get(b"/config/timeout") == b"30"
        assert await kv.get(b"/missing") is None
        kvv = await kv.get_kv(b"/config/retries")
        assert kvv == dengine.KeyValue(b"/config/retries", b"3", rev2, create_revision=rev2, version=1)
        rev3 = await kv.put(b"/config/retries", b"4")
        assert await kv.get_kv(b"/config/retries") == dengine.KeyValue(
            b"/config/retries", b"4", rev3, create_revision=rev2, version=2)
        assert await kv.get_kv(b"/missing") is None


async def test_empty_value_is_not_missing(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        await kv.put(b"empty", b"")
        assert await kv.get(b"empty") == b""


@pytest.mark.parametrize("consistency", [None, *ReadConsistency, "lease", "EVENTUAL"])
async def test_every_read_consistency(kv: Any, consistency: Any) -> None:
    with trio.fail_after(DEADLINE):
        await kv.put(b"a", b"1")
        assert await kv.get(b"a", consistency=consistency) == b"1"
        assert await kv.get_many([b"a", b"b"], consistency=consistency) == [b"1", None]
        scan = await kv.scan_prefix(b"", consistency=consistency)
        assert [tuple(e) for e in scan.entries] == [(b"a", b"1")]


async def test_get_many_and_scan(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        for i in range(5):
            await kv.put(b"/s/%d" % i, b"v%d" % i)
        await kv.put(b"/t/x", b"other")
        assert await kv.get_many([b"/s/3", b"/nope", b"/s/0"]) == [b"v3", None, b"v0"]
        assert await kv.get_many([]) == []
        scan = await kv.scan_prefix(b"/s/")
        assert [tuple(e) for e in scan.entries] == [(b"/s/%d" % i, b"v%d" % i) for i in range(5)]
        assert scan.revision >= 6
        assert [tuple(e) for e in (await kv.scan_prefix(b"/zzz/")).entries] == []
        assert (scan.more, scan.count) == (False, 5)


async def test_scans_page_count_and_take_ranges(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        for i in range(5):
            await kv.put(b"/p/%d" % i, b"v%d" % i)
        page = await kv.scan_prefix(b"/p/", limit=2)
        assert [tuple(e) for e in page.entries] == [(b"/p/0", b"v0"), (b"/p/1", b"v1")] and (page.more, page.count) == (True, 5)
        # The next page starts just after the last key seen.
        rest = await kv.scan_range(page.entries[-1][0] + b"\0", b"/p0", limit=10)
        assert [k for k, _ in rest.entries] == [b"/p/2", b"/p/3", b"/p/4"] and not rest.more
        keys = await kv.scan_prefix(b"/p/", keys_only=True)
        assert [tuple(e) for e in keys.entries] == [(b"/p/%d" % i, b"") for i in range(5)]
        counted = await kv.scan_prefix(b"/p/", count_only=True)
        assert (counted.entries, counted.count, counted.more) == ([], 5, False)
        middle = await kv.scan_range(b"/p/1", b"/p/3")
        assert [k for k, _ in middle.entries] == [b"/p/1", b"/p/2"] and middle.count == 2
        tail = await kv.scan_range(b"/p/3")  # no end: to the last key
        assert [k for k, _ in tail.entries] == [b"/p/3", b"/p/4"]


async def test_delete(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        await kv.put(b"k", b"v")
        assert await kv.delete(b"k") is True
        assert await kv.delete(b"k") is False
        assert await kv.get(b"k") is None


async def test_compare_and_swap(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        assert await kv.compare_and_swap(b"lock", expected=None, new=b"me") is True
        assert await kv.compare_and_swap(b"lock", expected=None, new=b"you") is False
        assert await kv.compare_and_swap(b"lock", expected=b"you", new=b"x") is False
        assert await kv.compare_and_swap(b"lock", expected=b"me", new=b"you") is True
        assert await kv.get(b"lock") == b"you"


async def test_ttl_expires(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        await kv.put(b"session", b"alive", ttl=0.2)
        await kv.put(b"forever", b"yes")
        assert await kv.get(b"session") == b"alive"
        # Expiry is decided by the log; wait for the DELETE on a watch
        # rather than sleeping.
        async with kv.open_watch(b"session") as watch:
            if await kv.get(b"session") is not None:
                async for event in watch:
                    if event.type == WatchEventType.DELETE:
                        break
        assert await kv.get(b"session") is None
        assert await kv.get(b"forever") == b"yes"
        assert await kv.compare_and_swap(b"ttl-cas", expected=None, new=b"1", ttl=30) is True


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda kv: kv.put("str-key", b"v"), "key must be bytes"),
        (lambda kv: kv.put(b"", b"v"), "key must not be empty"),
        (lambda kv: kv.put(b"k", "v"), "value must be bytes"),
        (lambda kv: kv.put(b"k", b"v", ttl=-1), "ttl must be greater than 0"),
        (lambda kv: kv.put(b"k", b"v", ttl=True), "ttl must be a number"),
        (lambda kv: kv.put(b"k" * 5000, b"v"), "larger than the limit"),
        (lambda kv: kv.get(b"k", consistency="strong"), "invalid read consistency"),
        (lambda kv: kv.get(b"k", timeout=-1), "timeout must be a positive number"),
        (lambda kv: kv.get_many(b"k"), "keys must be a list"),
        (lambda kv: kv.get_many([b"a", 3]), "key must be bytes"),
        (lambda kv: kv.scan_prefix("s"), "scan prefix must be bytes"),
        (lambda kv: kv.scan_prefix(b"/s/", limit=0), "limit must be a positive integer"),
        (lambda kv: kv.scan_range(b"b", b"a"), "must come after start"),
        (lambda kv: kv.scan_range("a"), "range start must be bytes"),
        (lambda kv: kv.compare_and_swap(b"k", expected="x", new=b"y"), "value must be bytes"),
        (lambda kv: kv.delete(b""), "key must not be empty"),
    ],
)
async def test_invalid_arguments(kv: Any, call: Any, needle: str) -> None:
    with trio.fail_after(DEADLINE):
        with pytest.raises(InvalidArgument, match=needle):
            await call(kv)


async def test_watch_key_and_prefix(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        async with kv.open_watch(b"/svc/", prefix=True, prev_kv=True) as watch:
            async with kv.open_watch(b"/svc/a") as exact:
                r1 = await kv.put(b"/svc/a", b"1")
                r2 = await kv.put(b"/svc/b", b"2")
                r3 = await kv.put(b"/svc/a", b"3")
                r4 = await kv.put(b"/other", b"x")
                r5 = await kv.delete(b"/svc/a")
                assert r5 is True
                seen = [await watch.receive() for _ in range(4)]
                got = [(e.type, e.key, e.value, e.prev_value) for e in seen]
                assert got == [
                    (WatchEventType.PUT, b"/svc/a", b"1", None),
                    (WatchEventType.PUT, b"/svc/b", b"2", None),
                    (WatchEventType.PUT, b"/svc/a", b"3", b"1"),
                    (WatchEventType.DELETE, b"/svc/a", b"", b"3"),
                ]
                assert [e.revision for e in seen[:3]] == [r1, r2, r3]
                assert seen[3].revision > r4
                ex = [await exact.receive() for _ in range(3)]
                assert [(e.type, e.value, e.prev_value) for e in ex] == [
                    (WatchEventType.PUT, b"1", None),
                    (WatchEventType.PUT, b"3", None),
                    (WatchEventType.DELETE, b"", None),
                ]


async def test_watch_start_revision_replays(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        first = await kv.put(b"/h/a", b"1")
        await kv.put(b"/h/b", b"2")
        async with kv.open_watch(b"/h/", prefix=True, start_revision=first) as watch:
            await kv.put(b"/h/c", b"3")
            got = [(await watch.receive()).key for _ in range(3)]
        assert got == [b"/h/a", b"/h/b", b"/h/c"]


async def test_watch_bad_arguments(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        with pytest.raises(InvalidArgument, match="start and end with"):
            async with kv.open_watch(b"/no-slash", prefix=True):
                pass
        with pytest.raises(InvalidArgument, match="start_revision"):
            async with kv.open_watch(b"k", start_revision=0):
                pass
