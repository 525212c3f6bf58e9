"""Storage benchmark: FileStorage appends beside the raw disk, same run.

    python -m benchmarks storage [--quick] [--dir DIR]

Measures, in a temporary directory under --dir (default: the current dir):
* raw ``write`` + ``fsync`` (and + ``fdatasync``) rate of 256-byte writes;
* raw sequential write bandwidth: 1 MiB writes and one fsync at the end
  (what ``dd bs=1M conv=fsync`` reports), and the same with O_DIRECT;
* raw ``write`` + ``fdatasync`` bandwidth at the byte size of a 256-entry
  batch, appending to a file and overwriting a zero-filled one;
* FileStorage.append with batches of 1, 16, 256, 4096 entries of 256 bytes,
  with a thread zero-filling the next segment whenever the storage asks, as
  the runtime's preparer task does (the first spare is made before timing
  starts: a node that has run for a moment);
* recovery (open + load) time of a 200 MB log (20 MB with --quick).

Disk speed drifts during a run, so each goal's pair (raw fsync and batch-1;
raw sequential and batch-256) is measured in alternating rounds and compared
by medians. --quick is a smoke run: its rounds are short and its raw
sequential file (128 MiB against 512 MiB) can fit a virtual disk's write
cache, so its ratios are not the figures to report.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from dengine.raft.messages import Entry, HardState
from dengine.storage import FileStorage, wal

PAYLOAD = 256
BATCHES = (1, 16, 256, 4096)
ROUNDS = 5


def _timed(seconds: float, max_ops: int, op: Callable[[], tuple[int, float]]) -> tuple[float, float]:
    """Run ``op`` until ``seconds`` of measured time or ``max_ops``; ``op``
    returns (bytes written, seconds spent in the measured part). Returns
    (ops/s, MB/s)."""
    ops = nbytes = 0
    elapsed = 0.0
    while ops < max_ops and elapsed < seconds:
        n, dt = op()
        nbytes += n
        elapsed += dt
        ops += 1
    return ops / elapsed, nbytes / elapsed / 1e6


def raw_sync_rate(
    d: str, seconds: float, size: int, sync: Callable[[int], None], *, zero_filled: int = 0
) -> tuple[float, float]:
    """Write ``size`` bytes + ``sync`` in a loop; ``zero_filled``: into a file
    of that many zero bytes written and fsynced first (overwrite, not append)."""
    path = os.path.join(d, f"raw-{size}-{sync.__name__}")
    if zero_filled:  # the same preparation FileStorage.prepare does
        wal.zero_fill(path, zero_filled, stop=lambda: False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if zero_filled else os.O_TRUNC), 0o644)
    buf = os.urandom(size)

    def op() -> tuple[int, float]:
        start = time.perf_counter()
        os.write(fd, buf)
        sync(fd)
        return size, time.perf_counter() - start

    try:
        return _timed(seconds, zero_filled // size if zero_filled else 10**7, op)
    finally:
        os.close(fd)
        os.unlink(path)


def raw_bandwidth(d: str, total: int, *, direct: bool = False) -> float | None:
    """MB/s of ``total`` bytes in 1 MiB writes then one fsync; ``direct``:
    with O_DIRECT (None where the file system refuses it)."""
    path = os.path.join(d, "raw-seq")
    buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(1 << 20))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0), 0o644)
    except OSError:
        return None
    try:
        start = time.perf_counter()
        for _ in range(total // len(buf)):
            os.write(fd, buf)
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return total / elapsed / 1e6


def wal_rate(d: str, batch: int, seconds: float) -> tuple[float, float, float]:
    """(appends/s, entries/s, MB/s of payload) for ``batch``-entry appends."""
    path = os.path.join(d, f"wal-{batch}")
    data = os.urandom(PAYLOAD)
    with FileStorage(path) as s:
        s.prepare()  # warm-up, untimed: the spare a running node has ready
        wanted = threading.Event()
        done = False

        def preparer() -> None:  # the runtime's preparer task, as a thread
            while not done:
                if wanted.wait(0.05):
                    wanted.clear()
                    s.prepare()

        thread = threading.Thread(target=preparer)
        thread.start()
        next_index = 1

        def op() -> tuple[int, float]:
            nonlocal next_index
            # Building the entries is the caller's work (they already sit in
            # the Raft log); only append() is timed.
            entries = [Entry(i, 1, data=data) for i in range(next_index, next_index + batch)]
            hs = HardState(term=1, vote=1, commit=next_index - 1)
            start = time.perf_counter()
            s.append(entries, hs)
            elapsed = time.perf_counter() - start
            if s.needs_preparation:
                wanted.set()
            next_index += batch
            return batch * PAYLOAD, elapsed

        try:
            per_s, mb_s = _timed(seconds, 10**7, op)
        finally:
            done = True
            thread.join()
    shutil.rmtree(path)
    return per_s, per_s * batch, mb_s


def recovery_time(d: str, log_bytes: int) -> tuple[float, int, int]:
    path = os.path.join(d, "recovery")
    data = os.urandom(PAYLOAD)
    batch = 4096
    n = 0
    with FileStorage(path) as s:
        while n * PAYLOAD < log_bytes:
            s.append([Entry(i, 1, data=data) for i in range(n + 1, n + batch + 1)])
            n += batch
    on_disk = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    start = time.perf_counter()
    with FileStorage(path) as s:
        state = s.load()
    elapsed = time.perf_counter() - start
    assert len(state.entries) == n
    shutil.rmtree(path)
    return elapsed, n, on_disk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs and a 20 MB recovery log")
    parser.add_argument("--dir", default=".", help="where to create the temporary directory (same disk as data)")
    ns = parser.parse_args(argv)
    seconds = 0.5 if ns.quick else 3.0
    log_bytes = (20 if ns.quick else 200) * 10**6

    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")
    print(f"command: {' '.join(['python -m benchmarks storage', *(argv or [])])}")
    with tempfile.TemporaryDirectory(prefix="dengine-bench-", dir=ns.dir) as d:
        # Disk speed drifts over a run: measure each goal's pair (raw fsync
        # and batch-1, raw sequential and batch-256) in alternating rounds
        # and compare their medians.
        raw_rounds, wal1_rounds, seq_rounds, wal256_rounds = [], [], [], []
        seq_bytes = (128 if ns.quick else 512) << 20
        for _ in range(ROUNDS):
            raw_rounds.append(raw_sync_rate(d, seconds / ROUNDS, PAYLOAD, os.fsync)[0])
            wal1_rounds.append(wal_rate(d, 1, seconds / ROUNDS)[0])
            seq_rounds.append(raw_bandwidth(d, seq_bytes) or 0.0)
            wal256_rounds.append(wal_rate(d, 256, seconds / ROUNDS))
        fsync_ops = statistics.median(raw_rounds)
        bandwidth = statistics.median(seq_rounds)
        direct = raw_bandwidth(d, seq_bytes, direct=True)
        fdatasync_ops, _ = raw_sync_rate(d, seconds, PAYLOAD, os.fdatasync)
        batch256_bytes = 256 * (PAYLOAD + 8) + 16
        _, raw_batch_mb = raw_sync_rate(d, seconds, batch256_bytes, os.fdatasync)
        _, raw_batch_zero_mb = raw_sync_rate(d, seconds, batch256_bytes, os.fdatasync, zero_filled=64 << 20)

        print()
        print(f"{'raw write+fsync, 256 B (median)':<44}{fsync_ops:>12,.0f} ops/s")
        print(f"{'raw write+fdatasync, 256 B':<44}{fdatasync_ops:>12,.0f} ops/s")
        print(f"{'raw write+fdatasync, 66 KB, appending':<44}{raw_batch_mb:>12,.1f} MB/s")
        print(f"{'raw write+fdatasync, 66 KB, into zeros':<44}{raw_batch_zero_mb:>12,.1f} MB/s")
        print(f"{'raw sequential (1 MiB, 1 fsync; median)':<44}{bandwidth:>12,.1f} MB/s   "
              f"rounds: {', '.join(f'{r:,.0f}' for r in seq_rounds)}")
        print(f"{'raw sequential, O_DIRECT':<44}" + (f"{direct:>12,.1f} MB/s" if direct else f"{'n/a':>12}"))
        print()
        print(f"{'batch':>6} {'appends/s':>12} {'entries/s':>12} {'MB/s':>9}")
        results = {}
        for batch in BATCHES:
            if batch == 1:
                per_s = statistics.median(wal1_rounds)
                entries_s, mb_s = per_s, per_s * PAYLOAD / 1e6
            elif batch == 256:
                per_s, entries_s, mb_s = sorted(wal256_rounds, key=lambda r: r[2])[ROUNDS // 2]
            else:
                per_s, entries_s, mb_s = wal_rate(d, batch, seconds)
            results[batch] = (per_s, mb_s)
            print(f"{batch:>6} {per_s:>12,.0f} {entries_s:>12,.0f} {mb_s:>9.1f}")

        elapsed, n, on_disk = recovery_time(d, log_bytes)
        print()
        print(f"recovery: {on_disk / 1e6:.0f} MB WAL, {n:,} entries: {elapsed:.2f} s "
              f"({on_disk / 1e6 / elapsed:.0f} MB/s)")

    r1 = results[1][0] / fsync_ops
    r256 = results[256][1] / bandwidth
    print()
    print(f"batch-1 appends/s vs raw write+fsync:              {r1:6.0%}  "
          f"(goal >= 80%: {'met' if r1 >= 0.8 else 'NOT met'})")
    print(f"batch-256 MB/s vs raw sequential bandwidth:        {r256:6.0%}  "
          f"(goal >= 50%: {'met' if r256 >= 0.5 else 'NOT met'})")
    if direct:
        print(f"batch-256 MB/s vs raw sequential, O_DIRECT:        {results[256][1] / direct:6.0%}")
    print(f"batch-256 MB/s vs raw write+fdatasync 66 KB, zeros: {results[256][1] / raw_batch_zero_mb:6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
