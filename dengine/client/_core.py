"""The client's protocol core, sans-IO: everything ``open_client`` (trio)
and ``connect`` (blocking sockets) decide, in one place.

Rules of this module:

* Nothing here does IO, sleeps, reads a clock, or imports trio or socket.
  The two clients feed it bytes, the time (``now``: their own monotonic
  clock) and what happened; it answers with bytes to send, values, errors
  to raise and what to do next. The clients carry that out and decide
  nothing themselves, so a rule changed here changes in both.
* **Endpoints** are ``host:port`` in the one address grammar
  (:mod:`dengine.config.addresses`). A URL is accepted as etcdctl accepts
  it: ``http://host:port`` is plain TCP, ``https://host:port`` is TLS; a
  trailing ``/`` is ignored; another scheme, a path, or port 0 is refused
  saying why.
* **One** :class:`ConnectionState` **per connection** (docs/protocol.md
  §2-3): the hello; the welcome (a refusal becomes its dengine error; an
  answer that is not the dengine protocol says what it looked like, e.g.
  an HTTP server); request ids and frames; every response frame decoded and
  matched to the request or stream waiting for it (a response nobody waits
  for is dropped). A stream keeps at most ``limit`` unread items; one more
  ends it with ``ResourceExhausted`` and queues its cancel: never a silent
  drop. A key or value over the limits the server announced in its
  welcome, or a request larger than a frame may carry, is refused before
  it is sent, citing the server's limit (:class:`ServerInfo`). While
  requests wait, a silent server is pinged and then given up
  (:class:`Liveness`).
* **One** :class:`Call` **per API call**: arguments checked with the
  embedded client's validators (:mod:`dengine.api`), the op, whether it
  writes, whether it must reach the leader, how its result decodes.
* **One** :class:`Router` **per client**: the endpoints, the leader, and the
  node ids learned from welcomes, ``NotLeader`` hints and status answers.
* **One** :class:`Attempts` **per call**: the retry rules of docs/protocol.md
  §7. A call is retried with capped exponential backoff (10 ms doubling to
  500 ms or a quarter of the servers' election timeout, jittered) until its
  deadline, moving between endpoints on
  connection failures, ``Unavailable`` and ``NotLeader`` (whose hint is
  followed at once). A write is retried only when it surely was not
  applied: never written in full, or answered ``NotLeader`` /
  ``ProposalDropped``; after any other failure its outcome is unknown and
  the error says so. A call that must reach the leader keeps the last
  tenth of its time (at most 0.25 s) to find out why it could not -- the
  status of the servers it reached and whether the other members answer at
  all -- so its ``Timeout`` says what was seen ("no leader: 1 of 3 members
  reachable ...") within the caller's deadline.
* **One** :class:`WatchState` **per watch**: where a (re)opened stream
  starts, which replayed events were delivered already (the commands of one
  Raft entry share a revision, so a stream can break inside one), the
  CANCELED end, and whether a watch whose server went away resumes.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
import struct
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from dengine.api import (
    KeyValue,
    LeaderInfo,
    Member,
    MembershipChange,
    ReadConsistency,
    Status,
    WatchEvent,
    WatchEventType,
    validate_key,
    validate_lease_id,
    validate_limit,
    validate_node_id,
    validate_txn,
    validate_range,
    validate_prefix,
    validate_scan_prefix,
    validate_ttl,
    validate_value,
)
from dengine.backup import BackupHeader
from dengine.codec import pack, unpack
from dengine.config import DEFAULT_CLIENT_ADDRESS, parse_address
from dengine.config.addresses import address_argument
from dengine.config import DEFAULT_CLUSTER_ID as _DEFAULT_CLUSTER_ID
from dengine.errors import (
    ClusterError,
    DengineError,
    FrameTooLarge,
    InvalidArgument,
    LeaderChanged,
    MalformedMessage,
    MemberRemoved,
    NotLeader,
    ProposalDropped,
    ProtocolError,
    ResourceExhausted,
    Timeout,
    Unavailable,
    error_for_code,
)
from dengine.transport.client_protocol import (
    STATUS_ITEM,
    STATUS_OK,
    Response,
    decode_flag,
    decode_kv,
    decode_lease,
    decode_lease_status,
    decode_leases,
    decode_remaining,
    decode_txn_result,
    encode_txn_request,
    decode_leader,
    decode_member,
    decode_members,
    decode_membership_change,
    decode_response,
    decode_revision,
    decode_scan,
    decode_status,
    decode_value,
    decode_values,
    decode_watch_item,
    encode_request,
    error_from_map,
)

__all__ = [
    "DEFAULT_CLUSTER_ID",
    "DEFAULT_ENDPOINT",
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Attempts",
    "Call",
    "ConnectionEnded",
    "ConnectionLost",
    "ConnectionState",
    "Endpoint",
    "Expired",
    "Liveness",
    "Next",
    "Router",
    "ServerInfo",
    "StreamBuffer",
    "StreamClosed",
    "StreamEnded",
    "WatchState",
    "backoff_delay",
    "calls",
    "check_keepalive",
    "check_timeout",
    "describe_error",
    "keepalive_timeout",
    "parse_endpoints",
]

#: docs/protocol.md §2: the client protocol version this client speaks.
PROTOCOL_VERSION: Final = 1
#: docs/protocol.md §1: the default ``transport.max_frame_size`` (16 MiB).
#: Equal to dengine.transport.framing.DEFAULT_MAX_FRAME_SIZE (a test pins
#: it), which this module cannot import: that module imports trio.
MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
#: docs/protocol.md §1: the hello and the welcome are at most 64 KiB.
HANDSHAKE_MAX_FRAME_SIZE: Final = 64 * 1024
#: The defaults of ``cluster.id`` and ``node.client_address``.
DEFAULT_CLUSTER_ID: Final = _DEFAULT_CLUSTER_ID
DEFAULT_ENDPOINT: Final = DEFAULT_CLIENT_ADDRESS

BACKOFF_MIN: Final = 0.01
BACKOFF_MAX: Final = 0.5
#: How long connecting to one endpoint may take, at most.
CONNECT_TIMEOUT: Final = 5.0
#: Of a call that must reach the leader, the share of its time (at most
#: DIAGNOSIS_MAX seconds) kept to find out why it could not.
DIAGNOSIS_SHARE: Final = 0.1
DIAGNOSIS_MAX: Final = 0.25

#: The shortest keepalive timeout a server's election timeout gives.
KEEPALIVE_MIN: Final = 0.5
#: The shortest time a handshake is given, whatever the keepalive timeout.
HANDSHAKE_MIN: Final = 0.5

_HEADER = struct.Struct(">I")
# Sizes the client does not know (the server checks its own, docs/protocol.md
# §4): only what fits in one frame is refused, by ConnectionState.
_NO_LIMIT = 2**63
_SCHEMES = {"http": False, "https": True}


# --------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------


@attrs.frozen
class Endpoint:
    """One server's client address. ``tls``: True for ``https://``, False
    for ``http://``, None when no scheme was written."""

    address: str
    host: str
    port: int
    tls: bool | None = None


