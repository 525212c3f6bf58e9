"""The remote client honours the server's size limits, whatever they are."""

from __future__ import annotations

import pathlib

import attrs
import pytest
import trio

import dengine
from dengine import Config


def _config(tmp_path: pathlib.Path, **raft: int) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"), client_address="127.0.0.1:0")
    return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10, **raft))


async def test_server_with_small_limits_refuses_with_invalid_argument(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with dengine.open_server(_config(tmp_path, max_key_size=16, max_value_size=100)) as srv:
            await srv.wait_ready(timeout=5)
            async with dengine.open_client([srv.client_address], timeout=5) as client:
                with pytest.raises(dengine.InvalidArgument) as info:
                    await client.put(b"k", b"v" * 101)
                assert "value" in str(info.value)
                with pytest.raises(dengine.InvalidArgument) as info:
                    await client.put(b"k" * 17, b"v")
                assert "key" in str(info.value)
                assert await client.put(b"k", b"v" * 100) > 0


async def test_server_with_large_limits_accepts_large_values(tmp_path: pathlib.Path) -> None:
    big = b"x" * (3 << 20)  # over the 1 MiB default
    with trio.fail_after(20):
        async with dengine.open_server(_config(tmp_path, max_value_size=4 << 20)) as srv:
            await srv.wait_ready(timeout=5)
            async with dengine.open_client([srv.client_address], timeout=5) as client:
                await client.put(b"big", big)
                assert await client.get(b"big") == big


async def test_the_welcome_announces_the_servers_limits_and_the_client_cites_them(tmp_path: pathlib.Path) -> None:
    """A 50 MB value (over every frame limit) and a 2 MB one are refused by
    the client itself citing the server's configured limit, before sending:
    the server counts no request for them."""
    with trio.fail_after(20):
        async with dengine.open_server(_config(tmp_path, max_key_size=16, max_value_size=100)) as srv:
            await srv.wait_ready(timeout=5)
            async with dengine.open_client([srv.client_address], timeout=5) as client:
                assert await client.put(b"k", b"v") > 0  # connected: the welcome is known
                before = srv.statistics().requests
                for size in (50_000_000, 2_000_000, 101):
                    with pytest.raises(dengine.InvalidArgument) as info:
                        await client.put(b"k", b"v" * size)
                    assert (f"value is {size} bytes, larger than the limit of 100 bytes of the server at "
                            f"{srv.client_address} (its raft.max_value_size)") in str(info.value)
                with pytest.raises(dengine.InvalidArgument, match="key is 17 bytes, larger than the limit of 16"):
                    await client.get(b"k" * 17)
                assert srv.statistics().requests == before
            with dengine.connect([srv.client_address], timeout=5) as blocking:
                await trio.to_thread.run_sync(blocking.get, b"k")
                with pytest.raises(dengine.InvalidArgument, match="raft.max_value_size"):
                    await trio.to_thread.run_sync(blocking.put, b"k", b"v" * 2_000_000)
