"""How logs name a remote endpoint and a network failure.

One of each, for the peer transport and the client service (and any later
listener): ``describe_error`` turns an exception caught on a connection into
a short phrase for a log line; ``remote_name`` names the other end of a
stream as ``host:port`` (IPv6 in brackets, dengine.config.addresses).
Neither raises: they only ever feed log messages.
"""

from __future__ import annotations

import errno

import trio

from dengine.config.addresses import format_address
from dengine.errors import AddressInUse

__all__ = ["UNKNOWN_REMOTE", "bind_error", "describe_error", "remote_name"]

#: What :func:`remote_name` returns when the stream has no peer address.
UNKNOWN_REMOTE = "an unknown address"


def describe_error(exc: BaseException) -> str:
    """``"timed out"`` for a deadline, else ``"Type: message"``; a broken
    stream also names what broke it (``BrokenResourceError`` alone says
    nothing: the OSError or SSLError under it does)."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        text = f"{text or 'broken'} ({type(cause).__name__}: {cause})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def remote_name(stream: trio.abc.Stream) -> str:
    """The peer address of a TCP stream (through TLS), or ``"an unknown address"``."""
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(sock_stream, trio.SocketStream):
        try:
            peer = sock_stream.socket.getpeername()
        except OSError:
            return UNKNOWN_REMOTE
        # IPv4 (host, port); IPv6 (host, port, flowinfo, scope_id); a Unix
        # socket gives a path (often empty) instead.
        if isinstance(peer, tuple) and len(peer) >= 2:
            return format_address(str(peer[0]), int(peer[1]))
    return UNKNOWN_REMOTE


def bind_error(exc: OSError, what: str, address: str) -> AddressInUse:
    """The error to raise when the ``what`` listener (``"client"``,
    ``"peer"``) cannot bind ``address``: which one, where, and why."""
    if exc.errno == errno.EADDRINUSE:
        why = "it is already in use (another dengine node or program listens there)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "it is not an address of this machine"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "this user may not listen on that port"
    else:
        why = exc.strerror or str(exc)
    return AddressInUse(f"cannot listen for {what}s on {address}: {why}")
