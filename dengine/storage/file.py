"""FileStorage: the default, durable backend (a data directory on disk).

Data directory::

    LOCK                          flock()ed while open; holds the owner's pid
    wal-0000000000000001.log      WAL segments (format: dengine.storage.wal)
    wal-0000000000000002.log
    snap-00000000000000001234.snap  latest snapshot (format: dengine.storage.snapshot)
    wal-next.tmp                  the next segment, zero-filled ahead (see prepare)
    *.tmp                         a snapshot or segment being written; deleted on open

What is fsynced when:

* append / truncate_suffix: the framed record(s) go out in one ``writev``
  followed by one ``fdatasync`` of the segment; the call returns after that.
* roll-over: a new segment is started when the current one has reached
  ``segment_size``; its header record is written together with the batch
  that caused the roll, and the directory is fsynced so the file name is
  durable before the call returns.
* preallocation (``preallocate=True``, the default): :meth:`FileStorage.prepare`,
  run off the write path, writes ``wal-next.tmp`` as ``segment_size`` zero
  bytes and fsyncs it. A roll-over renames it to the new segment's name
  (then the directory fsync above); appends then overwrite allocated,
  written blocks, so each ``fdatasync`` flushes data only. While no such
  file is ready a segment is an ordinary growing file, and one that is
  switches to the prepared file at the next append.
* save_snapshot: temp file written + fsynced, renamed, directory fsynced;
  then (only if the log is discarded) a RESET record is appended and synced.
* compact: covered segments unlinked, then the directory fsynced.
* recovery: a torn tail is truncated with ftruncate + fsync before any new
  record is written after it.

Recovery rules (the only place where data is ever dropped):

* In the LAST segment, zero bytes after the last valid record are the unused
  part of a preallocated segment: the clean end of the log.
* In the LAST segment, if the bytes after the last valid record hold no other
  valid record (no complete record with a correct CRC starts anywhere in
  them), they are a torn write from a crash: truncated at the last good
  record, logged at WARNING. The dropped batch's append() never returned, so
  nothing acknowledged is lost.
* Anything else -- a bad record followed by a valid one, a bad record in any
  other segment, a valid record that does not decode, a missing segment, a
  log that does not reach the snapshot -- raises StorageCorrupted naming the
  file and byte offset. We never truncate acknowledged data silently.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence

import attrs

from dengine.errors import (
    DataDirLocked,
    DataDirMissing,
    InvalidArgument,
    MalformedMessage,
    StorageCorrupted,
    StorageFailed,
)
from dengine.raft.messages import Entry, HardState, Snapshot, SnapshotMeta

from . import wal
from .base import InitialState, Storage
from .model import LogModel, validate_append, validate_compact, validate_truncate
from .osutil import fsync_dir, fsync_file, storage_error
from .snapshot import (
    parse_snapshot_name,
    read_snapshot_file,
    read_snapshot_from,
    snapshot_name,
    write_snapshot_file,
)

log = logging.getLogger("dengine.storage")

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
LOCK_NAME = "LOCK"
SPARE_NAME = "wal-next.tmp"


@attrs.define
class _Segment:
    seq: int
    path: str
    max_index: int
    """Highest entry index written into this segment that may still be live
    (0: none). The segment can be purged once a compaction reaches it."""


@attrs.define
class _Recovered:
    state: InitialState
    segments: list[_Segment]
    last_end: int | None = None
    """Where the records of the last segment end (None: no segment)."""
    unfinished_reset: SnapshotMeta | None = None
    """A snapshot whose RESET record was lost in a crash (see _settle)."""


@contextlib.contextmanager
def _os_errors(doing: str) -> Iterator[None]:
    """OSError -> typed StorageError, outside the write path."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, doing, writing=False) from exc


