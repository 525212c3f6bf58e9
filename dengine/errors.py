"""The dengine exception tree.

Every error carries a stable numeric ``code`` (documented in docs/errors.md and
sent on the wire) and says whose fault it is:

* :class:`UsageError` and its children -- *you* misused the API or gave bad
  input; retrying the same call will fail the same way.
* :class:`ClusterError` and its children -- the node, the cluster or the
  network could not do it right now; a retry (maybe elsewhere) may succeed.
* :class:`StorageError` and its children -- the local disk failed or holds
  data that cannot be trusted; the node stops rather than guess.

Codes never change meaning once released. New codes are only ever added.
"""

from __future__ import annotations

from typing import ClassVar


class ErrorCode:
    """Stable numeric codes. Grouped by the thousand: 1xxx usage, 2xxx cluster,
    3xxx storage, 4xxx protocol, 5xxx watch."""

    INVALID_ARGUMENT = 1001
    CONFIG_INVALID = 1002
    ADDRESS_IN_USE = 1003
    LEASE_NOT_FOUND = 1004

    NOT_LEADER = 2001
    UNAVAILABLE = 2002
    TIMEOUT = 2003
    ENGINE_STOPPED = 2004
    RESOURCE_EXHAUSTED = 2005
    PROPOSAL_DROPPED = 2006
    MEMBERSHIP_CHANGE_IN_PROGRESS = 2007
    LEADER_CHANGED = 2008
    MEMBER_REMOVED = 2009
    MEMBERSHIP_CHANGE_REFUSED = 2010
    SESSION_LOST = 2011

    STORAGE_ERROR = 3000
    STORAGE_CORRUPTED = 3001
    STORAGE_FULL = 3002
    STORAGE_PERMISSION = 3003
    DATA_DIR_LOCKED = 3004
    STORAGE_FAILED = 3005
    DATA_DIR_MISSING = 3006

    PROTOCOL_ERROR = 4000
    FRAME_TOO_LARGE = 4001
    MALFORMED_MESSAGE = 4002
    UNKNOWN_OPERATION = 4003
    WRONG_CLUSTER = 4004
    WRONG_PROTOCOL_VERSION = 4005

    WATCH_BUFFER_OVERFLOW = 5001
    COMPACTED = 5002


class DengineError(Exception):
    """Base class of every error dengine raises on purpose."""

    code: ClassVar[int] = 0

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- you misused it -------------------------------------------------------


class UsageError(DengineError):
    """The caller passed something invalid; retrying will not help."""


class InvalidArgument(UsageError):
    code = ErrorCode.INVALID_ARGUMENT


class AddressInUse(UsageError):
    """An address this node should listen on cannot be bound (another
    program uses it, or it is not an address of this machine). The message
    names which listener (client or peer) and the address."""

    code = ErrorCode.ADDRESS_IN_USE


class LeaseNotFound(UsageError):
    """The lease does not exist: it was never granted, was revoked, or
    expired (its keys are deleted). Grant a new one."""

    code = ErrorCode.LEASE_NOT_FOUND


class ConfigError(UsageError):
    """A configuration value is invalid. ``problems`` holds one plain sentence
    per bad field."""

    code = ErrorCode.CONFIG_INVALID

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("invalid configuration: " + " ".join(self.problems))


# --- the node / cluster failed ----------------------------------------------


class ClusterError(DengineError):
    """The cluster could not serve the request now; a retry may succeed."""


