"""The client endpoint's per-connection batching: many requests in one
receive, dispatched in one pass, under the in-flight and send-queue limits.

Rules: 127.0.0.1 and port 0 only; every test under an absolute fail_after;
no sleeps standing in for synchronisation.
"""

from __future__ import annotations

import pathlib

import attrs
import trio

import dengine
from dengine import Config
from dengine.codec import pack, unpack
from dengine.server import ServiceOptions
from dengine.transport.framing import FrameDecoder, encode_frame, encode_frames, receive_frame
from dengine.transport.handshake import Hello, encode_hello

DEADLINE = 30


def _config(tmp_path: pathlib.Path) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"), client_address="127.0.0.1:0")
    return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))


async def test_pipelined_requests_over_the_limits_are_each_answered_once(tmp_path: pathlib.Path) -> None:
    """300 requests written at once (puts, inline ops, reads) to a server that
    takes 4 in flight and queues 8 responses: every one is answered exactly
    once, and every put is applied."""
    options = ServiceOptions(max_inflight=4, send_queue_size=8, write_timeout=5.0)
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_config(tmp_path), options=options) as srv:
            await srv.wait_ready(timeout=5)
            host, port = srv.client_address.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            decoder = FrameDecoder()
            hello = Hello(protocol_version=1, cluster_id="dengine", node_id=None, kind="client")
            await stream.send_all(encode_frame(encode_hello(hello)))
            assert unpack(await receive_frame(stream, decoder))[:2] == ["welcome", 1]
            requests = []
            for i in range(100):
                requests.append(pack([3 * i + 1, "put", {"key": b"k%03d" % i, "value": b"v%d" % i}]))
                requests.append(pack([3 * i + 2, "status" if i % 2 else "leader", {}]))
                requests.append(pack([3 * i + 3, "get", {"key": b"k%03d" % i, "consistency": "eventual"}]))
            await stream.send_all(encode_frames(requests))
            answers: dict[int, list] = {}
            while len(answers) < 300:
                rid, status, body = unpack(await receive_frame(stream, decoder))
                assert rid not in answers
                assert status == "ok", body
                answers[rid] = body
            assert all(answers[3 * i + 1]["revision"] > 0 for i in range(100))
            assert all(answers[3 * i + 3]["value"] in (None, b"v%d" % i) for i in range(100))
            await stream.aclose()
            async with dengine.open_client([srv.client_address], timeout=5) as client:
                assert await client.get_many([b"k%03d" % i for i in range(100)]) == [b"v%d" % i for i in range(100)]
