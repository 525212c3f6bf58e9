"""A long catch-up is applied in bounded steps: other tasks (the ticker,
the network, callers) keep running in between (issue 11, defect 5)."""

from __future__ import annotations

import trio

from dengine.kv.commands import Put, encode_batch
from dengine.raft.core import RaftConfig, bootstrap_entries
from dengine.raft.messages import Entry, HardState
from dengine.runtime.node import NodeOptions, NullOutbox, open_node
from dengine.storage.memory import MemoryStorage

N = 2000
VALUE = b"v" * 1000


def _storage_with_a_long_committed_log() -> MemoryStorage:
    storage = MemoryStorage()
    boot = bootstrap_entries(frozenset({1}))
    entries = list(boot) + [
        Entry(index=len(boot) + k + 1, term=1, data=encode_batch([Put(b"k%d" % k, VALUE)], 0)) for k in range(N)
    ]
    storage.append(entries, HardState(term=1, vote=1, commit=entries[-1].index))
    return storage


async def test_a_restart_applies_a_long_log_in_steps_with_other_tasks_running_between() -> None:
    storage = _storage_with_a_long_committed_log()
    options = NodeOptions(
        raft=RaftConfig(id=1, initial_voters=frozenset({1}), max_committed_bytes_per_ready=64 * 1024),
        tick_interval=10.0,
    )
    with trio.fail_after(30):
        async with open_node(options, storage, NullOutbox()) as node:
            # Count how often another task gets the loop while the log is applied.
            turns = 0
            seen: set[int] = set()
            while node.kv.applied_index < N:
                seen.add(node.kv.applied_index)
                turns += 1
                await trio.sleep(0)
            assert node.kv.get(b"k%d" % (N - 1), 0) == VALUE
    # 2 MB in steps of 64 KiB: about 30 steps, each followed by a checkpoint.
    assert turns >= 20
    assert len(seen) >= 20  # the applied index was seen moving in steps