class NotLeader(ClusterError):
    """This node is not the leader. ``leader_id`` and ``leader_address`` are a
    hint (``None`` when no leader is known)."""

    code = ErrorCode.NOT_LEADER

    def __init__(
        self,
        message: str = "this node is not the leader",
        *,
        leader_id: int | None = None,
        leader_address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Unavailable(ClusterError):
    code = ErrorCode.UNAVAILABLE


class LeaderChanged(Unavailable):
    """The node lost leadership while a write was in its log and not yet
    committed: the write may or may not be applied (the new leader may commit
    it or overwrite it). Said at once instead of after the deadline, like
    etcd's "leader changed". ``leader_id`` is the new leader when known."""

    code = ErrorCode.LEADER_CHANGED

    def __init__(self, message: str, *, leader_id: int | None = None) -> None:
        super().__init__(message)
        self.leader_id = leader_id


class EngineStopped(Unavailable):
    """The engine is stopping or has stopped."""

    code = ErrorCode.ENGINE_STOPPED


class Timeout(ClusterError):
    """The deadline passed. For a write this means the outcome is unknown: it
    may or may not have been applied."""

    code = ErrorCode.TIMEOUT


class ResourceExhausted(ClusterError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class ProposalDropped(ClusterError):
    """The proposal was not accepted into the log (for example the leader
    changed, or a membership change is already in flight)."""

    code = ErrorCode.PROPOSAL_DROPPED


class MembershipChangeInProgress(ProposalDropped):
    """Only one membership change may be in flight; retry once it committed."""

    code = ErrorCode.MEMBERSHIP_CHANGE_IN_PROGRESS


class MembershipChangeRefused(ClusterError):
    """The leader refused a membership change that would not be safe now: a
    learner not caught up, or a change that would leave the cluster without
    a majority the leader can reach. The message says which; retry once the
    cluster allows it."""

    code = ErrorCode.MEMBERSHIP_CHANGE_REFUSED


class SessionLost(ClusterError):
    """A session's lease could not be renewed in time (the cluster was out of
    reach, or the lease expired or was revoked): whatever it guarded -- a
    lock, a leadership -- may now belong to someone else."""

    code = ErrorCode.SESSION_LOST


class MemberRemoved(ClusterError):
    """This node was removed from the cluster: it no longer serves requests
    or takes part in elections. Talk to the remaining members."""

    code = ErrorCode.MEMBER_REMOVED


# --- the disk failed ------------------------------------------------------------


class StorageError(DengineError):
    """The local storage failed. The node stops accepting writes."""

    code = ErrorCode.STORAGE_ERROR


class StorageCorrupted(StorageError):
    """Data on disk failed its checksum or cannot be parsed, somewhere other
    than a torn tail. ``path`` and ``offset`` say where."""

    code = ErrorCode.STORAGE_CORRUPTED

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class StorageFull(StorageError):
    code = ErrorCode.STORAGE_FULL


class StoragePermissionDenied(StorageError):
    code = ErrorCode.STORAGE_PERMISSION


class DataDirLocked(StorageError):
    code = ErrorCode.DATA_DIR_LOCKED


class DataDirMissing(StorageError):
    code = ErrorCode.DATA_DIR_MISSING


class StorageFailed(StorageError):
    """A write or fsync failed. The data may not be on disk; the write path is
    closed for good (no retry pretends the data is safe)."""

    code = ErrorCode.STORAGE_FAILED


# --- the peer misbehaved on the wire --------------------------------------


class ProtocolError(DengineError):
    code = ErrorCode.PROTOCOL_ERROR


class FrameTooLarge(ProtocolError):
    code = ErrorCode.FRAME_TOO_LARGE


class MalformedMessage(ProtocolError):
    code = ErrorCode.MALFORMED_MESSAGE


class UnknownOperation(ProtocolError):
    code = ErrorCode.UNKNOWN_OPERATION


class WrongCluster(ProtocolError):
    code = ErrorCode.WRONG_CLUSTER


class WrongProtocolVersion(ProtocolError):
    code = ErrorCode.WRONG_PROTOCOL_VERSION


def _all_error_classes() -> list[type[DengineError]]:
    out: list[type[DengineError]] = []
    stack: list[type[DengineError]] = [DengineError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


def error_for_code(code: int) -> type[DengineError]:
    """The most specific class for a wire ``code`` (``DengineError`` if unknown)."""
    for cls in _all_error_classes():
        if cls.code == code and cls is not DengineError:
            return cls
    return DengineError
