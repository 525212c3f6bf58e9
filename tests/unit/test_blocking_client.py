"""The blocking client without a real server: what ``import dengine`` and
``dengine.connect`` import, the public surface (every error class of
docs/errors.md importable from ``dengine``), and the retry rules over plain
sockets against fake servers that speak the real handshake.

Rules: 127.0.0.1 and port 0 only; each fake server is a thread serving a
bounded number of connections and is joined in a finally; every socket has
a timeout; no sleeps.
"""

from __future__ import annotations

import pathlib
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import dengine
from dengine.codec import unpack
from dengine.errors import NotLeader
from dengine.transport.client_protocol import encode_error, encode_response
from dengine.transport.framing import FrameDecoder, encode_frame
from dengine.transport.handshake import Welcome, decode_hello, encode_reply

ROOT = pathlib.Path(__file__).resolve().parents[2]
ERRORS_DOC = ROOT / "docs" / "errors.md"
ENGINE_MODULES = ("trio", "dengine.runtime", "dengine.server", "dengine.embedded", "dengine.storage",
                  "dengine.lifecycle", "dengine.watch")


def _imported_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    return [m for m in out if m.split(".")[0] == "trio" or m.startswith(ENGINE_MODULES)]


def test_import_dengine_and_connect_import_neither_trio_nor_the_engine() -> None:
    code = "import dengine\nc = dengine.connect('127.0.0.1:9081')\nc.close()\nimport dengine.cli"
    assert _imported_after(code) == []
    # ... and the rest of the API is still there on first use.
    assert "trio" in _imported_after("import dengine\ndengine.open_client")


def test_every_error_of_docs_errors_md_is_importable_from_dengine() -> None:
    names = re.findall(r"^\|\s*\d+\s*\|\s*`(\w+)`\s*\|\s*`(\w+)`", ERRORS_DOC.read_text(), re.M)
    assert len(names) >= 20, "the table of docs/errors.md was not found"
    for name, parent in names:
        cls = getattr(dengine, name)
        assert issubclass(cls, dengine.DengineError) and cls.__name__ == name
        assert issubclass(cls, getattr(dengine, parent)), (name, parent)
        assert name in dengine.__all__


def test_every_public_name_resolves() -> None:
    for name in dengine.__all__:
        assert getattr(dengine, name) is not None, name
    assert dengine.connect is dengine.client.connect
    with pytest.raises(AttributeError):
        dengine.no_such_name  # noqa: B018


# -- fake servers ----------------------------------------------------------------------

Reply = Callable[[int, str, dict[str, Any]], bytes | None]


@contextmanager
def fake_server(node_id: int, reply: Reply, *, connections: int = 4) -> Iterator[str]:
    """A server that welcomes as ``node_id`` and answers each request with
    ``reply(rid, op, args)`` (a response body, or None: no answer)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    endpoint = "127.0.0.1:%d" % listener.getsockname()[1]

    def serve() -> None:
        for _ in range(connections):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                decoder = FrameDecoder()
                try:
                    hello = decode_hello(decoder.feed(conn.recv(1 << 16), limit=1)[0])
                    assert hello.kind == "client"
                    conn.sendall(encode_frame(encode_reply(Welcome(node_id))))
                    for _ in range(100):
                        data = conn.recv(1 << 16)
                        if not data:
                            break
                        for body in decoder.feed(data):
                            rid, op, args = unpack(body)
                            answer = reply(rid, op, args)
                            if answer is not None:
                                conn.sendall(encode_frame(answer))
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        listener.close()
        thread.join(timeout=15)
        assert not thread.is_alive()


def test_a_not_leader_hint_is_followed_to_the_leader() -> None:
    def leader(rid: int, op: str, args: dict[str, Any]) -> bytes:
        return encode_response(rid, "ok", {"revision": 7})

    with fake_server(2, leader) as leader_ep:
        def follower(rid: int, op: str, args: dict[str, Any]) -> bytes:
            return encode_response(rid, "error", encode_error(NotLeader("not me", leader_id=2),
                                                              leader_address=leader_ep))

        with fake_server(1, follower) as follower_ep, dengine.connect(follower_ep, timeout=5) as client:
            assert client.put(b"k", b"v") == 7
            assert client.endpoints == [follower_ep, leader_ep]
            assert client.endpoint_of(2) == leader_ep


def test_a_write_sent_and_never_answered_may_or_may_not_have_been_applied() -> None:
    def silent(rid: int, op: str, args: dict[str, Any]) -> None:
        assert op != "put" or args["timeout_ms"] <= 1000
        return None

    with fake_server(1, silent) as ep, dengine.connect(ep, timeout=1) as client:
        with pytest.raises(dengine.Timeout) as info:
            client.put(b"k", b"v")
    assert str(info.value) == (
        f"put did not complete within 1 s; it may or may not have been applied: last seen: {ep}: no answer in time"
    )


def test_a_refused_endpoint_is_left_for_the_next() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    dead = "127.0.0.1:%d" % closed.getsockname()[1]
    closed.close()

    def ok(rid: int, op: str, args: dict[str, Any]) -> bytes:
        return encode_response(rid, "ok", {"value": b"v", "revision": 3})

    with fake_server(5, ok) as ep, dengine.connect([dead, ep], timeout=5) as client:
        assert client.get(b"k") == b"v"
    with dengine.connect(dead, timeout=0.5) as client, pytest.raises(dengine.Timeout) as info:
        client.get(b"k")
    assert f"{dead}: connection refused" in str(info.value)
