"""Commands batched into one Raft entry share a revision: a remote watch
delivers every event of such a revision, and a resume in the middle of one
delivers the rest exactly once (found by the chaos test, tests/chaos)."""

from __future__ import annotations

import pathlib

import trio

import dengine
from tests.integration.cluster_helpers import free_ports


async def test_a_remote_watch_delivers_every_event_of_a_shared_revision(tmp_path: pathlib.Path) -> None:
    port = free_ports(1)[0]
    cfg = dengine.Config(data_dir=str(tmp_path / "d"), client_address=f"127.0.0.1:{port}")
    with trio.fail_after(20):
        async with dengine.open_server(cfg) as server:
            await server.engine.wait_ready(timeout=5)
            async with dengine.open_client([f"127.0.0.1:{port}"]) as kv:
                async with kv.open_watch(b"/p/", prefix=True, prev_kv=True) as watch:
                    revisions: dict[bytes, int] = {}

                    async def put(value: bytes) -> None:
                        revisions[value] = await kv.put(b"/p/k", value)

                    async with trio.open_nursery() as nursery:
                        for i in range(20):
                            nursery.start_soon(put, b"v%d" % i)
                    assert len(set(revisions.values())) < 20, "no two writes shared a revision"
                    seen = []
                    while len(seen) < 20:
                        event = await watch.receive()
                        seen.append((event.revision, event.value, event.prev_value))
    assert sorted(v for _, v, _ in seen) == sorted(revisions)
    assert all(revisions[v] == r for r, v, _ in seen)
    # One chain of prev values: each event's prev is the event before it.
    assert [p for _, _, p in seen[1:]] == [v for _, v, _ in seen[:-1]]
    assert [r for r, _, _ in seen] == sorted(r for r, _, _ in seen)


async def test_a_resume_inside_a_shared_revision_delivers_the_rest_exactly_once(tmp_path: pathlib.Path) -> None:
    port = free_ports(1)[0]
    cfg = dengine.Config(data_dir=str(tmp_path / "d"), client_address=f"127.0.0.1:{port}")
    with trio.fail_after(20):
        async with dengine.open_server(cfg) as server:
            await server.engine.wait_ready(timeout=5)
            async with dengine.open_client([f"127.0.0.1:{port}"]) as kv:
                revisions: dict[bytes, int] = {}

                async def put(value: bytes) -> None:
                    revisions[value] = await kv.put(b"/q/k", value)

                async with trio.open_nursery() as nursery:
                    for i in range(20):
                        nursery.start_soon(put, b"v%d" % i)
                shared = max(set(revisions.values()), key=lambda r: sum(1 for x in revisions.values() if x == r))
                first = min(revisions.values())
                async with kv.open_watch(b"/q/", prefix=True, start_revision=first) as watch:
                    seen = []
                    while True:
                        event = await watch.receive()
                        seen.append(event.value)
                        if event.revision == shared:
                            break
                    # Cut the stream in the middle of the shared revision: it resumes.
                    assert watch._stream is not None
                    watch._stream.conn.close()
                    while len(seen) < 20:
                        event = await watch.receive()
                        seen.append(event.value)
                    assert watch.resumes == 1
    assert sorted(seen) == sorted(revisions)