class FileStorage(Storage):
    """Segmented WAL + snapshot files in ``data_dir``.

    ``create``: make the directory if it does not exist (else DataDirMissing).
    ``segment_size``: roll over to a new WAL segment once this many bytes
    were written to the current one. ``preallocate``: let :meth:`prepare`
    zero-fill the next segment ahead of time. Safe to call from several
    threads: calls are serialised (except :meth:`prepare`'s slow part, which
    runs beside them).
    """

    # Set by _start from the recovered state.
    _snap_meta: SnapshotMeta | None
    _terms: array.array[int]
    _first: int

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        create: bool = True,
        preallocate: bool = True,
    ) -> None:
        if segment_size < 1:
            raise InvalidArgument(f"segment_size must be positive, got {segment_size}")
        self.path = os.path.abspath(os.fspath(data_dir))
        self._segment_size = segment_size
        self._preallocate = preallocate
        self._spare: str | None = None
        """A zero-filled, fsynced segment-to-be, ready for the next roll-over."""
        self._preparing = False
        self._prepare_idle = threading.Event()
        self._prepare_idle.set()
        self._prepare_failure: str | None = None
        self._mutex = threading.Lock()
        self._failure: str | None = None
        self._closed = False
        self._lock_fd = -1
        self._writer: wal.SegmentWriter | None = None
        self._initial: InitialState | None = None
        self._segments: list[_Segment] = []
        try:
            self._open_dir(create)
            self._take_lock()
            self._remove_temp_files()
            recovered = self._recover(repair=True)
            self._start(recovered)
        except BaseException:
            self._release()
            raise

    # ----------------------------------------------------------------------
    # Storage interface
    # ----------------------------------------------------------------------

    def load(self) -> InitialState:
        with self._mutex:
            self._check_usable()
            if self._initial is not None:
                # Recovery just read everything; do not read it twice.
                state, self._initial = self._initial, None
                return state
            return self._recover(repair=False).state

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> float | None:
        entries = list(entries)
        with self._mutex:
            self._check_usable()
            validate_append(entries, last_index=self._last_index(), snapshot_index=self._snap_index())
            if not entries and hard_state is None:
                return None
            synced = self._write("appending to the WAL", [wal.encode_batch(entries, hard_state)])
            if entries:
                self._put_terms(entries)
                seg = self._segments[-1]
                seg.max_index = max(seg.max_index, entries[-1].index)
            if hard_state is not None:
                self._hard_state = hard_state
            return synced

    def truncate_suffix(self, from_index: int) -> None:
        with self._mutex:
            self._check_usable()
            validate_truncate(from_index, snapshot_index=self._snap_index())
            if from_index > self._last_index():
                return
            self._write("truncating the WAL", [wal.encode_truncate(from_index)])
            del self._terms[from_index - self._first :]

    def save_snapshot(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        with self._mutex:
            self._check_usable()
            if self._snap_meta is not None and meta.index <= self._snap_meta.index:
                return  # stale (e.g. a re-sent install): the newer one stays
            with self._writing("writing the snapshot"):
                write_snapshot_file(self.path, snapshot)
            if self._term_at(meta.index) != meta.term:
                # Our log beyond the snapshot is from another history (or too
                # short): record that it is discarded, so recovery does not
                # resurrect it once newer entries follow in the WAL.
                self._record_reset(meta)
            self._snap_meta = meta
            self._remove_old_snapshots(meta.index)

    def read_snapshot(self, index: int) -> Snapshot | None:
        with self._mutex:
            self._check_usable()
            if self._snap_meta is None or self._snap_meta.index != index:
                return None
            path = os.path.join(self.path, snapshot_name(index))
            # Opened under the lock (a newer snapshot removes the file, but an
            # open file stays readable); read outside it, so WAL appends and
            # their fsyncs do not wait for a large snapshot to be read.
            with _os_errors("opening the snapshot"):
                file = open(path, "rb")  # noqa: SIM115 - closed below
        with file, _os_errors("reading the snapshot"):
            snapshot = read_snapshot_from(file, source=path)
        if snapshot.meta.index != index:
            raise StorageCorrupted(f"{path}: file name says index {index}, content says {snapshot.meta.index}",
                                   path=path, offset=0)
        return snapshot

    def compact(self, index: int) -> None:
        with self._mutex:
            self._check_usable()
            validate_compact(index, snapshot_index=self._snap_index())
            if self._terms and index >= self._first:
                del self._terms[: index - self._first + 1]
                self._first = index + 1
            self._purge_segments(index)

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._initial = None
        # A preparer sees _closed within one MiB and removes its file; wait
        # for it so that nothing of ours runs once the lock is released.
        self._prepare_idle.wait()
        with self._mutex:
            self._release()

    @property
    def needs_preparation(self) -> bool:
        return (
            self._preallocate
            and self._spare is None
            and not self._preparing
            and not self._closed
            and self._failure is None
            and self._prepare_failure is None
        )

    def prepare(self) -> None:
        """Zero-fill the next WAL segment (``segment_size`` bytes, fsynced)
        unless one is ready. Slow; runs beside appends (the runtime calls it
        from a worker thread after a batch). A failure here is not fatal --
        nothing acknowledged depends on it -- but turns preallocation off,
        with a warning."""
        with self._mutex:
            if not self.needs_preparation:
                return
            self._preparing = True
            self._prepare_idle.clear()
        path = os.path.join(self.path, SPARE_NAME)
        ready = False
        try:
            ready = wal.zero_fill(path, self._segment_size, stop=lambda: self._closed)
        except OSError as exc:
            self._prepare_failure = str(storage_error(exc, f"preallocating {path}", writing=False))
            log.warning("%s; WAL segments grow as they are written from now on", self._prepare_failure)
            with contextlib.suppress(OSError):
                os.unlink(path)
        finally:
            with self._mutex:
                self._preparing = False
                if ready and self._closed:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                elif ready:
                    self._spare = path
                self._prepare_idle.set()

    # ----------------------------------------------------------------------
    # Introspection (tests, benchmarks, status)
    # ----------------------------------------------------------------------

    def size_on_disk(self) -> dict[str, int]:
        """Bytes of the WAL (segments, the preallocated spare included) and
        of the snapshot files, by a listing of the data directory: no lock
        is taken, so it never waits for an fsync (a file removed meanwhile
        is skipped)."""
        sizes = {"wal": 0, "snapshot": 0}
        try:
            with os.scandir(self.path) as it:
                for entry in it:
                    name = entry.name
                    if wal.parse_segment_name(name) is not None or name == SPARE_NAME:
                        kind = "wal"
                    elif parse_snapshot_name(name) is not None:
                        kind = "snapshot"
                    else:
                        continue
                    try:
                        sizes[kind] += entry.stat().st_size
                    except OSError:
                        continue
        except OSError:
            return {}
        return sizes

    @property
    def segment_paths(self) -> list[str]:
        return [s.path for s in self._segments]

    @property
    def last_index(self) -> int:
        return self._last_index()

    # ----------------------------------------------------------------------
    # Opening
    # ----------------------------------------------------------------------

    def _open_dir(self, create: bool) -> None:
        with _os_errors(f"opening data directory {self.path}"):
            try:
                os.stat(self.path)
            except FileNotFoundError:
                if not create:
                    raise DataDirMissing(
                        f"data directory {self.path} does not exist (create it, or open with create=True)"
                    ) from None
                os.makedirs(self.path, exist_ok=True)
                fsync_dir(os.path.dirname(self.path))
            if not os.path.isdir(self.path):
                raise DataDirMissing(f"data directory {self.path} exists but is not a directory")
            os.listdir(self.path)  # fail now, clearly, if we may not read it

    def _take_lock(self) -> None:
        lock_path = os.path.join(self.path, LOCK_NAME)
        with _os_errors(f"opening lock file {lock_path}"):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise DataDirLocked(
                        f"data directory {self.path} is already in use (lock {lock_path} held by pid {holder}); "
                        "two nodes must never share a data directory"
                    ) from None
                raise
            self._lock_fd = fd
            # Who holds it, for the message above; informational, not synced.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def _remove_temp_files(self) -> None:
        with _os_errors(f"removing temporary files in {self.path}"):
            for name in os.listdir(self.path):
                if name.endswith(".tmp"):
                    os.unlink(os.path.join(self.path, name))

    def _start(self, recovered: _Recovered) -> None:
        state = recovered.state
        self._initial = state
        self._hard_state = state.hard_state
        self._snap_meta = state.snapshot.meta if state.snapshot is not None else None
        self._terms = array.array("Q", (e.term for e in state.entries))
        self._first = state.entries[0].index if state.entries else self._snap_index() + 1
        self._segments = recovered.segments
        with self._writing("opening the WAL for writing"):
            if not self._segments:
                self._new_segment(1)
                self._writer_write([wal.encode_header(1, self._hard_state)])
                return
            last = self._segments[-1]
            self._writer = wal.SegmentWriter(last.path, last.seq, create=False, end=recovered.last_end)
            if self._writer.size == 0:
                # Created just before a crash (or emptied by tail repair).
                self._writer_write([wal.encode_header(last.seq, self._hard_state)])
        if recovered.unfinished_reset is not None:
            self._record_reset(recovered.unfinished_reset)

    # ----------------------------------------------------------------------
    # Recovery
    # ----------------------------------------------------------------------

    def _recover(self, *, repair: bool) -> _Recovered:
        with _os_errors(f"reading data directory {self.path}"):
            names = os.listdir(self.path)
            model = LogModel()
            model.snapshot = self._read_latest_snapshot(names)
            segments, last_end = self._replay_segments(names, model, repair=repair)
        unfinished = self._settle(model)
        return _Recovered(model.initial_state(), segments, last_end, unfinished)

    def _read_latest_snapshot(self, names: list[str]) -> Snapshot | None:
        indexes = [i for i in map(parse_snapshot_name, names) if i is not None]
        if not indexes:
            return None
        # Only the newest counts: WAL segments it covers may be gone, so an
        # older snapshot is no fallback. Corruption here is fatal.
        return read_snapshot_file(os.path.join(self.path, snapshot_name(max(indexes))))

    def _replay_segments(
        self, names: list[str], model: LogModel, *, repair: bool
    ) -> tuple[list[_Segment], int | None]:
        """The segments, and where the records of the last one end."""
        seqs = sorted(s for s in map(wal.parse_segment_name, names) if s is not None)
        for a, b in zip(seqs, seqs[1:]):
            if b != a + 1:
                raise StorageCorrupted(
                    f"{self.path}: WAL segment {wal.segment_name(a + 1)} is missing (have {a} and {b})",
                    path=os.path.join(self.path, wal.segment_name(a + 1)),
                )
        segments: list[_Segment] = []
        last_end: int | None = None
        for n, seq in enumerate(seqs):
            path = os.path.join(self.path, wal.segment_name(seq))
            with open(path, "rb") as f:
                data = f.read()
            is_last = n == len(seqs) - 1
            result = wal.scan(data, zero_tail=is_last)
            if result.problem is not None:
                self._handle_bad_bytes(path, data, result, is_last=is_last, repair=repair)
            if is_last:
                last_end = result.end
            segment = _Segment(seq, path, 0)
            segments.append(segment)
            for k, (offset, payload) in enumerate(result.records):
                self._replay_record(path, offset, payload, first=k == 0, seq=seq, model=model, segments=segments)
        return segments, last_end

    def _handle_bad_bytes(self, path: str, data: bytes, result: wal.ScanResult, *, is_last: bool, repair: bool) -> None:
        where = f"{path}: {result.problem} at byte offset {result.end}"
        if not is_last:
            raise StorageCorrupted(
                f"{where}, in a segment that is not the last one: acknowledged records are damaged",
                path=path,
                offset=result.end,
            )
        later = wal.find_valid_record(data, result.end + 1)
        if later is not None:
            raise StorageCorrupted(
                f"{where}, followed by a valid record at byte offset {later}: "
                "this is corruption, not a torn write, and acknowledged data would be lost",
                path=path,
                offset=result.end,
            )
        if not repair:
            raise StorageCorrupted(f"{where}: the WAL changed under an open storage", path=path, offset=result.end)
        log.warning(
            "%s: torn write at the end of the WAL (%s at byte offset %d); dropping the last %d bytes "
            "(a batch whose append never returned)",
            path,
            result.problem,
            result.end,
            len(data) - result.end,
        )
        with _os_errors(f"truncating the torn tail of {path}"):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, result.end)
                fsync_file(fd)
            finally:
                os.close(fd)

    def _replay_record(
        self,
        path: str,
        offset: int,
        payload: memoryview,
        *,
        first: bool,
        seq: int,
        model: LogModel,
        segments: list[_Segment],
    ) -> None:
        def corrupt(why: str) -> StorageCorrupted:
            return StorageCorrupted(f"{path}: record at byte offset {offset}: {why}", path=path, offset=offset)

        try:
            rec = wal.decode_payload(payload)
        except MalformedMessage as exc:
            raise corrupt(f"valid checksum but undecodable payload: {exc}") from exc
        if first != isinstance(rec, wal.Header):
            raise corrupt("a segment must start with exactly one header record")
        if isinstance(rec, wal.Header):
            if rec.seq != seq:
                raise corrupt(f"header says segment {rec.seq}, file name says {seq}")
            model.hard_state = rec.hard_state
        elif isinstance(rec, wal.Batch):
            model.append(rec.entries, rec.hard_state)
            if rec.entries:
                segments[-1].max_index = max(segments[-1].max_index, rec.entries[-1].index)
        elif isinstance(rec, wal.Truncate):
            model.truncate_suffix(rec.from_index)
        else:
            model.entries = []
            for seg in segments:
                seg.max_index = 0

    def _settle(self, model: LogModel) -> SnapshotMeta | None:
        """Apply the snapshot to the replayed log; check they meet."""
        snap = model.snapshot
        snap_index = model.snapshot_index
        unfinished = None
        if snap is not None:
            term = model.term_at(snap_index)
            if term is not None and term != snap.meta.term:
                # Crash after the snapshot file was renamed but before its
                # RESET record: finish what save_snapshot started (_start
                # writes the record, so later appends cannot revive this log).
                model.entries = []
                unfinished = snap.meta
        if model.entries and model.entries[0].index > snap_index + 1:
            raise StorageCorrupted(
                f"{self.path}: the WAL starts at entry {model.entries[0].index} but the snapshot only covers "
                f"up to {snap_index}: entries {snap_index + 1}..{model.entries[0].index - 1} are missing",
                path=self.path,
            )
        return unfinished

    # ----------------------------------------------------------------------
    # Writing
    # ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        """Any OSError here is fatal: remember it and refuse later writes."""
        try:
            yield
        except OSError as exc:
            err = storage_error(exc, f"{doing} in {self.path}", writing=True)
            self._failure = str(err)
            raise err from exc

    def _write(self, doing: str, payloads: list[bytes]) -> float:
        """Write and sync ``payloads``; the seconds the fsync took."""
        self._initial = None  # the cached recovery result is stale now
        with self._writing(doing):
            assert self._writer is not None
            if self._writer.size >= self._segment_size or (self._spare is not None and not self._writer.preallocated):
                seq = self._writer.seq + 1
                self._new_segment(seq)
                # The header rides in the same write + sync as the batch.
                payloads = [wal.encode_header(seq, self._hard_state), *payloads]
            return self._writer_write(payloads)

    def _record_reset(self, meta: SnapshotMeta) -> None:
        self._write("recording a log reset", [wal.encode_reset(meta.index, meta.term)])
        self._terms = array.array("Q")
        self._first = meta.index + 1
        for seg in self._segments:
            seg.max_index = 0

    def _writer_write(self, payloads: list[bytes]) -> float:
        assert self._writer is not None
        return self._writer.write(payloads)

    def _new_segment(self, seq: int) -> None:
        path = os.path.join(self.path, wal.segment_name(seq))
        if self._spare is not None:
            spare, self._spare = self._spare, None
            os.rename(spare, path)
            writer = wal.SegmentWriter(path, seq, create=False, end=0)
        else:
            writer = wal.SegmentWriter(path, seq, create=True)
        if self._writer is not None:
            self._writer.close()  # already synced with its last batch
        self._writer = writer
        self._segments.append(_Segment(seq, path, 0))
        fsync_dir(self.path)

    def _purge_segments(self, index: int) -> None:
        removed = False
        with self._writing("purging compacted WAL segments"):
            while len(self._segments) > 1 and self._segments[0].max_index <= index:
                os.unlink(self._segments[0].path)
                del self._segments[0]
                removed = True
            if removed:
                fsync_dir(self.path)

    def _remove_old_snapshots(self, keep_index: int) -> None:
        with self._writing("removing old snapshots"):
            for name in os.listdir(self.path):
                index = parse_snapshot_name(name)
                if index is not None and index < keep_index:
                    os.unlink(os.path.join(self.path, name))

    # ----------------------------------------------------------------------
    # State helpers
    # ----------------------------------------------------------------------

    def _snap_index(self) -> int:
        return self._snap_meta.index if self._snap_meta is not None else 0

    def _last_index(self) -> int:
        return self._first + len(self._terms) - 1 if self._terms else self._snap_index()

    def _term_at(self, index: int) -> int | None:
        if self._first <= index < self._first + len(self._terms):
            return self._terms[index - self._first]
        return None

    def _put_terms(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if not self._terms:
            self._first = first
        else:
            del self._terms[first - self._first :]
        self._terms.extend(e.term for e in entries)

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageFailed(f"storage at {self.path} is closed")
        if self._failure is not None:
            raise StorageFailed(f"storage at {self.path} failed earlier and refuses all writes: {self._failure}")

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)  # closing the only descriptor releases the flock

