"""Seeding a new cluster's data directories from a backup (``dengine
snapshot restore``; the file format is dengine.backup), and the cluster id a
data directory belongs to.

Rules of this module:

* :func:`restore_backup` writes, into an empty data directory, a Raft
  snapshot at the backup's revision (term 1) whose voters are the new
  cluster's initial members and whose member table holds their peer
  addresses (not the old cluster's), and a hard state committing it. Every
  member restored from the same file with the same members starts from the
  same state, so the new cluster needs no bootstrap entries. The data
  directory records its cluster id (``cluster-id``): a new one unless told
  otherwise, so the restored cluster cannot mix with the old one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from dengine.backup import read_backup
from dengine.errors import ConfigError, InvalidArgument, StorageCorrupted
from dengine.kv.members import MemberTable, encode_member_context
from dengine.kv.snapshot import decode_image, encode_image, restore, unwrap_snapshot_data, wrap_snapshot_data
from dengine.kv.store import KVStore
from dengine.raft.messages import ConfState, EntryType, HardState, Snapshot, SnapshotMeta

__all__ = ["CLUSTER_ID_FILE", "backup_from_data_dir", "check_cluster_id", "record_cluster_id", "restore_backup"]

#: The file in a data directory that names the cluster it belongs to.
CLUSTER_ID_FILE = "cluster-id"


def restore_backup(
    path: str,
    data_dir: str,
    *,
    node_id: int,
    initial_cluster: Mapping[int, str],
    cluster_id: str | None = None,
) -> tuple[int, str]:
    """Seed ``data_dir`` (empty or absent) for member ``node_id`` of a new
    cluster of ``initial_cluster`` (id -> peer address) from the backup at
    ``path``. Returns the backup's revision and the new cluster's id
    (``cluster_id``, else the old one with ``-restored-<revision>``)."""
    from dengine.storage.file import FileStorage  # noqa: PLC0415 - keeps this module light to import

    if node_id not in initial_cluster:
        raise InvalidArgument(f"node {node_id} is not in the initial cluster {sorted(initial_cluster)}")
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise InvalidArgument(f"{data_dir} is not empty: restore into a new data directory")
    header, image_bytes = read_backup(path)
    image = decode_image(image_bytes)
    if image.applied_index != header.revision:
        raise StorageCorrupted(f"{path}: the image is at revision {image.applied_index}, the header says "
                               f"{header.revision}", path=path, offset=0)
    table = MemberTable()
    for n, address in sorted(initial_cluster.items()):
        table.record(n, encode_member_context(peer_address=address))
    fresh = attrs.evolve(image, members=table)
    new_id = cluster_id or f"{header.cluster_id}-restored-{header.revision}"
    snapshot = Snapshot(
        meta=SnapshotMeta(index=header.revision, term=1, conf_state=ConfState(voters=frozenset(initial_cluster))),
        data=wrap_snapshot_data(encode_image(fresh)),
    )
    os.makedirs(data_dir, exist_ok=True)
    storage = FileStorage(data_dir)
    try:
        storage.save_snapshot(snapshot)
        storage.append([], HardState(term=1, vote=0, commit=header.revision))
    finally:
        storage.close()
    record_cluster_id(data_dir, new_id)
    return header.revision, new_id


def record_cluster_id(data_dir: str, cluster_id: str) -> None:
    path = os.path.join(data_dir, CLUSTER_ID_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cluster_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_cluster_id(data_dir: str, cluster_id: str) -> None:
    """A data directory belongs to one cluster: record ``cluster_id`` on
    first use, refuse another one later (a restored cluster's directories
    cannot be started as the old cluster, nor the other way round)."""
    path = os.path.join(data_dir, CLUSTER_ID_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            recorded = f.read().strip()
    except FileNotFoundError:
        if os.path.isdir(data_dir):
            record_cluster_id(data_dir, cluster_id)
        return
    if recorded != cluster_id:
        raise ConfigError(
            f"{data_dir} belongs to cluster {recorded!r}, not {cluster_id!r}: start it with --cluster-id "
            f"{recorded} (or use another data directory)"
        )


def backup_from_data_dir(data_dir: str, path: str, *, cluster_id: str | None = None) -> int:
    """Disaster recovery: write a backup of the state in a stopped node's
    ``data_dir`` -- its snapshot, then EVERY entry in its log, committed
    or not, as etcd's ``--force-new-cluster`` does. It loses the guarantee:
    writes the cluster acknowledged but this node never received are
    missing, and writes whose clients saw an unknown outcome may be there.
    Use it only when a majority is lost for good. Returns the revision."""
    from dengine.storage.file import FileStorage  # noqa: PLC0415 - only this path needs the WAL reader
    from dengine.backup import write_backup  # noqa: PLC0415

    storage = FileStorage(data_dir, create=False)
    try:
        state = storage.load()
    finally:
        storage.close()
    store = KVStore()
    if state.snapshot is not None:
        store = restore(unwrap_snapshot_data(state.snapshot.data, source=f"{data_dir} snapshot"))
    for entry in state.entries:
        if entry.index <= store.applied_index:
            continue
        if entry.type is EntryType.CONF_CHANGE:
            store.apply_member(entry.index, 0, "none")  # the new cluster brings its own members
        else:
            store.apply(entry.index, entry.data, emit_events=False)
    if cluster_id is None:
        try:
            with open(os.path.join(data_dir, CLUSTER_ID_FILE), encoding="utf-8") as f:
                cluster_id = f.read().strip() or "dengine"
        except FileNotFoundError:
            cluster_id = "dengine"
    write_backup(path, store.applied_index, cluster_id, encode_image(store.freeze()))
    return store.applied_index
