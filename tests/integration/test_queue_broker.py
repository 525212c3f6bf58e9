"""examples/queue_broker.py under a leader crash: every produced item is
delivered, the queue drains, brokers follow leadership and stop cleanly."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import trio

from dengine.transport.memory import MemoryNetwork

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "queue_broker.py"


def load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("queue_broker_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_broker_survives_killing_the_leader(tmp_path: pathlib.Path) -> None:
    example = load_example()
    with trio.fail_after(60):
        delivered = await example.demo(str(tmp_path), items=40, kill_leader_after=15, network=MemoryNetwork())
    assert sorted(delivered) == [b"%06d" % i for i in range(40)]
    assert all(value == b"payload-" + key for key, value in delivered.items())


async def test_broker_over_tcp(tmp_path: pathlib.Path) -> None:
    example = load_example()
    with trio.fail_after(60):
        delivered = await example.demo(str(tmp_path), items=20, kill_leader_after=8)
    assert sorted(delivered) == [b"%06d" % i for i in range(20)]
