"""The client connection's batching, over an in-memory lockstep stream.

Rules: every test under an absolute fail_after; no sockets, no sleeps: the
"server" side is the other end of ``trio.testing.lockstep_stream_pair``,
whose ``send_all`` returns only once the peer has received everything, so
which frames were written is exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from dengine.client._connection import Connection, ConnectionLost, Expired
from dengine.codec import pack, unpack
from dengine.transport.framing import FrameDecoder, encode_frames

DEADLINE = 10


class FakeServer:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def receive_requests(self) -> list[Any]:
        """The requests of ONE receive."""
        data = await self.stream.receive_some(1 << 20)
        return [unpack(body) for body in self.decoder.feed(data)]

    async def reply(self, requests: list[Any]) -> None:
        await self.stream.send_all(encode_frames([pack([r[0], "ok", {"n": r[2]["n"]}]) for r in requests]))


@asynccontextmanager
async def _connection() -> AsyncIterator[tuple[Connection, FakeServer, trio.Nursery]]:
    client_end, server_end = trio.testing.lockstep_stream_pair()
    conn = Connection("test:1", client_end, node_id=1, max_frame_size=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        yield conn, FakeServer(server_end), nursery
        conn.close()


async def test_concurrent_requests_go_out_in_one_write_and_each_gets_its_answer() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            results: dict[int, Any] = {}

            async def call(n: int) -> None:
                results[n] = (await conn.request("get", {"n": n}))["n"]

            for n in range(50):
                nursery.start_soon(call, n)
            requests = await server.receive_requests()
            assert sorted(r[2]["n"] for r in requests) == list(range(50))  # one send_all
            await server.reply(list(reversed(requests)))  # any order
            await trio.testing.wait_all_tasks_blocked()
            assert results == {n: n for n in range(50)}


async def test_a_caller_that_gives_up_before_its_frame_is_written_is_never_sent() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            first = trio.Event()

            async def call(n: int, scope: trio.CancelScope | None = None) -> None:
                if scope is None:
                    await conn.request("get", {"n": n})
                    first.set()
                    return
                with scope:
                    await conn.request("get", {"n": n})

            nursery.start_soon(call, 1)
            await trio.testing.wait_all_tasks_blocked()  # the writer is blocked writing request 1
            given_up = trio.CancelScope()
            nursery.start_soon(call, 2, given_up)
            await trio.testing.wait_all_tasks_blocked()
            given_up.cancel()  # its frame is still queued
            await trio.testing.wait_all_tasks_blocked()
            requests = await server.receive_requests()
            assert [r[2]["n"] for r in requests] == [1]
            await server.reply(requests)
            await first.wait()
            nursery.start_soon(call, 3)
            requests = await server.receive_requests()
            assert [r[2]["n"] for r in requests] == [3]  # 2 was never written
            await server.reply(requests)


async def test_connection_lost_says_which_requests_may_have_been_sent() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            outcomes: dict[int, bool] = {}

            async def call(n: int) -> None:
                with pytest.raises(ConnectionLost) as info:
                    await conn.request("put", {"n": n})
                outcomes[n] = info.value.sent

            nursery.start_soon(call, 1)
            assert [r[2]["n"] for r in await server.receive_requests()] == [1]  # written in full
            nursery.start_soon(call, 2)
            await trio.testing.wait_all_tasks_blocked()  # 2: being written, the server reads nothing
            nursery.start_soon(call, 3)
            await trio.testing.wait_all_tasks_blocked()  # 3: queued behind it
            await server.stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == {1: True, 2: False, 3: False}
            assert conn.closed
            with pytest.raises(ConnectionLost) as info:
                await conn.request("get", {"n": 4})
            assert info.value.sent is False


async def test_closing_a_stream_queues_its_cancel() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            stream = await conn.open_stream("watch", {"n": 0}, limit=4)
            [request] = await server.receive_requests()
            assert request[1] == "watch" and request[0] == stream.request_id
            await stream.aclose()
            [cancel] = await server.receive_requests()
            assert cancel[1] == "cancel" and cancel[2] == {"request_id": stream.request_id}


async def test_deadlines_expire_without_a_scope_per_call(autojump_clock: trio.testing.MockClock) -> None:
    """The connection's timer wakes a caller whose deadline passed: one still
    queued is never written (sent=False), one written may have been (sent=True)."""
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            outcomes: dict[int, bool] = {}

            async def call(n: int, after: float) -> None:
                with pytest.raises(Expired) as info:
                    await conn.request("put", {"n": n}, deadline=trio.current_time() + after)
                outcomes[n] = info.value.sent

            nursery.start_soon(call, 1, 2.0)
            await trio.testing.wait_all_tasks_blocked()  # 1 is being written: the server reads nothing yet
            nursery.start_soon(call, 2, 1.0)
            await trio.sleep(1.5)  # the mock clock jumps: 2 expires while queued
            assert outcomes == {2: False}
            assert [r[2]["n"] for r in await server.receive_requests()] == [1]
            await trio.sleep(1.0)  # 1 expires, written, unanswered
            assert outcomes == {2: False, 1: True}
            assert not conn._pending
            result = await _answered(conn, server, nursery)
            assert result == 3  # the connection still works


async def _answered(conn: Connection, server: FakeServer, nursery: trio.Nursery) -> Any:
    results: list[Any] = []

    async def call() -> None:
        results.append((await conn.request("get", {"n": 3}, deadline=trio.current_time() + 5))["n"])

    nursery.start_soon(call)
    requests = await server.receive_requests()
    assert [r[2]["n"] for r in requests] == [3]  # 2 was never written
    await server.reply(requests)
    await trio.testing.wait_all_tasks_blocked()
    return results[0]
