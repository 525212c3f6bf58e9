"""Child process for test_storage_crash.py: appends to a FileStorage until it
is killed, printing each acknowledgement only after append() returned.

    python crash_child.py DATA_DIR SEED GENERATION SEGMENT_SIZE

Lines: ``A first last term`` (entries first..last of that term are durable),
``S index`` (a snapshot at index is durable and the log compacted to it).
Entry content is a function of (index, term) so the parent can check it.
Like the runtime, a second thread zero-fills the next WAL segment whenever
the storage asks for it, so kills also land while a segment is prepared,
renamed into place and overwritten."""

from __future__ import annotations

import random
import sys
import threading

from dengine.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from dengine.storage import FileStorage

MAX_BATCHES = 100_000  # the parent kills us long before; this only bounds the loop


def content(index: int, term: int) -> bytes:
    return f"{index}/{term};".encode() * (1 + index % 13)


def snapshot_data(index: int) -> bytes:
    return f"snapshot up to {index}".encode()


def main() -> None:
    data_dir, seed, generation, segment_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    storage = FileStorage(data_dir, segment_size=segment_size)
    state = storage.load()
    terms = {e.index: e.term for e in state.entries}
    last = state.last_index
    snap_index = state.snapshot.meta.index if state.snapshot else 0
    out = sys.stdout
    wanted = threading.Event()

    def preparer() -> None:
        for _ in range(MAX_BATCHES):
            wanted.wait()
            wanted.clear()
            storage.prepare()

    threading.Thread(target=preparer, daemon=True).start()
    for n in range(MAX_BATCHES):
        size = rng.choice((1, 1, 2, 5, 20, 100))
        batch = [Entry(i, generation, data=content(i, generation)) for i in range(last + 1, last + size + 1)]
        storage.append(batch, HardState(term=generation, vote=1, commit=last))
        out.write(f"A {last + 1} {last + size} {generation}\n")
        out.flush()
        if storage.needs_preparation:
            wanted.set()
        for e in batch:
            terms[e.index] = e.term
        last += size
        if n % 7 == 6 and last - snap_index > 10:
            index = last - rng.randrange(0, 10)
            storage.save_snapshot(Snapshot(SnapshotMeta(index, terms[index], ConfState({1})), snapshot_data(index)))
            storage.compact(index)
            out.write(f"S {index}\n")
            out.flush()
            snap_index = index


if __name__ == "__main__":
    main()
