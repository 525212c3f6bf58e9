"""The one address grammar: ``host:port`` and ``[IPv6 host]:port``.

Rules of this module (pure: standard library and dengine.errors only):

* An address is a string ``host:port``. A host that contains ``:`` (IPv6)
  is written in brackets: ``[::1]:7001``. No spaces around it, no scheme
  (``tcp://``), no path, user or query.
* The port is decimal, 0..65535. Port 0 asks the OS for a free port when
  binding; an address others must *dial* needs a real port
  (``parse_address(..., allow_port_zero=False)``).
* A wildcard host (``0.0.0.0``, ``[::]``) listens on every interface and
  cannot be dialled.
* :func:`split_address` never raises: it returns ``(host, port)`` or a
  phrase saying what is wrong, for callers (config validation) that build
  their own sentences. :func:`parse_address` raises
  :class:`~dengine.errors.InvalidArgument` with that phrase.
* :func:`format_address` is the inverse: ``("::1", 7001)`` -> ``"[::1]:7001"``.

dengine.config (layer 3) owns it; dengine.transport and everything above
import it from here, so config validation, the peer transport, the server
and the clients all accept and refuse the same addresses.
"""

from __future__ import annotations

from typing import Final

from dengine.errors import InvalidArgument

__all__ = [
    "WILDCARD_HOSTS",
    "address_argument",
    "format_address",
    "is_wildcard",
    "parse_address",
    "parse_members",
    "split_address",
]

#: Hosts that mean "every interface": fine to listen on, impossible to dial.
WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})

_IPV6_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")
_BAD_HOST_CHARACTERS = frozenset("/@?#[]")


def split_address(address: object) -> tuple[str, int] | str:
    """``(host, port)``, or a phrase saying what is wrong (for error sentences)."""
    if not isinstance(address, str):
        return f"it is {type(address).__name__}, not a string"
    text = address.strip()
    if not text:
        return "it is empty"
    if text != address:
        return "it has spaces around it"
    scheme, sep, _rest = text.partition("://")
    if sep:
        return f"it starts with a scheme ({scheme + sep!r}); write only 'host:port'"
    if text.startswith("["):  # [IPv6]:port
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            return "an IPv6 host must be written '[host]:port'"
        host, port_text = text[1:close], text[close + 2 :]
        if not host:
            return "no host was given"
        if any(c not in _IPV6_CHARACTERS for c in host):
            return f"{host!r} is not an IPv6 address"
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            return "no port was found"
        if not host:
            return "no host was given"
        if ":" in host:
            return "an IPv6 host must be written '[host]:port'"
        if any(c.isspace() or c in _BAD_HOST_CHARACTERS for c in host):
            return f"{host!r} is not a valid host name"
    if not port_text:
        return "no port was found"
    if not port_text.isascii() or not port_text.isdigit():
        return f"port {port_text!r} is not a number"
    port = int(port_text)
    if port > 65535:
        return f"port {port} is larger than 65535"
    return host, port


def parse_address(address: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6 host]:port"``) into ``(host, port)``.

    The port must be 0..65535 (0 asks the OS for a free port when binding);
    with ``allow_port_zero=False`` -- an address that others dial -- it must
    be 1..65535. Raises :class:`~dengine.errors.InvalidArgument` naming the
    problem.
    """
    result = split_address(address)
    if isinstance(result, str):
        raise InvalidArgument(f"address {address!r} must be 'host:port': {result}")
    if result[1] == 0 and not allow_port_zero:
        raise InvalidArgument(f"address {address!r}: an address others dial needs a real port, not 0")
    return result


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets; :func:`parse_address` reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_wildcard(address: object) -> bool:
    """True for a valid address whose host is a wildcard (``0.0.0.0:7001``, ``[::]:7001``)."""
    result = split_address(address)
    return isinstance(result, tuple) and result[0] in WILDCARD_HOSTS


def parse_members(text: str) -> dict[int, str]:
    """Parse ``"1=127.0.0.1:7001,2=127.0.0.1:7002"`` into ``{1: ..., 2: ...}``.

    Whitespace around items is ignored and an empty string is an empty map.
    Raises :class:`~dengine.errors.InvalidArgument` naming the bad item.
    Addresses are checked later, by :meth:`Config.validate`.
    """
    members: dict[int, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        node_text, sep, address = item.partition("=")
        node_text, address = node_text.strip(), address.strip()
        if not sep or not address:
            raise InvalidArgument(f"member {item!r} must be written 'id=host:port'")
        if not (node_text.isascii() and node_text.isdigit()) or int(node_text) <= 0:
            raise InvalidArgument(f"member {item!r} must start with a positive integer node id")
        node_id = int(node_text)
        if node_id in members:
            raise InvalidArgument(f"node id {node_id} is listed twice")
        members[node_id] = address
    return members


def address_argument(value: object, name: str) -> str:
    """A ``host:port`` given as an argument named ``name`` (an address
    others dial: a real port): returned as is, or InvalidArgument naming the
    argument and the problem."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a host:port string, got {type(value).__name__}")
    try:
        parse_address(value, allow_port_zero=False)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{name}: {exc.message}") from None
    return value
