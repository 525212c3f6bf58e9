"""Snapshot files: checksummed bytes (also for snapshots from a peer),
written atomically, verified on load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import StorageCorrupted
from dengine.raft.messages import ConfState, Entry, Snapshot, SnapshotMeta
from dengine.storage import FileStorage, snapshot_from_bytes, snapshot_to_bytes, verify_snapshot_bytes

SNAP = Snapshot(SnapshotMeta(7, 2, ConfState({1, 2}, {3})), b"state machine image" * 10)


def test_round_trip() -> None:
    data = snapshot_to_bytes(SNAP)
    assert data.startswith(b"DENGSNAP")
    assert snapshot_from_bytes(data) == SNAP
    assert verify_snapshot_bytes(data) == SNAP.meta


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
def test_the_file_is_written_in_pieces_with_the_bytes_of_one_encoding(size: int) -> None:
    from dengine import codec
    from dengine.storage.snapshot import snapshot_pieces
    from dengine.storage.wal import frame

    snap = Snapshot(SNAP.meta, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    payload = codec.encode(snap)
    pieces = snapshot_pieces(snap)
    assert pieces[1] is snap.data  # the data is not copied
    assert b"".join(pieces) == b"DENGSNAP" + frame(payload) + payload
    assert snapshot_from_bytes(b"".join(pieces)) == snap


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_detected(position: int, bit: int) -> None:
    data = bytearray(snapshot_to_bytes(SNAP))
    data[position % len(data)] ^= 1 << bit
    with pytest.raises(StorageCorrupted):
        verify_snapshot_bytes(bytes(data), source="peer 2")


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0))
def test_truncated_bytes_are_detected(cut: int) -> None:
    data = snapshot_to_bytes(SNAP)
    with pytest.raises(StorageCorrupted, match="from peer"):
        snapshot_from_bytes(data[: cut % len(data)], source="from peer")


def damage_the_snapshot_file(directory: Path) -> Path:
    """Flip one bit near the end of the one snapshot file in ``directory``."""
    (path,) = directory.glob("snap-*.snap")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def test_snapshot_file_is_verified_on_load(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append([Entry(i, 2) for i in range(1, 10)])
        s.save_snapshot(SNAP)
    path = damage_the_snapshot_file(tmp_path)
    with pytest.raises(StorageCorrupted, match="checksum mismatch") as info:
        FileStorage(tmp_path)
    assert info.value.path == str(path)


def test_only_the_latest_snapshot_is_kept_and_temp_files_are_removed(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append([Entry(i, 2) for i in range(1, 20)])
        s.save_snapshot(SNAP)
        s.save_snapshot(Snapshot(SnapshotMeta(15, 2, ConfState({1})), b"newer"))
    assert [p.name for p in tmp_path.glob("snap-*")] == ["snap-00000000000000000015.snap"]
    (tmp_path / "snap-00000000000000000019.snap.tmp").write_bytes(b"half written")
    with FileStorage(tmp_path) as s:
        assert s.load().snapshot == Snapshot(SnapshotMeta(15, 2, ConfState({1})), b"newer")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("backend", ["file", "memory"])
def test_the_saved_snapshot_reads_back_by_its_index_and_only_while_it_is_the_latest(
    tmp_path: Path, backend: str
) -> None:
    from dengine.storage import MemoryStorage

    s = FileStorage(tmp_path) if backend == "file" else MemoryStorage()
    try:
        assert s.read_snapshot(7) is None
        s.append([Entry(i, 2) for i in range(1, 20)])
        s.save_snapshot(SNAP)
        assert s.read_snapshot(7) == SNAP
        assert s.read_snapshot(6) is None
        newer = Snapshot(SnapshotMeta(15, 2, ConfState({1})), b"newer")
        s.save_snapshot(newer)
        assert s.read_snapshot(7) is None and s.read_snapshot(15) == newer
    finally:
        s.close()


def test_a_snapshot_read_back_is_verified(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append([Entry(i, 2) for i in range(1, 10)])
        s.save_snapshot(SNAP)
        damage_the_snapshot_file(tmp_path)
        with pytest.raises(StorageCorrupted, match="checksum mismatch"):
            s.read_snapshot(7)


def test_crash_between_snapshot_and_log_reset(tmp_path: Path) -> None:
    # The snapshot file is durable but the RESET record never made it: the
    # conflicting log must still be discarded on recovery.
    with FileStorage(tmp_path) as s:
        s.append([Entry(i, 1) for i in range(1, 10)])
    from dengine.storage.snapshot import write_snapshot_file

    write_snapshot_file(str(tmp_path), SNAP)  # term 2 at index 7; our log has term 1
    with FileStorage(tmp_path) as s:
        state = s.load()
        assert state.snapshot == SNAP and state.entries == []
        s.append([Entry(8, 2)])
    with FileStorage(tmp_path) as s:
        assert s.load().entries == [Entry(8, 2)]


def test_snapshot_name_mismatch_is_corruption(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append([Entry(i, 2) for i in range(1, 10)])
        s.save_snapshot(SNAP)
    (path,) = tmp_path.glob("snap-*.snap")
    path.rename(tmp_path / "snap-00000000000000000009.snap")
    with pytest.raises(StorageCorrupted, match="file name says index 9"):
        FileStorage(tmp_path)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
def test_a_file_reads_back_with_its_data_read_on_its_own(
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The data field is read from the file into its own bytes object (no msgpack copy under the
    # GIL); an intact file never needs the whole-bytes path.
    from dengine.storage import snapshot as snapshot_module

    snap = Snapshot(SNAP.meta, bytes(range(256)) * (size // 256) + b"y" * (size % 256))
    path = snapshot_module.write_snapshot_file(str(tmp_path), snap)

    def whole_bytes_path(*_a: object, **_k: object) -> Snapshot:
        raise AssertionError("an intact file took the whole-bytes path")

    monkeypatch.setattr(snapshot_module, "snapshot_from_bytes", whole_bytes_path)
    back = snapshot_module.read_snapshot_file(path)
    assert back == snap and type(back.data) is bytes


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7),
       size=st.sampled_from([10, 300, 70_000]))
def test_any_flipped_bit_in_a_file_is_detected(tmp_path_factory: pytest.TempPathFactory, position: int, bit: int,
                                               size: int) -> None:
    from dengine.storage.snapshot import read_snapshot_file, write_snapshot_file

    directory = tmp_path_factory.mktemp("flip")
    path = Path(write_snapshot_file(str(directory), Snapshot(SNAP.meta, b"z" * size)))
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted, match=str(path)):
        read_snapshot_file(str(path))


@pytest.mark.parametrize("change", ["truncate", "append"])
def test_a_file_cut_short_or_with_bytes_after_it_is_detected(tmp_path: Path, change: str) -> None:
    from dengine.storage.snapshot import read_snapshot_file, write_snapshot_file

    path = Path(write_snapshot_file(str(tmp_path), Snapshot(SNAP.meta, b"z" * 70_000)))
    data = path.read_bytes()
    path.write_bytes(data[:-1] if change == "truncate" else data + b"\0")
    with pytest.raises(StorageCorrupted, match="length field says"):
        read_snapshot_file(str(path))


def test_a_large_snapshot_file_is_written_and_synced_a_step_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dengine.storage import snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "SYNC_STEP", 1000)
    real_sync = snapshot_module.fsync_file
    synced_sizes: list[int] = []

    def counting_sync(fd: int) -> None:
        synced_sizes.append(os.fstat(fd).st_size)
        real_sync(fd)

    monkeypatch.setattr(snapshot_module, "fsync_file", counting_sync)
    snap = Snapshot(SNAP.meta, bytes(range(256)) * 20)  # 5,120 bytes of data: six steps
    path = snapshot_module.write_snapshot_file(str(tmp_path), snap)
    head = len(snapshot_module.snapshot_pieces(snap)[0])
    assert synced_sizes == [head + 1000 * k for k in range(1, 6)] + [head + 5120]
    assert snapshot_module.read_snapshot_file(path) == snap
    assert not list(tmp_path.glob("*.tmp"))
