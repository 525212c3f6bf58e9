"""The dengine backup file format (``dengine snapshot save``): one
consistent image of the key-value state, with its revision and checksum.

* A backup file is ``MAGIC``, a 4-byte big-endian header length, a msgpack
  header ``{"version": 1, "revision": uint, "cluster_id": str, "size": uint,
  "crc32": uint}`` and ``size`` bytes of KV image (dengine.kv.snapshot),
  whose CRC-32 is ``crc32``.
* It is written to ``FILE.part``, checked, fsynced and renamed, so a backup
  that exists is whole (:class:`BackupWriter`, also fed piece by piece by the
  clients as the image streams in).
* :func:`read_backup` checks the magic, the header, the size and the
  checksum, and says which is wrong (``StorageCorrupted`` naming the file).

Codec layer: the embedded engine, the storage (restore) and both clients
use it.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any, BinaryIO

import attrs

from dengine.codec import pack, unpack
from dengine.errors import MalformedMessage, StorageCorrupted

__all__ = ["MAGIC", "BackupHeader", "BackupWriter", "read_backup", "write_backup"]

MAGIC = b"DNGBAK1\n"
_LEN = struct.Struct(">I")
_MAX_HEADER = 64 * 1024


@attrs.frozen
class BackupHeader:
    revision: int
    cluster_id: str
    size: int
    crc32: int

    def encode(self) -> bytes:
        body = pack({"version": 1, "revision": self.revision, "cluster_id": self.cluster_id, "size": self.size,
                     "crc32": self.crc32})
        return MAGIC + _LEN.pack(len(body)) + body


class BackupWriter:
    """Writes a backup as its image arrives in pieces: to ``path + ".part"``,
    then checked (size and checksum against the header), fsynced and renamed
    into place by :meth:`finish`; :meth:`abort` removes the partial file."""

    def __init__(self, path: str, header: BackupHeader) -> None:
        self.path = path
        self.header = header
        self.written = 0
        self._crc = 0
        self._tmp = path + ".part"
        self._f: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 - closed in finish/abort
        self._f.write(header.encode())

    def write(self, chunk: bytes) -> None:
        assert self._f is not None
        if self.written + len(chunk) > self.header.size:
            raise StorageCorrupted(f"the server sent more than the {self.header.size} bytes it announced",
                                   path=self.path, offset=self.written)
        self._f.write(chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        self.written += len(chunk)

    def finish(self) -> None:
        f, self._f = self._f, None
        assert f is not None
        try:
            if self.written != self.header.size or self._crc != self.header.crc32:
                raise StorageCorrupted(
                    f"the backup received is damaged ({self.written} of {self.header.size} bytes, checksum "
                    f"{'ok' if self._crc == self.header.crc32 else 'wrong'})", path=self.path, offset=self.written)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(self._tmp)
            raise
        f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            f.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass


def write_backup(path: str, revision: int, cluster_id: str, image: bytes) -> None:
    """Write a whole backup of ``image`` (a KV image at ``revision``)."""
    writer = BackupWriter(path, BackupHeader(revision, cluster_id, len(image), zlib.crc32(image)))
    try:
        writer.write(image)
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def read_backup(path: str) -> tuple[BackupHeader, bytes]:
    """The header and the image of the backup at ``path``, checked."""
    with open(path, "rb") as f:
        data = f.read()

    def bad(why: str, offset: int) -> StorageCorrupted:
        return StorageCorrupted(f"{path} is not a usable dengine backup: {why}", path=path, offset=offset)

    if not data.startswith(MAGIC):
        raise bad("it does not start with the dengine backup magic", 0)
    at = len(MAGIC)
    if len(data) < at + _LEN.size:
        raise bad("it ends inside its header", at)
    (length,) = _LEN.unpack_from(data, at)
    at += _LEN.size
    if length > _MAX_HEADER or len(data) < at + length:
        raise bad("its header is cut short or too large", at)
    try:
        raw = unpack(data[at:at + length], what="backup header")
    except MalformedMessage as exc:
        raise bad(str(exc), at) from None
    header = _header(raw)
    if header is None:
        raise bad(f"its header is not a version 1 header: {raw!r:.80}", at)
    at += length
    image = data[at:]
    if len(image) != header.size:
        raise bad(f"the image is {len(image)} bytes, the header says {header.size}", at)
    if zlib.crc32(image) != header.crc32:
        raise bad("the image's checksum does not match the header's", at)
    return header, image


def _header(raw: Any) -> BackupHeader | None:
    if type(raw) is not dict or raw.get("version") != 1:
        return None
    revision, cluster_id, size, crc = raw.get("revision"), raw.get("cluster_id"), raw.get("size"), raw.get("crc32")
    if not (type(revision) is int and type(cluster_id) is str and type(size) is int and type(crc) is int):
        return None
    return BackupHeader(revision, cluster_id, size, crc)
