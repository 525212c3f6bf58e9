"""kill -9 a process that is appending to a FileStorage, at random moments,
many times over; after every restart everything acknowledged is there, with
the right content, and the log takes new appends.

The child (crash_child.py) prints an acknowledgement only after append()
returned; the parent kills it with SIGKILL after reading a random number of
them. Every loop is bounded in count and every read in time."""

from __future__ import annotations

import os
import random
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dengine.storage import FileStorage, wal

from .crash_child import content, snapshot_data

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 20.0  # seconds for one acknowledgement; a healthy child needs milliseconds


class Acks:
    def __init__(self) -> None:
        self.terms: dict[int, int] = {}  # index -> term acknowledged
        self.snapshot = 0  # highest acknowledged snapshot index
        self.max_term = 0

    def record(self, line: str) -> None:
        kind, *nums = line.split()
        if kind == "A":
            first, last, term = map(int, nums)
            for i in range(first, last + 1):
                self.terms[i] = term
            self.max_term = max(self.max_term, term)
        else:
            self.snapshot = max(self.snapshot, int(nums[0]))


def _read_lines(proc: subprocess.Popen[bytes], wanted: int, acks: Acks) -> None:
    """Read up to ``wanted`` complete lines (bounded by LINE_TIMEOUT each)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    got = 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while got < wanted:
            deadline = time.monotonic() + LINE_TIMEOUT
            while b"\n" not in buf:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    pytest.fail(f"child gave no acknowledgement within {LINE_TIMEOUT}s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    pytest.fail(f"child exited early: {proc.wait()} {proc.stderr.read() if proc.stderr else ''!r}")
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            acks.record(line.decode())
            got += 1
    # Lines already in the pipe are acknowledgements too; a partial last
    # line (killed mid-print) is not.
    proc.kill()
    proc.wait(timeout=LINE_TIMEOUT)
    rest = buf + proc.stdout.read()
    for line in rest.split(b"\n")[:-1]:
        acks.record(line.decode())


def _verify(data_dir: Path, acks: Acks, segment_size: int) -> bool:
    """Check every acknowledgement; True if the last WAL segment was a
    preallocated one (zero bytes after its records)."""
    with FileStorage(data_dir, segment_size=segment_size) as s:
        state = s.load()
        last = s.segment_paths[-1]
    data = Path(last).read_bytes()
    preallocated = wal.scan(data, zero_tail=True).end < len(data)
    snap_index = state.snapshot.meta.index if state.snapshot else 0
    assert snap_index >= acks.snapshot
    if state.snapshot is not None:
        assert state.snapshot.data == snapshot_data(snap_index)
    log = {e.index: e for e in state.entries}
    for index, term in acks.terms.items():
        if index <= snap_index:
            continue  # covered by the snapshot
        assert index in log, f"acknowledged entry {index} lost"
        assert log[index].term == term and log[index].data == content(index, term)
    for e in state.entries:  # unacknowledged survivors are whole, not garbage
        assert e.data == content(e.index, e.term)
    assert state.hard_state.term >= acks.max_term
    return preallocated


def _crash_loop(tmp_path: Path, kills: int, seed: int, segment_size: int) -> None:
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acks = Acks()
    preallocated = 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for generation in range(1, kills + 1):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(rng.randrange(2**32)), str(generation), str(segment_size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            # 0 = killed while starting or recovering; otherwise mid-append.
            _read_lines(proc, rng.choice((0, 1, 2, 3, 5, 8, 13, 21)), acks)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        preallocated += _verify(data_dir, acks, segment_size)
    assert len(acks.terms) > kills  # the runs did make progress
    assert preallocated > 0  # kills did land in zero-filled segments


def test_kill_dash_nine_at_random_moments(tmp_path: Path) -> None:
    _crash_loop(tmp_path, kills=60, seed=1, segment_size=8192)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_kill_dash_nine_soak(tmp_path: Path, seed: int) -> None:
    _crash_loop(tmp_path, kills=300, seed=100 + seed, segment_size=rng_segment(seed))


def rng_segment(seed: int) -> int:
    return (2048, 8192, 65536, 1 << 20)[seed % 4]
