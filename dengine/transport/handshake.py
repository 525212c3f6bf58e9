"""The connection handshake, shared by the peer and the client protocols.

Rules (protocol version 1):

* The side that connects sends the first frame, a Hello::

      ["hello", protocol_version, cluster_id, node_id, kind]
      ["hello", protocol_version, cluster_id, node_id, kind, client_address]

  ``kind`` is ``"peer"`` (``node_id`` is the sender's node id) or
  ``"client"`` (``node_id`` is nil). A peer may add its own client address
  (``"host:port"`` or nil), so every node learns where each member serves
  clients and its leader hints always carry an address.
* The side that accepts answers with exactly one frame and, on refusal,
  closes the connection::

      ["welcome", node_id]                   # the accepting node's id
      ["welcome", node_id, client_address]   # ... and its client address
      ["welcome", node_id, client_address, info]  # ... and facts for clients
      ["error", code, message]               # a stable code from dengine.errors

  ``info`` (client port only) is a map of what a client should know of
  this server: its ``max_key_size``, ``max_value_size`` and
  ``max_frame_size`` in bytes and its ``election_timeout_ms``. A reader
  ignores keys it does not know, so a server may add more.
* A different ``protocol_version`` is refused with WRONG_PROTOCOL_VERSION
  (checked before anything else of the Hello is read, so a future version
  may change the rest of the layout); a different ``cluster_id`` with
  WRONG_CLUSTER; a client on the peer port, a peer on the client port, an
  unknown node id, or this node's own id with PROTOCOL_ERROR.
* The connecting side checks the Welcome names the node it meant to reach.
* Each side bounds its whole half of the handshake with
  ``fail_after(handshake_timeout)``; the first frame is read under a small
  frame limit (:data:`HANDSHAKE_MAX_FRAME_SIZE`) because the peer is not yet
  known.

The sans-IO half (``encode_*`` / ``decode_*`` / :func:`check_hello`) raises
dengine errors; the trio half (:func:`connect_handshake`,
:func:`accept_handshake`) runs it over a stream.
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any, Literal

import attrs
import trio

from dengine.codec import pack, unpack
from dengine.errors import (
    DengineError,
    ErrorCode,
    MalformedMessage,
    MemberRemoved,
    ProtocolError,
    Timeout,
    WrongCluster,
    WrongProtocolVersion,
    error_for_code,
)
from dengine.transport.framing import FrameDecoder, receive_frame, send_frames

__all__ = [
    "HANDSHAKE_MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Hello",
    "Kind",
    "Refused",
    "Welcome",
    "accept_handshake",
    "check_hello",
    "connect_handshake",
    "decode_hello",
    "decode_reply",
    "encode_hello",
    "encode_reply",
    "refusal_for",
]

PROTOCOL_VERSION = 1
#: The first frame of a connection may not be larger than this.
HANDSHAKE_MAX_FRAME_SIZE = 64 * 1024
# A refusal is a courtesy: never wait long to deliver it.
_REFUSAL_WRITE_TIMEOUT = 1.0
_MAX_ID = 2**64 - 1

Kind = Literal["peer", "client"]
_KINDS = ("peer", "client")


@attrs.frozen(slots=True, kw_only=True)
class Hello:
    protocol_version: int
    cluster_id: str
    node_id: int | None
    kind: Kind = "peer"
    client_address: str | None = None


@attrs.frozen(slots=True)
class Welcome:
    node_id: int
    client_address: str | None = None
    info: dict[str, Any] | None = None


@attrs.frozen(slots=True)
class Refused:
    code: int
    message: str

    def to_exception(self, prefix: str = "") -> DengineError:
        """The dengine error this refusal stands for."""
        cls = error_for_code(self.code)
        text = f"{prefix}{self.message}"
        try:
            return cls(text)
        except Exception:  # a class with a different constructor: keep the code
            return ProtocolError(f"{text} (code {self.code})")


# --------------------------------------------------------------------------
# sans-IO
# --------------------------------------------------------------------------


def _id(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_ID:
        raise MalformedMessage(f"handshake field {name!r} must be a non-negative integer, got {value!r:.60}")
    return value


_MAX_ADDRESS = 300


def _address(value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not 0 < len(value) <= _MAX_ADDRESS:
        raise MalformedMessage(f"handshake field 'client_address' must be a short string or nil, got {value!r:.60}")
    return value


def encode_hello(hello: Hello) -> bytes:
    fields: list[Any] = ["hello", hello.protocol_version, hello.cluster_id, hello.node_id, hello.kind]
    if hello.client_address is not None:
        fields.append(hello.client_address)
    return pack(fields)


def decode_hello(body: bytes) -> Hello:
    """Parse a Hello. A different protocol version raises
    WrongProtocolVersion before the rest is looked at."""
    obj = unpack(body, what="handshake")
    if type(obj) is not list or len(obj) < 2 or obj[0] != "hello":
        raise MalformedMessage(f"the first frame must be a hello, got {obj!r:.80}")
    version = obj[1]
    if type(version) is not int:
        raise MalformedMessage(f"handshake field 'protocol_version' must be an integer, got {version!r:.60}")
    if version != PROTOCOL_VERSION:
        raise WrongProtocolVersion(
            f"protocol version {version} is not supported; this node speaks version {PROTOCOL_VERSION}"
        )
    if len(obj) not in (5, 6):
        raise MalformedMessage(f"a version {PROTOCOL_VERSION} hello has 5 or 6 fields, got {len(obj)}")
    _, _, cluster_id, node_id, kind = obj[:5]
    client_address = _address(obj[5]) if len(obj) == 6 else None
    if type(cluster_id) is not str:
        raise MalformedMessage(f"handshake field 'cluster_id' must be a string, got {cluster_id!r:.60}")
    if kind not in _KINDS:
        raise MalformedMessage(f"handshake field 'kind' must be 'peer' or 'client', got {kind!r:.60}")
    if kind == "peer":
        node_id = _id(node_id, "node_id")
    elif node_id is not None:
        raise MalformedMessage(f"a client hello carries no node id, got {node_id!r:.60}")
    return Hello(protocol_version=version, cluster_id=cluster_id, node_id=node_id, kind=kind,
                 client_address=client_address)


def encode_reply(reply: Welcome | Refused) -> bytes:
    if isinstance(reply, Welcome):
        if reply.info is not None:
            return pack(["welcome", reply.node_id, reply.client_address, reply.info])
        if reply.client_address is not None:
            return pack(["welcome", reply.node_id, reply.client_address])
        return pack(["welcome", reply.node_id])
    return pack(["error", reply.code, reply.message])


def decode_reply(body: bytes) -> Welcome | Refused:
    obj = unpack(body, what="handshake reply")
    if type(obj) is list and len(obj) in (2, 3, 4) and obj[0] == "welcome":
        info = obj[3] if len(obj) == 4 else None
        if info is not None and (type(info) is not dict or not all(type(k) is str for k in info)):
            raise MalformedMessage(f"handshake field 'info' must be a map with string keys, got {info!r:.60}")
        return Welcome(_id(obj[1], "node_id"), _address(obj[2]) if len(obj) >= 3 else None, info)
    if type(obj) is list and len(obj) == 3 and obj[0] == "error":
        code, message = obj[1], obj[2]
        if type(code) is not int or type(message) is not str:
            raise MalformedMessage(f"a handshake error is [\"error\", int code, str message], got {obj!r:.80}")
        return Refused(code, message)
    raise MalformedMessage(f"the handshake reply must be a welcome or an error, got {obj!r:.80}")


def check_hello(
    hello: Hello,
    *,
    cluster_id: str,
    node_id: int,
    kind: Kind,
    known_peers: Container[int] | None = None,
    removed_peers: Container[int] = (),
) -> None:
    """Decide whether this node (``node_id`` of ``cluster_id``, listening for
    ``kind`` connections) accepts ``hello``; raise the reason if not.
    ``known_peers`` (peer kind only) are the node ids allowed to connect;
    ``removed_peers`` were members and are refused with MemberRemoved, so
    such a node learns it was removed."""
    if hello.protocol_version != PROTOCOL_VERSION:
        raise WrongProtocolVersion(
            f"protocol version {hello.protocol_version} is not supported; "
            f"this node speaks version {PROTOCOL_VERSION}"
        )
    if hello.cluster_id != cluster_id:
        raise WrongCluster(
            f"cluster id {hello.cluster_id!r} does not match this node's cluster id {cluster_id!r}"
        )
    if hello.kind != kind:
        if kind == "peer":
            raise ProtocolError(f"this is the peer port of node {node_id}; clients must use the client port")
        raise ProtocolError(f"this is the client port of node {node_id}; peers must use the peer port")
    if kind == "peer":
        if hello.node_id == node_id:
            raise ProtocolError(f"node {hello.node_id} connected to itself (two nodes share an id, or an address is wrong)")
        if hello.node_id in removed_peers:
            raise MemberRemoved(f"node {hello.node_id} was removed from cluster {cluster_id!r}")
        if known_peers is not None and hello.node_id not in known_peers:
            raise ProtocolError(f"node {hello.node_id} is not a known peer of node {node_id} in cluster {cluster_id!r}")


def refusal_for(exc: DengineError) -> Refused:
    return Refused(exc.code or ErrorCode.PROTOCOL_ERROR, exc.message)


# --------------------------------------------------------------------------
# trio helpers
# --------------------------------------------------------------------------


async def _first_frame(stream: trio.abc.ReceiveStream, decoder: FrameDecoder) -> bytes:
    saved = decoder.max_frame_size
    decoder.max_frame_size = min(saved, HANDSHAKE_MAX_FRAME_SIZE)
    try:
        return await receive_frame(stream, decoder)
    finally:
        decoder.max_frame_size = saved


async def connect_handshake(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    hello: Hello,
    *,
    expected_node_id: int | None = None,
    timeout: float = math.inf,
    peer: str = "peer",
) -> Welcome:
    """Connecting side: send ``hello``, read the answer.

    Raises the refusal as its dengine error (WrongCluster,
    WrongProtocolVersion, ProtocolError, ...), ProtocolError if the Welcome
    names another node than ``expected_node_id``, Timeout after
    ``timeout`` seconds, MalformedMessage / FrameTooLarge on garbage.
    ``peer`` names the other side in messages.
    """
    try:
        with trio.fail_after(timeout):
            await send_frames(stream, [encode_hello(hello)])
            reply = decode_reply(await _first_frame(stream, decoder))
    except trio.TooSlowError:
        raise Timeout(f"handshake with {peer} did not complete within {timeout}s") from None
    if isinstance(reply, Refused):
        raise reply.to_exception(f"{peer} refused the handshake: ")
    if expected_node_id is not None and reply.node_id != expected_node_id:
        raise ProtocolError(f"{peer} is node {reply.node_id}, expected node {expected_node_id}")
    return reply


async def accept_handshake(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    *,
    cluster_id: str,
    node_id: int,
    kind: Kind,
    known_peers: Container[int] | None = None,
    removed_peers: Container[int] = (),
    timeout: float = math.inf,
    client_address: str | None = None,
    info: dict[str, Any] | None = None,
) -> Hello:
    """Accepting side: read the Hello, answer Welcome (with this node's
    ``client_address`` and ``info``, if given) or an error frame.

    On refusal the error frame is sent (best effort, briefly) and the reason
    is raised; the caller closes the stream. Timeout after ``timeout``
    seconds.
    """
    try:
        with trio.fail_after(timeout):
            try:
                hello = decode_hello(await _first_frame(stream, decoder))
                check_hello(hello, cluster_id=cluster_id, node_id=node_id, kind=kind, known_peers=known_peers,
                            removed_peers=removed_peers)
            except DengineError as exc:
                await _send_refusal(stream, refusal_for(exc))
                raise
            await send_frames(stream, [encode_reply(Welcome(node_id, client_address, info))])
    except trio.TooSlowError:
        raise Timeout(f"handshake did not complete within {timeout}s") from None
    return hello


async def _send_refusal(stream: trio.abc.SendStream, refusal: Refused) -> None:
    with trio.move_on_after(_REFUSAL_WRITE_TIMEOUT):
        try:
            await send_frames(stream, [encode_reply(refusal)], write_timeout=_REFUSAL_WRITE_TIMEOUT)
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout, OSError):
            pass  # the peer is gone; it will find out from the closed connection