def parse_endpoint(text: str) -> Endpoint:
    if not isinstance(text, str):
        raise InvalidArgument(f"an endpoint is a 'host:port' string, got {type(text).__name__}")
    raw = text.strip()
    tls: bool | None = None
    scheme, sep, rest = raw.partition("://")
    if sep:
        if scheme.lower() not in _SCHEMES:
            raise InvalidArgument(
                f"endpoint {text!r}: the scheme {scheme + sep!r} is not one dengine speaks; "
                "write 'host:port' (http:// and https:// are accepted too)"
            )
        tls = _SCHEMES[scheme.lower()]
        rest = rest.rstrip("/")
        for mark in ("/", "?", "#", "@"):
            if mark in rest:
                raise InvalidArgument(
                    f"endpoint {text!r} has more than a host and a port; dengine endpoints are "
                    "'host:port' (or 'http://host:port'), with no path, user or query"
                )
        raw = rest
    try:
        host, port = parse_address(raw, allow_port_zero=False)
    except InvalidArgument as exc:
        raise InvalidArgument(f"endpoint {text!r}: {exc.message}") from None
    return Endpoint(address=raw, host=host, port=port, tls=tls)


def parse_endpoints(endpoints: Sequence[str] | str) -> list[Endpoint]:
    """``["host:port", ...]`` or one comma-separated string; at least one;
    duplicates dropped; TLS and plain endpoints not mixed."""
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",")]
    out: list[Endpoint] = []
    for text in endpoints:
        if isinstance(text, str) and not text.strip():
            continue
        ep = parse_endpoint(text)
        if all(ep.address != o.address for o in out):
            out.append(ep)
    if not out:
        raise InvalidArgument("at least one endpoint 'host:port' is needed")
    if any(e.tls is True for e in out) and any(e.tls is False for e in out):
        raise InvalidArgument("the endpoints mix https:// (TLS) and http:// (plain TCP); a cluster speaks one")
    return out


def wants_tls(endpoints: Iterable[Endpoint], tls_configured: bool) -> bool:
    """Whether to connect with TLS; refuses ``http://`` with TLS configured."""
    eps = list(endpoints)
    if tls_configured and any(e.tls is False for e in eps):
        raise InvalidArgument(
            "TLS is configured (a CA or an SSL context) but the endpoints say http://; use https:// or no scheme"
        )
    return tls_configured or any(e.tls for e in eps)


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 or math.isnan(timeout):
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def check_keepalive(keepalive_timeout: object) -> float | None:
    """None (the server's election timeout), a positive number of seconds,
    or ``math.inf`` (no keepalive)."""
    if keepalive_timeout is None:
        return None
    if (isinstance(keepalive_timeout, bool) or not isinstance(keepalive_timeout, (int, float))
            or not keepalive_timeout > 0 or math.isnan(keepalive_timeout)):
        raise InvalidArgument(
            f"keepalive_timeout must be None, a positive number of seconds or math.inf, got {keepalive_timeout!r}"
        )
    return float(keepalive_timeout)


def check_cluster_id(cluster_id: object) -> str:
    if cluster_id is None:
        return DEFAULT_CLUSTER_ID
    if not isinstance(cluster_id, str) or not cluster_id:
        raise InvalidArgument(f"cluster_id must be a non-empty string, got {cluster_id!r}")
    return cluster_id


def connect_timeout(deadline: float, now: float, silence: float = math.inf) -> float:
    """How long connecting and the handshake may take, for a call with
    ``deadline``: at most CONNECT_TIMEOUT, and at most ``silence`` (the
    client's keepalive timeout, once known; never below HANDSHAKE_MIN) --
    a server that does not answer a hello that long is paused or cut off,
    like one that does not answer a ping."""
    limit = CONNECT_TIMEOUT if silence == math.inf else min(CONNECT_TIMEOUT, max(HANDSHAKE_MIN, silence))
    return max(0.001, min(limit, deadline - now))


def backoff_delay(attempt: int, rng: random.Random, cap: float = BACKOFF_MAX) -> float:
    """10 ms doubling to ``cap`` (500 ms, or a quarter of the servers'
    election timeout when that is shorter), jittered to 50-100 %."""
    delay: float = min(cap, BACKOFF_MAX, BACKOFF_MIN * (2 ** min(attempt, 16)))
    return delay * (0.5 + rng.random() / 2)


# --------------------------------------------------------------------------
# What a server tells a client in its welcome, and keepalive
# --------------------------------------------------------------------------


