"""A strict, tiny HTTP/1.1 for the operator's face: requests in, responses out (sans-IO).

Rules of this module (RFC 9112, kept to what a status endpoint needs):

* Only ``GET`` and ``HEAD`` are served; any other method is answered 405
  with ``Allow: GET, HEAD``. ``HEAD`` gets the same head as ``GET`` and no body.
  (The etcd gateway, :mod:`dengine.etcd.gateway`, parses with
  ``methods=("GET", "POST")`` and ``body=True``: a body is then taken when
  announced by one ``Content-Length``; ``Transfer-Encoding`` is refused
  with 411, and the connection may be kept alive.)
* A request is its head alone: a request line and header lines, ending at
  the first empty line. Lines end with CRLF (a bare LF is accepted, as RFC
  9112 §2.2 allows). The head may be at most ``max_head_bytes`` long (431
  otherwise). A request that announces a body (``Transfer-Encoding``, or a
  ``Content-Length`` other than 0) is refused with 400: nothing here takes one.
* The version is ``HTTP/1.0`` or ``HTTP/1.1`` (505 otherwise); an
  ``HTTP/1.1`` request must carry exactly one ``Host`` header (§3.2).
* The target is in origin form (``/path?query``); the path is matched
  exactly, the query is kept for the handler. Absolute-form targets (proxy
  requests), ``*`` and anything not starting with ``/`` are refused with 400.
* Header names are tokens; obsolete line folding, a space before the
  colon, or a control character in a value are refused with 400 (the
  request-smuggling shapes h11 refuses too).
* One request per connection: every response says ``Connection: close``
  and carries ``Content-Length``. No pipelining, no keep-alive state.

Errors: :class:`RequestError` is "the peer sent something we refuse" and
carries the status to answer with; it never means a bug here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import attrs

__all__ = [
    "DEFAULT_MAX_HEAD_BYTES",
    "REASONS",
    "Request",
    "RequestError",
    "find_head_end",
    "parse_request",
    "render_response",
]

#: The longest request head accepted, in bytes (request line and headers).
DEFAULT_MAX_HEAD_BYTES: Final = 8192

REASONS: Final = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_METHODS: Final = ("GET", "HEAD")
_VERSIONS: Final = ("HTTP/1.0", "HTTP/1.1")


class RequestError(Exception):
    """The peer sent a request we refuse; answer ``status`` with ``reason``."""

    def __init__(self, status: int, reason: str, *, allow: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: Whether the answer must carry ``Allow`` (405).
        self.allow = allow


@attrs.frozen(slots=True)
class Request:
    """One parsed request head. Header names are lower-cased."""

    method: str
    path: str
    query: str
    version: str
    headers: tuple[tuple[str, str], ...]
    #: The body's length (``Content-Length``); 0 when there is none.
    content_length: int = 0

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), the first if repeated."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)


def find_head_end(buffer: bytes | bytearray) -> int | None:
    """The length of the request head at the start of ``buffer`` (up to and
    including the empty line), or None while it is incomplete."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else None


def parse_request(head: bytes, *, methods: tuple[str, ...] = _METHODS, body: bool = False) -> Request:
    """Parse a complete request head (as delimited by :func:`find_head_end`).
    ``methods``: those served (405 for others); ``body``: whether a request
    may carry a body (see the module rules). Raises :class:`RequestError`
    for anything this server refuses."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise RequestError(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not all(parts):
        raise RequestError(400, "the request line must be 'METHOD /path HTTP/1.1'")
    raw_method, raw_target, raw_version = parts
    if not _TOKEN.fullmatch(raw_method):
        raise RequestError(400, "the method is not a token")
    version = raw_version.decode("ascii", "replace")
    if not re.fullmatch(r"HTTP/\d\.\d", version):
        raise RequestError(400, f"{version!r} is not an HTTP version")
    if version not in _VERSIONS:
        raise RequestError(505, f"{version} is not served here; use HTTP/1.1")
    if not _TARGET.fullmatch(raw_target):
        raise RequestError(400, "the target must be a path starting with '/'")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise RequestError(400, "obsolete header line folding is not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise RequestError(400, "a header line must be 'Name: value'")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise RequestError(400, f"the {name.decode('ascii')} header holds a control character")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    request_headers = tuple(headers)
    hosts = [v for k, v in request_headers if k == "host"]
    if version == "HTTP/1.1" and len(hosts) != 1:
        raise RequestError(400, "an HTTP/1.1 request needs exactly one Host header")
    if any(k == "transfer-encoding" for k, _ in request_headers):
        if body:
            raise RequestError(411, "send the request body with a Content-Length, not Transfer-Encoding")
        raise RequestError(400, "this server takes no request body (Transfer-Encoding)")
    lengths = {v for k, v in request_headers if k == "content-length"}
    length = 0
    if body:
        if len(lengths) > 1:
            raise RequestError(400, "the request has several different Content-Length headers")
        if lengths:
            text = lengths.pop()
            if not text.isdigit() or len(text) > 12:
                raise RequestError(400, f"Content-Length must be a number of bytes, got {text!r:.20}")
            length = int(text)
    elif lengths - {"0"}:
        raise RequestError(400, "this server takes no request body (Content-Length)")
    method = raw_method.decode("ascii")
    if method not in methods:
        raise RequestError(405, f"{method} is not allowed here; use {' or '.join(m for m in methods if m != 'HEAD')}",
                           allow=True)
    path, _, query = raw_target.decode("ascii").partition("?")
    return Request(method=method, path=path, query=query, version=version, headers=request_headers,
                   content_length=length)


def render_response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    head_only: bool = False,
    headers: Iterable[tuple[str, str]] = (),
    keep_alive: bool = False,
) -> bytes:
    """The bytes of a complete response (``Connection: close`` unless
    ``keep_alive``); with ``head_only`` (a HEAD request) the body is left
    out but its length kept."""
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
