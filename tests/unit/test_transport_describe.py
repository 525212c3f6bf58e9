"""dengine.transport.describe: how log lines name a failure and a remote end.

Rules: localhost only, port 0, an absolute fail_after on every IO test.
"""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

from dengine.errors import WrongCluster
from dengine.server import service
from dengine.transport import describe, peer
from dengine.transport.describe import UNKNOWN_REMOTE, describe_error, remote_name

TEST_TIMEOUT = 10


def _broken_by(cause: BaseException) -> trio.BrokenResourceError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise trio.BrokenResourceError from exc
    except trio.BrokenResourceError as broken:
        return broken


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (trio.TooSlowError(), "timed out"),
        (ConnectionResetError(104, "Connection reset by peer"), "ConnectionResetError: [Errno 104] Connection reset by peer"),
        (trio.ClosedResourceError(), "ClosedResourceError"),
        (trio.BrokenResourceError(), "BrokenResourceError"),
        (_broken_by(ConnectionResetError(104, "reset")), "BrokenResourceError: broken (ConnectionResetError: [Errno 104] reset)"),
        (_broken_by(ssl.SSLError(1, "wrong version number")), "BrokenResourceError: broken (SSLError: wrong version number)"),
        (WrongCluster("cluster id 'b' does not match 'a'"), "WrongCluster: cluster id 'b' does not match 'a'"),
    ],
)
def test_describe_error(exc: BaseException, text: str) -> None:
    assert describe_error(exc) == text


def test_a_cause_is_named_only_for_a_broken_stream() -> None:
    try:
        try:
            raise OSError("underneath")
        except OSError as inner:
            raise ValueError("on top") from inner
    except ValueError as exc:
        assert describe_error(exc) == "ValueError: on top"


async def test_remote_name_of_a_tcp_stream() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with listeners[0], await trio.open_tcp_stream("127.0.0.1", port) as client:
            async with await listeners[0].accept() as server_side:
                local_port = client.socket.getsockname()[1]
                assert remote_name(server_side) == f"127.0.0.1:{local_port}"
                assert remote_name(client) == f"127.0.0.1:{port}"
                # through TLS, the socket underneath is named
                wrapped = trio.SSLStream(client, ssl.create_default_context(), server_hostname="localhost")
                assert remote_name(wrapped) == f"127.0.0.1:{port}"


async def test_remote_name_of_an_ipv6_stream() -> None:
    # IPv6 peers give (host, port, flowinfo, scope_id): named in brackets. A
    # socket stand-in, so the test needs no IPv6 loopback on the machine.
    class _V6Socket:
        def getpeername(self) -> tuple[str, int, int, int]:
            return ("::1", 7001, 0, 0)

    stream = object.__new__(trio.SocketStream)
    stream.socket = _V6Socket()  # type: ignore[assignment]
    assert remote_name(stream) == "[::1]:7001"


async def test_remote_name_without_an_address() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.testing.memory_stream_pair()
        assert remote_name(left) == UNKNOWN_REMOTE == "an unknown address"
        a, b = trio.socket.socketpair()  # Unix sockets have a path, not host:port
        with a, b:
            assert remote_name(trio.SocketStream(a)) == UNKNOWN_REMOTE
        # a socket that is not connected has no peer name
        s = trio.socket.socket()
        with s:
            assert remote_name(trio.SocketStream(s)) == UNKNOWN_REMOTE


def test_one_of_each() -> None:
    for module in (peer, service):
        assert module.describe_error is describe.describe_error
        assert module.remote_name is describe.remote_name
        assert not hasattr(module, "_describe") and not hasattr(module, "_remote_name")