def _positive_int(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


@attrs.frozen
class ServerInfo:
    """What a server's welcome says of it (docs/protocol.md §2); None where
    it said nothing (an older server), and then the server's own answers
    name its limits."""

    max_key_size: int | None = None
    max_value_size: int | None = None
    max_frame_size: int | None = None
    election_timeout: float | None = None  # seconds

    @classmethod
    def from_welcome(cls, info: Any) -> ServerInfo:
        if type(info) is not dict:
            return cls()
        et = _positive_int(info.get("election_timeout_ms"))
        return cls(
            max_key_size=_positive_int(info.get("max_key_size")),
            max_value_size=_positive_int(info.get("max_value_size")),
            max_frame_size=_positive_int(info.get("max_frame_size")),
            election_timeout=None if et is None else et / 1000,
        )


class Liveness:
    """When a connection with requests waiting should ping its server, and
    when silence means the server is gone (paused, cut off, its host
    down): docs/protocol.md §7.

    While at least one unary request waits, a connection that has received
    nothing for ``timeout / 2`` sends a ``leader`` request (answered at
    once by the server's reader, whatever its Raft state); one that has
    received nothing for ``timeout`` is closed, and its requests fail with
    ConnectionLost (a write's outcome is then unknown; a read is retried
    elsewhere). A connection with no request waiting is never closed for
    silence (an idle watch is silent by design). ``timeout`` is inf: off.
    """

    PING: Final = "ping"
    DEAD: Final = "dead"

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self.heard = now  # last bytes received, or when requests began to wait
        self._pinged_at = -math.inf

    def received(self, now: float) -> None:
        self.heard = now

    def busy(self, now: float) -> None:
        """A request starts waiting on a connection that had none waiting:
        silence counts from now."""
        if now > self.heard:
            self.heard = now

    def next_check(self) -> float:
        """When :meth:`check` has something to say next (inf: never)."""
        if self.timeout == math.inf:
            return math.inf
        ping_at = self.heard + self.timeout / 2
        return ping_at if self._pinged_at <= self.heard else self.heard + self.timeout

    def check(self, now: float) -> str | None:
        """PING, DEAD or None; call it while requests wait."""
        silent = now - self.heard
        if silent >= self.timeout:
            return self.DEAD
        if silent >= self.timeout / 2 and self._pinged_at <= self.heard:
            self._pinged_at = now
            return self.PING
        return None

    def silence(self, endpoint: str, now: float) -> str:
        """The reason a connection closed for silence gives its requests."""
        return (f"no answer from {endpoint} for {now - self.heard:.2f} s, not even to a ping "
                "(the server may be paused, overloaded or cut off)")


def keepalive_timeout(configured: float | None, info: ServerInfo) -> float:
    """A connection's keepalive timeout: the caller's (inf: off), else the
    server's election timeout (a leader silent that long has been replaced
    or is about to be), else off."""
    if configured is not None:
        return configured
    if info.election_timeout is not None:
        return max(KEEPALIVE_MIN, info.election_timeout)
    return math.inf


# --------------------------------------------------------------------------
# Errors the clients raise between themselves and this core
# --------------------------------------------------------------------------


class ConnectionLost(Exception):
    """The connection broke before the answer came. ``sent``: the request
    had been written in full (the server may have acted on it)."""

    def __init__(self, endpoint: str, *, sent: bool, reason: str = "") -> None:
        super().__init__(f"the connection to {endpoint} was lost" + (f" ({reason})" if reason else ""))
        self.endpoint = endpoint
        self.sent = sent
        self.reason = reason


class Expired(Exception):
    """A request's deadline passed before its answer came. ``sent``: its
    frame had been written (the server may act on it)."""

    def __init__(self, *, sent: bool) -> None:
        super().__init__("the request's deadline passed before its answer came")
        self.sent = sent


class ConnectionEnded(Exception):
    """The server ended the connection (a connection-level error, or an
    answer that breaks the protocol); ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamEnded(Exception):
    """The server ended a stream normally (its final ``ok``)."""


class StreamClosed(Exception):
    """The application closed the stream."""


def describe_error(exc: BaseException) -> str:
    """What a connection failure looked like, in a few words."""
    if isinstance(exc, DengineError):
        return exc.message
    if isinstance(exc, ConnectionLost):
        return exc.reason or "the connection was lost"
    if isinstance(exc, Expired):
        return "no answer in time"
    name = type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is a dengine server running there?)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, TimeoutError) or name == "TooSlowError":
        return "no answer in time"
    if name == "gaierror":
        return f"cannot resolve the host name ({getattr(exc, 'strerror', None) or exc})"
    if type(exc).__module__ == "ssl" or name.startswith("SSL"):
        reason = getattr(exc, "reason", None) or getattr(exc, "verify_message", None) or str(exc)
        return f"TLS failed: {reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = str(exc) or name
    cause = exc.__cause__ or exc.__context__
    if cause is not None and name in ("BrokenResourceError", "ClosedResourceError"):
        text = describe_error(cause)
    return text


# --------------------------------------------------------------------------
# One connection: handshake, requests, response matching, streams
# --------------------------------------------------------------------------


def _frames(buf: bytearray, max_size: int, limit: float = math.inf) -> list[bytes]:
    """Cut complete frames off the front of ``buf`` (docs/protocol.md §1);
    FrameTooLarge at a header announcing more than ``max_size``."""
    out: list[bytes] = []
    pos, end = 0, len(buf)
    while len(out) < limit and end - pos >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buf, pos)
        if size > max_size:
            buf.clear()
            raise FrameTooLarge(f"frame of {size} bytes exceeds the maximum frame size of {max_size} bytes")
        start = pos + _HEADER.size
        if end - start < size:
            break
        out.append(bytes(buf[start : start + size]))
        pos = start + size
    if pos:
        del buf[:pos]
    return out


def frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


def _looks_like(data: bytes) -> str:
    """What an answer that is not the dengine protocol looked like."""
    head = bytes(data[:16])
    if head.startswith(b"HTTP"):
        return "it answered like an HTTP server"
    if head.startswith(b"SSH-"):
        return "it answered like an SSH server"
    if len(head) >= 2 and head[0] in (0x15, 0x16) and head[1] == 0x03:
        return "it answered with TLS: connect with TLS (--cacert FILE, or an https:// endpoint)"
    shown = head.hex(" ")
    return f"its answer began with the bytes {shown}"


class StreamBuffer:
    """The items of one stream, in order, and how it ended. The IO layer
    sets ``on_change`` to be told when something arrives."""

    def __init__(self, endpoint: str, request_id: int, limit: int) -> None:
        self.endpoint = endpoint
        self.request_id = request_id
        self.items: deque[dict[str, Any]] = deque()
        self.end: BaseException | None = None
        self.limit = limit
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def push(self, response: Response) -> bool:
        """Take one response of this stream; True if it overflowed (the
        caller must cancel it on the server)."""
        if self.end is not None:
            return False
        if response.status == STATUS_ITEM:
            if len(self.items) >= self.limit:
                self.finish(ResourceExhausted(
                    f"the application read stream {self.request_id} too slowly ({self.limit} items unread)"
                ))
                return True
            self.items.append(response.body)
        elif response.status == STATUS_OK:
            self.finish(StreamEnded())
        else:
            self.finish(error_from_map(response.body))
        self._changed()
        return False

    def finish(self, exc: BaseException) -> None:
        if self.end is None:
            self.end = exc
            self._changed()

    def pop(self) -> dict[str, Any] | None:
        """The next item; None if none yet; raises the end after the last."""
        if self.items:
            return self.items.popleft()
        if self.end is not None:
            raise self.end
        return None


class ConnectionState:
    """The protocol state of one client connection (bytes in, bytes out)."""

    def __init__(self, endpoint: str, *, cluster_id: str, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.endpoint = endpoint
        self.cluster_id = cluster_id
        self.max_frame_size = max_frame_size
        self.node_id: int | None = None
        self.info = ServerInfo()  # from the welcome
        self._size_checks: tuple[tuple[str, int, str], ...] = ()
        self._send_limit = max_frame_size
        self.closed: str | None = None
        self._buf = bytearray()
        self._ids = itertools.count(1)
        self._waiting: set[int] = set()
        self._streams: dict[int, StreamBuffer] = {}
        self._outgoing: list[bytes] = []

    # -- handshake (docs/protocol.md §2) -----------------------------------------

    def hello(self) -> bytes:
        return frame(pack(["hello", PROTOCOL_VERSION, self.cluster_id, None, "client"]))

    def receive_handshake(self, data: bytes | bytearray) -> int | None:
        """Feed bytes read before the welcome; the server's node id once the
        welcome is complete (bytes after it stay buffered), else None.
        Raises the refusal's dengine error, or ProtocolError saying what a
        server that does not speak the protocol answered."""
        self._buf += data
        if len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf, 0)
            if size > HANDSHAKE_MAX_FRAME_SIZE:
                raise self.not_dengine(_looks_like(bytes(self._buf)))
        bodies = _frames(self._buf, HANDSHAKE_MAX_FRAME_SIZE, limit=1)
        if not bodies:
            return None
        try:
            reply = unpack(bodies[0], what="handshake reply")
        except MalformedMessage:
            raise self.not_dengine(_looks_like(frame(bodies[0]))) from None
        # ["welcome", node_id], or with its client address and an info map
        # after it (fields a client does not know are ignored).
        if type(reply) is list and len(reply) >= 2 and reply[0] == "welcome":
            node_id = reply[1]
            if type(node_id) is int and node_id >= 0:
                self.node_id = node_id
                if len(reply) >= 4:
                    self._learn(ServerInfo.from_welcome(reply[3]))
                return node_id
        if type(reply) is list and len(reply) == 3 and reply[0] == "error":
            code, message = reply[1], reply[2]
            if type(code) is int and type(message) is str:
                raise _refusal(code, f"the server at {self.endpoint} refused the handshake: {message}")
        raise self.not_dengine(f"its first answer was {reply!r:.60}, not a welcome")

    def not_dengine(self, how: str) -> ProtocolError:
        return ProtocolError(f"{self.endpoint} does not speak the dengine protocol ({how})")

    def handshake_ended(self) -> ProtocolError:
        """The error for a server that closed the connection before welcoming."""
        if self._buf:
            return self.not_dengine(_looks_like(bytes(self._buf)) + ", then closed the connection")
        return ProtocolError(
            f"{self.endpoint} closed the connection without answering the handshake "
            "(is it a dengine client port? a TLS port needs --cacert or an https:// endpoint)"
        )

    def handshake_timed_out(self, seconds: float) -> Timeout:
        return Timeout(
            f"{self.endpoint} accepted the connection but did not answer the handshake within {seconds:g} s "
            "(is it a dengine client port?)"
        )

    # -- requests (docs/protocol.md §3) -------------------------------------------

    def _learn(self, info: ServerInfo) -> None:
        self.info = info
        checks = []
        for name, limit, setting in (("key", info.max_key_size, "raft.max_key_size"),
                                     ("prefix", info.max_key_size, "raft.max_key_size"),
                                     ("value", info.max_value_size, "raft.max_value_size"),
                                     ("new", info.max_value_size, "raft.max_value_size")):
            if limit is not None:
                checks.append((name, limit, setting))
        self._size_checks = tuple(checks)
        if info.max_frame_size is not None:
            self._send_limit = min(self.max_frame_size, info.max_frame_size)

    def _check_sizes(self, args: Mapping[str, Any]) -> None:
        """Keys and values over the limits this server announced are refused
        before they are sent, citing the server's limit."""
        for name, limit, setting in self._size_checks:
            data = args.get(name)
            if type(data) is bytes and len(data) > limit:
                what = "value" if name == "new" else name
                raise InvalidArgument(
                    f"{what} is {len(data)} bytes, larger than the limit of {limit} bytes of the server at "
                    f"{self.endpoint} (its {setting})"
                )

    def _frame_of(self, rid: int, op: str, args: Mapping[str, Any]) -> bytes:
        if self._size_checks:
            self._check_sizes(args)
        body = encode_request(rid, op, args)
        limit = self._send_limit
        if len(body) > limit:
            raise InvalidArgument(
                f"this {op} request is {len(body)} bytes, more than one frame may carry "
                f"({limit} bytes, transport.max_frame_size); servers refuse values over "
                "their raft.max_value_size long before that"
            )
        return frame(body)

    def ping(self) -> bytes:
        """A keepalive request (``leader``, answered at once by any server);
        its answer is waited for by nobody and dropped."""
        return self._frame_of(next(self._ids), "leader", {})

    def request(self, op: str, args: Mapping[str, Any]) -> tuple[int, bytes]:
        """A new unary request: its id and its frame."""
        if self.closed is not None:
            raise ConnectionLost(self.endpoint, sent=False, reason=self.closed)
        rid = next(self._ids)
        data = self._frame_of(rid, op, args)
        self._waiting.add(rid)
        return rid, data

    def forget(self, rid: int) -> None:
        """Nobody waits for ``rid`` any more; its answer will be dropped."""
        self._waiting.discard(rid)

    def stream(self, op: str, args: Mapping[str, Any], *, limit: int) -> tuple[StreamBuffer, bytes]:
        """A new stream request: its buffer and its frame."""
        if self.closed is not None:
            raise ConnectionLost(self.endpoint, sent=False, reason=self.closed)
        rid = next(self._ids)
        data = self._frame_of(rid, op, args)
        buffer = StreamBuffer(self.endpoint, rid, limit)
        self._streams[rid] = buffer
        return buffer, data

    def cancel(self, buffer: StreamBuffer) -> bytes | None:
        """The application closed a stream: forget it; the cancel frame to
        send, or None if the stream had ended already."""
        ended = buffer.end is not None
        buffer.finish(StreamClosed("this stream was closed"))
        if self._streams.pop(buffer.request_id, None) is None or ended or self.closed is not None:
            return None
        return self._cancel_frame(buffer.request_id)

    def _cancel_frame(self, rid: int) -> bytes:
        return self._frame_of(next(self._ids), "cancel", {"request_id": rid})

    def outgoing(self) -> list[bytes]:
        """Frames this state wants sent (cancels of overflowed streams)."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- responses -----------------------------------------------------------------

    def receive(self, data: bytes | bytearray) -> list[tuple[int, Response]]:
        """Feed bytes; the final answers of the unary requests still waited
        for. Stream items go to their buffers. Raises ConnectionEnded when
        the server ended the connection or broke the protocol."""
        try:
            bodies = _frames(self._buf, self.max_frame_size)
            if data:
                self._buf += data
                bodies += _frames(self._buf, self.max_frame_size)
        except FrameTooLarge as exc:
            raise ConnectionEnded(f"the server broke the protocol: {exc.message}") from None
        answers: list[tuple[int, Response]] = []
        for body in bodies:
            try:
                response = decode_response(body)
            except DengineError as exc:
                raise ConnectionEnded(f"the server broke the protocol: {exc.message}") from None
            rid = response.id
            if rid is None:
                raise ConnectionEnded(f"the server closed the connection: {error_from_map(response.body)}")
            buffer = self._streams.get(rid)
            if buffer is not None:
                if buffer.push(response):
                    del self._streams[rid]
                    if self.closed is None:
                        self._outgoing.append(self._cancel_frame(rid))
                elif response.final:
                    del self._streams[rid]
                continue
            if rid in self._waiting and response.final:
                self._waiting.discard(rid)
                answers.append((rid, response))
            # anything else answers a request nobody waits for any more
        return answers

    def close(self, reason: str) -> None:
        """The connection is gone: every stream ends with ConnectionLost."""
        if self.closed is None:
            self.closed = reason
        for buffer in self._streams.values():
            buffer.finish(ConnectionLost(self.endpoint, sent=True, reason=reason))
        self._streams.clear()
        self._waiting.clear()
        self._outgoing = []


def _refusal(code: int, text: str) -> DengineError:
    cls = error_for_code(code)
    try:
        err = cls(text)
    except Exception:  # a class with another constructor: keep the code
        return ProtocolError(f"{text} (code {code})")
    if cls is DengineError:
        return ProtocolError(f"{text} (unknown error code {code})")
    return err


def result_of(response: Response) -> dict[str, Any]:
    """The result map of a final response, or raise its error."""
    if response.status != STATUS_OK:
        raise error_from_map(response.body)
    return response.body


# --------------------------------------------------------------------------
# Calls: arguments in, result out
# --------------------------------------------------------------------------


class Call:
    """One API call: its op and arguments, how its answer decodes, whether
    it writes, whether it must reach the leader, its own timeout (None: the
    client's). A plain slotted class: one is built per call."""

    __slots__ = ("args", "decode", "op", "timeout", "to_leader", "write")

    def __init__(self, op: str, args: dict[str, Any], decode: Callable[[dict[str, Any]], Any], *,
                 write: bool = False, to_leader: bool = False, timeout: float | None = None) -> None:
        self.op = op
        self.args = args
        self.decode = decode
        self.write = write
        self.to_leader = to_leader
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Call({self.op!r}, {self.args!r}, write={self.write}, to_leader={self.to_leader})"


_LEVELS: dict[object, str] = {**{m: m.value for m in ReadConsistency}, **{m.value: m.value for m in ReadConsistency}}


def _level(value: ReadConsistency | str | None) -> str | None:
    if value is None:
        return None
    known = _LEVELS.get(value)  # the common spellings, without parsing per call
    return known if known is not None else ReadConsistency.parse(value).value


def _timeout(timeout: float | None) -> float | None:
    return None if timeout is None else check_timeout(timeout)


class calls:  # noqa: N801 - a namespace of constructors, read as calls.put(...)
    """The Call of every API method. Keys and values are checked with the
    embedded client's validators; sizes only against what one frame can
    carry (``max_key_size`` / ``max_value_size`` None): the server checks its
    own limits and its answer names them."""

    @staticmethod
    def _key(key: object, max_key_size: int | None) -> bytes:
        return validate_key(key, _NO_LIMIT if max_key_size is None else max_key_size)

    @staticmethod
    def _value(value: object, max_value_size: int | None) -> bytes:
        return validate_value(value, _NO_LIMIT if max_value_size is None else max_value_size)

    @staticmethod
    def put(key: bytes, value: bytes, *, ttl: float | None, timeout: float | None,
            max_key_size: int | None = None, max_value_size: int | None = None, lease: int = 0) -> Call:
        calls._key(key, max_key_size)
        calls._value(value, max_value_size)
        ttl_ms = validate_ttl(ttl)
        args = {"key": key, "value": value, "ttl_ms": ttl_ms}
        if validate_lease_id(lease, allow_zero=True):
            if ttl_ms is not None:
                raise InvalidArgument("a put takes a lease or a ttl, not both")
            args["lease"] = lease
        return Call("put", args, decode_revision, write=True, to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def txn(compare: Any, success: Any, failure: Any, *, timeout: float | None, max_txn_ops: int | None = None,
            max_key_size: int | None = None, max_value_size: int | None = None) -> Call:
        limit = _NO_LIMIT
        c, s, f = validate_txn(compare, success, failure, max_ops=max_txn_ops or limit,
                               max_key_size=max_key_size or limit, max_value_size=max_value_size or limit)
        return Call("txn", encode_txn_request(c, s, f), lambda body: decode_txn_result(body, s, f), write=True,
                    to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def grant_lease(ttl: float, *, lease_id: int = 0, timeout: float | None) -> Call:
        ttl_ms = validate_ttl(ttl)
        args = {"ttl_ms": ttl_ms, "id": validate_lease_id(lease_id, allow_zero=True) or None}
        return Call("lease_grant", args, decode_lease, write=True, to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def revoke_lease(lease_id: int, *, timeout: float | None) -> Call:
        return Call("lease_revoke", {"id": validate_lease_id(lease_id)}, lambda body: None, write=True,
                    to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def keep_alive(lease_id: int, *, timeout: float | None) -> Call:
        # Not a write: renewing twice is harmless, so it is retried like a read.
        return Call("lease_keep_alive", {"id": validate_lease_id(lease_id)}, decode_remaining, to_leader=True,
                    timeout=_timeout(timeout))

    @staticmethod
    def lease_time_to_live(lease_id: int, *, keys: bool, timeout: float | None) -> Call:
        args = {"id": validate_lease_id(lease_id), "keys": True if keys else None}
        return Call("lease_ttl", args, decode_lease_status, to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def leases(*, timeout: float | None) -> Call:
        return Call("lease_list", {}, decode_leases, to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def delete(key: bytes, *, timeout: float | None, max_key_size: int | None = None) -> Call:
        calls._key(key, max_key_size)
        return Call("delete", {"key": key}, lambda body: decode_flag(body, "deleted"),
                    write=True, to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def compare_and_swap(key: bytes, *, expected: bytes | None, new: bytes, ttl: float | None,
                         timeout: float | None, max_key_size: int | None = None,
                         max_value_size: int | None = None) -> Call:
        calls._key(key, max_key_size)
        if expected is not None:
            calls._value(expected, max_value_size)
        calls._value(new, max_value_size)
        ttl_ms = validate_ttl(ttl)
        return Call("cas", {"key": key, "expected": expected, "new": new, "ttl_ms": ttl_ms},
                    lambda body: decode_flag(body, "swapped"), write=True, to_leader=True,
                    timeout=_timeout(timeout))

    @staticmethod
    def _read(op: str, args: dict[str, Any], decode: Callable[[dict[str, Any]], Any],
              consistency: ReadConsistency | str | None, timeout: float | None) -> Call:
        level = _level(consistency)
        return Call(op, {**args, "consistency": level}, decode,
                    to_leader=level != ReadConsistency.EVENTUAL.value, timeout=_timeout(timeout))

    @staticmethod
    def get_kv(key: bytes, *, consistency: ReadConsistency | str | None, timeout: float | None,
               max_key_size: int | None = None) -> Call:
        calls._key(key, max_key_size)
        return calls._read("get", {"key": key}, lambda body: decode_kv(key, body), consistency, timeout)

    @staticmethod
    def get(key: bytes, *, consistency: ReadConsistency | str | None, timeout: float | None,
            max_key_size: int | None = None) -> Call:
        calls._key(key, max_key_size)

        return calls._read("get", {"key": key}, decode_value, consistency, timeout)

    @staticmethod
    def get_many(keys: Sequence[bytes], *, consistency: ReadConsistency | str | None, timeout: float | None,
                 max_key_size: int | None = None) -> Call:
        if isinstance(keys, (bytes, str)):
            raise InvalidArgument("keys must be a list of bytes keys, not a single key")
        keys = list(keys)
        for key in keys:
            calls._key(key, max_key_size)
        count = len(keys)
        return calls._read("get_many", {"keys": keys}, lambda body: decode_values(body, count), consistency, timeout)

    @staticmethod
    def scan_prefix(prefix: bytes, *, consistency: ReadConsistency | str | None, timeout: float | None,
                    max_key_size: int | None = None, limit: int | None = None, keys_only: bool = False,
                    count_only: bool = False) -> Call:
        validate_scan_prefix(prefix, _NO_LIMIT if max_key_size is None else max_key_size)
        args = {"prefix": prefix, **calls._scan_args(limit, keys_only, count_only)}
        return calls._read("scan_prefix", args, decode_scan, consistency, timeout)

    @staticmethod
    def scan_range(start: bytes, end: bytes | None, *, consistency: ReadConsistency | str | None,
                   timeout: float | None, max_key_size: int | None = None, limit: int | None = None,
                   keys_only: bool = False, count_only: bool = False) -> Call:
        validate_range(start, end, _NO_LIMIT if max_key_size is None else max_key_size)
        args = {"start": start, "end": end, **calls._scan_args(limit, keys_only, count_only)}
        return calls._read("scan_range", args, decode_scan, consistency, timeout)

    @staticmethod
    def _scan_args(limit: int | None, keys_only: bool, count_only: bool) -> dict[str, Any]:
        # Only what differs from the defaults goes on the wire (older servers know none of it).
        args: dict[str, Any] = {}
        if validate_limit(limit) is not None:
            args["limit"] = limit
        if keys_only:
            args["keys_only"] = True
        if count_only:
            args["count_only"] = True
        return args

    @staticmethod
    def status(*, timeout: float | None) -> Call:
        return Call("status", {}, decode_status, timeout=_timeout(timeout))

    @staticmethod
    def members(*, timeout: float | None) -> Call:
        return Call("members", {}, decode_members, timeout=_timeout(timeout))

    @staticmethod
    def leader(*, timeout: float | None) -> Call:
        return Call("leader", {}, decode_leader, timeout=_timeout(timeout))

    # Membership changes go to the leader and are retried only when surely
    # not applied (NotLeader, or another change in flight), like writes.

    @staticmethod
    def add_member(peer_address: str, *, learner: bool, node_id: int | None, client_address: str | None,
                   timeout: float | None) -> Call:
        client = None if client_address is None else address_argument(client_address, "client_address")
        args = {"peer_address": address_argument(peer_address, "peer_address"), "client_address": client,
                "learner": bool(learner), "node_id": None if node_id is None else validate_node_id(node_id)}
        return Call("add_member", args, decode_member, write=True, to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def promote_member(node_id: int, *, timeout: float | None) -> Call:
        return Call("promote_member", {"node_id": validate_node_id(node_id)}, decode_member, write=True,
                    to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def remove_member(node_id: int, *, timeout: float | None) -> Call:
        return Call("remove_member", {"node_id": validate_node_id(node_id)}, lambda body: None, write=True,
                    to_leader=True, timeout=_timeout(timeout))

    @staticmethod
    def update_member(node_id: int, *, peer_address: str | None, client_address: str | None,
                      timeout: float | None) -> Call:
        if peer_address is None and client_address is None:
            raise InvalidArgument("update_member needs a peer_address or a client_address")
        args = {"node_id": validate_node_id(node_id),
                "peer_address": None if peer_address is None else address_argument(peer_address, "peer_address"),
                "client_address": None if client_address is None else address_argument(client_address, "client_address")}
        return Call("update_member", args, decode_member, write=True, to_leader=True, timeout=_timeout(timeout))




# --------------------------------------------------------------------------
# Routing: endpoints, the leader, node ids
# --------------------------------------------------------------------------


class Router:
    """Where a client's requests go."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.endpoints: list[str] = list(endpoints)
        self.leader: str | None = None
        self.node_endpoints: dict[int, str] = {}  # from welcomes, hints, leader answers
        #: The servers' election timeout, from the latest welcome that said it.
        self.election_timeout: float | None = None
        #: Endpoints whose connection failed or broke since their last
        #: welcome: tried only when every other endpoint is in here too.
        self.unreachable: set[str] = set()
        self._next = 0

    def silence(self, configured: float | None) -> float:
        """The keepalive timeout of a new connection before its welcome: the
        caller's, else the election timeout other servers announced."""
        return keepalive_timeout(configured, ServerInfo(election_timeout=self.election_timeout))

    def rotate(self, avoid: str | None = None) -> str:
        """The next endpoint in turn, skipping ``avoid`` and, while others
        remain, the unreachable ones."""
        n = len(self.endpoints)
        fallback: int | None = None
        for i in range(n):
            at = (self._next + i) % n
            endpoint = self.endpoints[at]
            if endpoint == avoid and n > 1:
                continue
            if endpoint not in self.unreachable:
                self._next = at + 1
                return endpoint
            if fallback is None:
                fallback = at
        at = fallback if fallback is not None else self._next % n
        self._next = at + 1
        return self.endpoints[at]

    def pick(self, to_leader: bool, avoid: str | None, connected: Iterable[str] = ()) -> str:
        """Writes and linearizable / lease reads: the leader if known; eventual
        reads: a server already connected; else the next endpoint."""
        if to_leader and self.leader is not None and self.leader != avoid:
            return self.leader
        if not to_leader:
            for endpoint in connected:
                if endpoint != avoid:
                    return endpoint
        return self.rotate(avoid)

    def welcomed(self, endpoint: str, node_id: int, info: ServerInfo | None = None) -> None:
        self.node_endpoints[node_id] = endpoint
        self.unreachable.discard(endpoint)
        if info is not None and info.election_timeout is not None:
            self.election_timeout = info.election_timeout

    def backoff_cap(self) -> float:
        """Retries back off to at most a quarter of an election timeout: a
        new leader is found about as soon as it is elected."""
        et = self.election_timeout
        return BACKOFF_MAX if et is None else max(BACKOFF_MIN, min(BACKOFF_MAX, et / 4))

    def dropped(self, endpoint: str) -> None:
        """Connecting to ``endpoint`` failed, or its connection broke."""
        self.unreachable.add(endpoint)
        if self.leader == endpoint:
            self.leader = None

    def learn(self, node_id: int | None, address: str | None) -> None:
        if node_id is not None and address is not None:
            self.node_endpoints.setdefault(node_id, address)

    def learn_members(self, members: Iterable[Member]) -> None:
        for m in members:
            self.learn(m.node_id, m.client_address)

    def follow_hint(self, exc: NotLeader) -> bool:
        """Point at the hinted leader; True if the hint names a server to try."""
        target = exc.leader_address
        if target is None and exc.leader_id is not None:
            target = self.node_endpoints.get(exc.leader_id)
        if target is None:
            self.leader = None
            return False
        if target not in self.endpoints:
            self.endpoints.append(target)
        self.leader = target
        return True


# --------------------------------------------------------------------------
# Retries: the rules of one call
# --------------------------------------------------------------------------


class Next(enum.Enum):
    """What a client does after a failed attempt."""

    RETRY = "retry at once"  # follow a leader hint
    BACKOFF = "back off, then retry"
    GIVE_UP = "give up"  # the deadline passed


class Attempts:
    """The retry decisions of one call (docs/protocol.md §7).

    The client loop::

        while True:
            endpoint = attempts.target(connected)
            connect if needed; on failure: attempts.connect_failed(endpoint, exc) (may raise)
            else: attempts.sending(); request with attempts.args(now) until attempts.request_deadline
                  answered: return attempts.answered(endpoint, body)
                  failed: next = attempts.failed(endpoint, exc) (may raise)
            delay = attempts.backoff(now) unless next is RETRY; None: stop; else sleep it
        diagnosis = attempts.diagnosis(); if any: ask what it asks (status, probes) until attempts.deadline
        raise attempts.timeout_error(diagnosis)
    """

    def __init__(self, call: Call, router: Router, *, limit: float, now: float, rng: random.Random) -> None:
        self.call = call
        self.router = router
        self.limit = limit
        self.rng = rng
        self.deadline = now + limit
        reserve = min(DIAGNOSIS_MAX, limit * DIAGNOSIS_SHARE) if call.to_leader else 0.0
        #: Attempts end here; the rest of the time is for the diagnosis.
        self.request_deadline = self.deadline - reserve
        self.unknown = False  # a write of ours may have been applied
        self.last: BaseException | None = None
        self.last_where: str | None = None  # the endpoint of `last`
        self.avoid: str | None = None
        self.attempt = 0
        self.seen: dict[str, str] = {}  # endpoint -> what it last did
        self.reached: dict[str, int] = {}  # endpoint -> node id, handshakes of this call
        self._was_unknown = False

    # -- where and how --------------------------------------------------------------

    def target(self, connected: Iterable[str] = ()) -> str:
        endpoint = self.router.pick(self.call.to_leader, self.avoid, connected)
        self.avoid = None
        return endpoint

    def args(self, now: float) -> dict[str, Any]:
        remaining_ms = max(1, int((self.request_deadline - now) * 1000))
        return {**self.call.args, "timeout_ms": remaining_ms}

    # -- outcomes ---------------------------------------------------------------------

    def connected(self, endpoint: str, node_id: int) -> None:
        self.reached[endpoint] = node_id
        self.router.welcomed(endpoint, node_id)

    def connect_failed(self, endpoint: str, exc: BaseException) -> None:
        """Connecting (or the handshake) failed: try elsewhere, unless it was
        a refusal retrying cannot help (wrong cluster, protocol version, not
        a dengine server): that is raised."""
        self.router.dropped(endpoint)
        self._saw(endpoint, exc)
        self.avoid = endpoint
        if isinstance(exc, ProtocolError):
            raise exc

    def sending(self) -> None:
        self._was_unknown, self.unknown = self.unknown, self.unknown or self.call.write

    def answered(self, endpoint: str, body: dict[str, Any]) -> Any:
        result = self.call.decode(body)
        if self.call.to_leader:
            self.router.leader = endpoint
        if self.call.op == "leader":
            info, address = result
            self.router.learn(info.leader_id, address)
            return info
        if self.call.op in ("status", "members"):
            self.router.learn_members(result.members if isinstance(result, Status) else result)
        elif isinstance(result, Member):
            self.router.learn(result.node_id, result.client_address)
        return result

    def _saw(self, endpoint: str, exc: BaseException) -> None:
        self.last, self.last_where = exc, endpoint
        self.seen[endpoint] = describe_error(exc)

    def failed(self, endpoint: str, exc: BaseException) -> Next:
        """A sent request failed; what to do next (or raise)."""
        router, write = self.router, self.call.write
        if isinstance(exc, Expired):
            if not exc.sent:
                self.unknown = self._was_unknown  # never written
            if router.leader == endpoint:
                # A leader that let a whole deadline pass (paused, cut off)
                # is not trusted for the next call: look again.
                router.leader = None
            self.seen.setdefault(endpoint, "no answer in time")
            return Next.GIVE_UP
        if isinstance(exc, ConnectionLost):
            router.dropped(endpoint)
            self._saw(endpoint, exc)
            self.avoid = endpoint
            if not exc.sent:
                self.unknown = self._was_unknown
            elif write:
                why = f" ({exc.reason})" if exc.reason else ""
                raise Unavailable(
                    f"the connection to {endpoint} was lost after the write was sent{why}; "
                    "it may or may not have been applied"
                )
            return Next.BACKOFF
        if isinstance(exc, NotLeader):
            self.unknown = self._was_unknown  # rejected before it entered the log
            self._saw(endpoint, exc)
            if router.follow_hint(exc) and router.leader != endpoint:
                return Next.RETRY  # go straight to the hinted leader
            self.avoid = endpoint
            return Next.BACKOFF
        if isinstance(exc, MemberRemoved):
            self.unknown = self._was_unknown  # refused before anything was proposed
            self._saw(endpoint, exc)
            router.dropped(endpoint)  # tried last from now on
            self.avoid = endpoint
            return Next.RETRY
        if isinstance(exc, ProposalDropped):
            self.unknown = self._was_unknown  # not applied: safe to retry
            self._saw(endpoint, exc)
            return Next.BACKOFF
        if isinstance(exc, (Unavailable, Timeout)):
            self._saw(endpoint, exc)
            if router.leader == endpoint and isinstance(exc, LeaderChanged):
                router.leader = None  # the next call looks for the new leader
            if write:
                if isinstance(exc, (Timeout, LeaderChanged)):
                    raise exc  # already says the outcome is unknown
                raise Unavailable(f"{exc.message} (the write may or may not have been applied)")
            self.avoid = endpoint
            if router.leader == endpoint:
                router.leader = None
            return Next.BACKOFF
        raise exc  # InvalidArgument, ResourceExhausted, ...: the caller's to see

    def backoff(self, now: float) -> float | None:
        """How long to wait before the next attempt; None once no time is left."""
        remaining = self.request_deadline - now
        if remaining <= 0:
            return None
        delay = backoff_delay(self.attempt, self.rng, self.router.backoff_cap())
        self.attempt += 1
        return min(delay, remaining)

    def stream_failed(self, endpoint: str, exc: BaseException) -> Next:
        """Opening a stream (a watch) failed on ``endpoint``: any server will
        do, so try another after a backoff (a refusal retrying cannot help
        is raised)."""
        if isinstance(exc, DengineError) and not isinstance(exc, ClusterError):
            raise exc  # wrong cluster, not a dengine server, bad arguments
        if not isinstance(exc, DengineError):
            self.router.dropped(endpoint)  # a network failure, or ConnectionLost
        self._saw(endpoint, exc)
        self.avoid = endpoint
        return Next.BACKOFF

    def stream_error(self) -> Unavailable:
        last = "" if self.last is None else f"; last error: {self.last_where}: {describe_error(self.last)}"
        return Unavailable(f"no server could open the {self.call.op} stream within {self.limit:g} s{last}")

    # -- giving up ----------------------------------------------------------------------

    def diagnosis(self) -> Diagnosis | None:
        """What to ask before raising the Timeout: only for a call that had
        to reach the leader and never got an answer from one."""
        if not self.call.to_leader or self.router.leader is not None:
            return None
        return Diagnosis(self)

    def timeout_error(self, diagnosis: Diagnosis | None = None) -> Timeout:
        what = f"{self.call.op} did not complete within {self.limit:g} s"
        if self.unknown:
            what += "; it may or may not have been applied"
        seen = diagnosis.summary() if diagnosis is not None else None
        if seen:
            return Timeout(f"{what}: {seen}")
        if self.last is not None:
            last = describe_error(self.last)
            if self.last_where is not None and self.last_where not in last:
                last = f"{self.last_where}: {last}"
            return Timeout(f"{what}; last error: {last}")
        return Timeout(what)


# --------------------------------------------------------------------------
# Diagnosis: why a call found no leader
# --------------------------------------------------------------------------


class Diagnosis:
    """What a call that never reached a leader saw, asked for in the time it
    kept (Attempts.request_deadline .. deadline): the status of the servers
    it reached, then whether the other members' client addresses answer at
    all. The client asks; this decides whom and says what it means."""

    def __init__(self, attempts: Attempts) -> None:
        self.attempts = attempts
        self.statuses: dict[str, Status] = {}
        self.probed: dict[str, int | str] = {}  # endpoint -> node id, or what failed

    def status_targets(self) -> list[str]:
        """The servers to ask for their status (answered without a leader)."""
        return list(self.attempts.reached) or [e for e in self.attempts.router.endpoints if e not in self.attempts.seen]

    def saw_status(self, endpoint: str, status: Status) -> None:
        self.statuses[endpoint] = status
        self.attempts.reached.setdefault(endpoint, status.node_id)

    def status_failed(self, endpoint: str, exc: BaseException) -> None:
        self.attempts.seen[endpoint] = describe_error(exc)

    def _members(self) -> dict[int, Member]:
        members: dict[int, Member] = {}
        for status in self.statuses.values():
            for m in status.members:
                members.setdefault(m.node_id, m)
        return members

    def probe_targets(self) -> list[str]:
        """Client addresses of members not reached yet: can they be reached?"""
        reached = set(self.attempts.reached.values())
        out = []
        for m in self._members().values():
            if m.node_id not in reached and m.client_address and m.client_address not in self.probed:
                out.append(m.client_address)
        return out

    def saw_probe(self, endpoint: str, outcome: int | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.probed[endpoint] = describe_error(outcome)
            self.attempts.seen[endpoint] = describe_error(outcome)
        else:
            self.probed[endpoint] = outcome
            self.attempts.reached[endpoint] = outcome

    def summary(self) -> str | None:
        att = self.attempts
        if not self.statuses:
            if not att.seen:
                return None
            return "last seen: " + "; ".join(f"{e}: {s}" for e, s in att.seen.items())
        members = self._members()
        reached_ids = set(att.reached.values())
        known = {s.leader_id for s in self.statuses.values() if s.leader_id is not None}
        parts = []
        for endpoint, st in self.statuses.items():
            leader = "knows no leader" if st.leader_id is None else f"follows node {st.leader_id}"
            parts.append(f"node {st.node_id} at {endpoint} is {st.role} in term {st.term} and {leader}")
        for m in members.values():
            if m.node_id in reached_ids:
                continue
            if not m.client_address:
                parts.append(f"node {m.node_id}: no client address known")
            else:
                outcome = self.probed.get(m.client_address) or att.seen.get(m.client_address) or "not tried"
                parts.append(f"node {m.node_id} at {m.client_address}: {outcome}")
        total = len(members) or len(self.statuses)
        reachable = len(reached_ids & set(members)) if members else len(self.statuses)
        if known:
            lead = sorted(known)[0]
            lead_member = members.get(lead)
            where = f" at {lead_member.client_address}" if lead_member is not None and lead_member.client_address else ""
            head = f"node {lead}{where} is said to be the leader but did not answer as one"
        else:
            head = "no leader"
        return f"{head}: {reachable} of {total} members reachable ({'; '.join(parts)})"


# --------------------------------------------------------------------------
# Watches
# --------------------------------------------------------------------------


class WatchState:
    """The delivery state of one watch, across the streams that serve it."""

    def __init__(self, key: bytes, *, prefix: bool, prev_kv: bool, start_revision: int | None,
                 max_key_size: int | None = None) -> None:
        limit = _NO_LIMIT if max_key_size is None else max_key_size
        if prefix:
            validate_prefix(key, limit)
        else:
            validate_key(key, limit)
        if start_revision is not None and (
            isinstance(start_revision, bool) or not isinstance(start_revision, int) or start_revision <= 0
        ):
            raise InvalidArgument(f"start_revision must be a positive integer, got {start_revision!r}")
        self.key = key
        self.prefix = bool(prefix)
        self.prev_kv = bool(prev_kv)
        # Where a (re)opened stream starts, and how many events of that
        # revision were delivered already: the commands of one Raft entry
        # share a revision, so a stream can break in the middle of one.
        self.start: int | None = start_revision
        self.delivered_at_start = 0
        self._skip = 0  # replayed events of revision `start` still to drop
        self.done = False
        self.resumes = 0

    def open_args(self) -> dict[str, Any]:
        """The arguments of the watch request that (re)opens the stream."""
        self._skip = self.delivered_at_start
        return {"key": self.key, "prefix": self.prefix, "prev_kv": self.prev_kv, "start_revision": self.start}

    def opened(self, first: dict[str, Any]) -> None:
        """The stream's first item must be the "created" marker."""
        item = decode_watch_item(first)
        if not isinstance(item, int):
            raise ProtocolError(f"the server answered a watch with {item!r} before confirming it")
        if self.start is None:
            self.start = item

    def resume_hint(self) -> str:
        hint = f"resume with start_revision={self.start}"
        if self.delivered_at_start:
            hint += f" (its first {self.delivered_at_start} events were delivered)"
        return hint

    def lost(self, endpoint: str, exc: BaseException, *, auto_resume: bool) -> None:
        """The stream's server went away: resume (count it), or raise."""
        if not auto_resume:
            self.done = True
            raise Unavailable(f"the watch's server {endpoint} went away ({describe_error(exc)}); {self.resume_hint()}")
        self.resumes += 1

    def item(self, body: dict[str, Any]) -> WatchEvent | None:
        """The event to deliver for one stream item, or None to skip it."""
        item = decode_watch_item(body)
        if isinstance(item, int):
            return None  # a repeated created marker carries nothing new
        if item.type == WatchEventType.CANCELED:
            self.done = True
            return item
        rev = item.revision
        if item.type == WatchEventType.PROGRESS:
            # Everything up to rev was delivered.
            if self.start is None or rev >= self.start:
                self.start, self.delivered_at_start, self._skip = rev + 1, 0, 0
            return item
        if self.start is not None and rev < self.start:
            return None  # before where this stream was asked to start
        if rev == self.start:
            if self._skip:
                self._skip -= 1  # delivered before a resume
                return None
            self.delivered_at_start += 1
        else:
            self.start, self.delivered_at_start, self._skip = rev, 1, 0
        return item


def stream_call(op: str, args: dict[str, Any]) -> Call:
    """A stream's opening request (any server may serve it)."""
    return Call(op, args, lambda body: body)


def leader_item(body: dict[str, Any], router: Router) -> LeaderInfo:
    """One item of a ``watch_leader`` stream (the leader's address learned)."""
    info, address = decode_leader(body)
    router.learn(info.leader_id, address)
    return info


def membership_item(body: dict[str, Any], router: Router) -> MembershipChange:
    """One item of a ``watch_members`` stream (members' addresses learned)."""
    change = decode_membership_change(body)
    router.learn_members(change.members)
    return change


def backup_header(body: dict[str, Any]) -> BackupHeader:
    """The first item of a ``snapshot`` stream."""
    revision, size, crc, cluster = body.get("revision"), body.get("size"), body.get("crc32"), body.get("cluster_id")
    if not (type(revision) is int and type(size) is int and type(crc) is int and type(cluster) is str) or size < 0:
        raise ProtocolError(f"the snapshot stream did not begin with its header: {body!r:.80}")
    return BackupHeader(revision, cluster, size, crc)


def backup_chunk(body: dict[str, Any]) -> bytes:
    """A later item of a ``snapshot`` stream: a piece of the image."""
    chunk = body.get("chunk")
    if type(chunk) is not bytes:
        raise ProtocolError(f"a snapshot stream item must carry a chunk, got {body!r:.80}")
    return chunk
