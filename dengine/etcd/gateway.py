"""etcd's JSON gateway: HTTP/1.1 POST ``/v3/...`` with JSON, on trio.

    async with open_gateway(service, "127.0.0.1:2380") as gateway:
        print(gateway.address)

What etcd's grpc-gateway does, as its clients (Patroni, etcd3gw, curl) see it:

* ``POST /v3/<path>`` (also ``/v3beta/`` and ``/v3alpha/``, the prefixes of
  etcd 3.3 and 3.2) with one JSON object of the request message; bytes are
  base64, 64-bit numbers are strings or numbers, field names are etcd's
  (``range_end``, ``ID``) or their lowerCamel JSON names. An empty body is
  an empty request. A field the message does not have is ignored.
* The answer is 200 with the response message as JSON: etcd's original field
  names, 64-bit numbers as strings, bytes as base64, fields left out when
  they hold their default (etcd's ``JSONPb{OrigName: true}``).
* An error answers the HTTP status grpc-gateway maps the gRPC code to, with
  ``{"error": message, "code": grpc code, "message": message}``.
* Streams (``/v3/watch``, ``/v3/lease/keepalive``): the body holds one or
  more request objects; the answer is chunked, one chunk per response as
  ``{"result": {...}}`` and a newline. A keep-alive stream ends once every
  request in the body is answered; a watch stream lasts until the client
  closes the connection (as with etcd). An error ends a stream with
  ``{"error": {"grpc_code", "http_code", "message", "http_status"}}``.
* ``GET /version`` answers ``{"etcdserver": ..., "etcdcluster": ...}`` (the
  etcd API level, which clients use to pick the path prefix); ``GET
  /health`` etcd's ``{"health": "true"|"false", "reason": ...}``.
* RPCs dengine does not serve answer 501 with the reason; unknown paths 404.

Rules of this module (limits, as in :mod:`dengine.http.server`):

* A request head must arrive within ``head_timeout`` (408) and fit in
  ``max_head_bytes`` (431); a body is at most ``max_body_bytes`` (413) and
  must arrive within ``body_timeout``. At most ``max_connections`` are
  served at once; one more is answered 503 and closed.
* Unary answers keep the connection open (HTTP/1.1 keep-alive, or
  ``Connection: keep-alive`` from an HTTP/1.0 client) until it is idle for
  ``idle_timeout``; so does a keep-alive stream's answer once its last
  renewal is sent (chunked, no ``Connection: close``, as etcd's); a watch
  stream holds its connection until the client closes it.
* A write to a client that stops reading is bounded by ``write_timeout``.
* Stop: the listeners close and every connection is cancelled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio
from google.protobuf import json_format

from dengine.config import format_address, parse_address
from dengine.errors import AddressInUse
from dengine.etcd.schema import MESSAGES as M
from dengine.etcd.service import (
    ETCD_API_VERSION,
    GRPC_CODES,
    NOT_SERVED,
    RPCS,
    EtcdError,
    EtcdService,
    Rpc,
    etcd_error,
    unimplemented,
)
from dengine.http.protocol import REASONS, RequestError, find_head_end, parse_request, render_response

log = logging.getLogger("dengine.etcd")

__all__ = ["Gateway", "GatewayOptions", "open_gateway", "http_status", "encode", "decode"]

PREFIXES: Final = ("/v3", "/v3beta", "/v3alpha")

#: gRPC code -> HTTP status, as grpc-gateway (v1, which etcd 3.4/3.5 use) maps them.
_HTTP_STATUS: Final = {
    "OK": 200, "CANCELLED": 408, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
}
_JSON: Final = "application/json"

_ROUTES: Final[dict[str, Rpc]] = {
    prefix + path: rpc for rpc in RPCS.values() for path in rpc.gateway for prefix in PREFIXES
}
_REFUSED: Final[dict[str, str]] = {
    prefix + path: grpc_path for grpc_path, (path, _) in NOT_SERVED.items() for prefix in PREFIXES
}


def http_status(code: str) -> int:
    return _HTTP_STATUS.get(code, 500)


def encode(message: Any) -> dict[str, Any]:
    """A message as etcd's gateway writes it."""
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _json_name(name: str) -> str:
    """protoc's JSON name of a field: ``request_put`` -> ``requestPut`` (``ID`` stays)."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _proto_names(obj: Any, descriptor: Any) -> Any:
    """``obj`` with lowerCamel JSON names turned into etcd's field names, at
    every level (grpc-gateway's jsonpb takes both; schema.py's descriptors
    know only the original names)."""
    if not isinstance(obj, dict):
        return obj
    camel = {_json_name(f.name): f for f in descriptor.fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = descriptor.fields_by_name.get(key) or camel.get(key)
        if field is None:
            out[key] = value  # unknown: ignored by ParseDict
            continue
        if field.enum_type is not None:  # ParseDict would drop an unknown name silently; jsonpb refuses it
            for name in value if isinstance(value, list) else [value]:
                if isinstance(name, str) and name not in field.enum_type.values_by_name:
                    raise EtcdError("INVALID_ARGUMENT", f"unknown value {name!r} for enum {field.enum_type.full_name}")
        if field.message_type is not None:
            if isinstance(value, list):
                value = [_proto_names(v, field.message_type) for v in value]
            else:
                value = _proto_names(value, field.message_type)
        out[field.name] = value
    return out


def decode(name: str, obj: object) -> Any:
    """A request message from one JSON value; EtcdError INVALID_ARGUMENT if it does not fit."""
    if not isinstance(obj, dict):
        raise EtcdError("INVALID_ARGUMENT", f"the request body must be a JSON object, got {type(obj).__name__}")
    try:
        cls = M[name]
        return json_format.ParseDict(_proto_names(obj, cls.DESCRIPTOR), cls(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise EtcdError("INVALID_ARGUMENT", f"the request does not fit etcdserverpb.{name}: {exc}") from None


def decode_body(name: str, body: bytes, *, many: bool) -> list[Any]:
    """The request message(s) of a body: one JSON object (or none: an empty
    request), or with ``many`` a sequence of them (a stream)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EtcdError("INVALID_ARGUMENT", "the request body is not UTF-8") from None
    decoder = json.JSONDecoder()
    values: list[Any] = []
    at = 0
    while True:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        if at >= len(text):
            break
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise EtcdError("INVALID_ARGUMENT", f"the request body is not JSON: {exc}") from None
        values.append(value)
        if not many and len(values) > 1:
            raise EtcdError("INVALID_ARGUMENT", "the request body holds more than one JSON value")
    if not values and not many:
        values = [{}]
    return [decode(name, v) for v in values]


def _error_body(error: EtcdError) -> bytes:
    return json.dumps({"error": error.message, "code": error.number, "message": error.message}).encode()


@attrs.frozen
class GatewayOptions:
    """Limits of the gateway (see the module rules)."""

    max_connections: int = 1000
    max_head_bytes: int = 16 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 120.0
    write_timeout: float = 10.0


class _Closed(Exception):
    """The client went away or must be cut off."""


class _Conn:
    """One client connection: a buffer over the stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise _Closed
        self.buf += data

    async def send(self, data: bytes, timeout: float) -> None:
        with trio.move_on_after(timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise _Closed


class Gateway:
    """A running gateway: ``address`` is the first bound ``host:port``."""

    def __init__(self, service: EtcdService, options: GatewayOptions, addresses: tuple[str, ...]) -> None:
        self.service = service
        self.options = options
        self.addresses = addresses
        self._active = 0

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def handle(self, stream: trio.abc.Stream) -> None:
        opts = self.options
        conn = _Conn(stream)
        try:
            if self._active >= opts.max_connections:
                error = EtcdError("UNAVAILABLE", f"dengine: the limit of {opts.max_connections} gateway "
                                                 "connections is reached")
                await conn.send(render_response(503, _error_body(error), _JSON), opts.write_timeout)
                return
            self._active += 1
            try:
                first = True
                while await self._one(conn, first):
                    first = False
            finally:
                self._active -= 1
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            # A graceful close (over TLS: close_notify, so the client sees the end of the answer), bounded.
            with trio.move_on_after(self.options.write_timeout) as closing:
                closing.shield = True
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if closing.cancelled_caught:
                await trio.aclose_forcefully(stream)

    async def _one(self, conn: _Conn, first: bool) -> bool:
        """Serve one request; whether the connection stays open for another."""
        opts = self.options
        timeout = opts.head_timeout if first or conn.buf else opts.idle_timeout
        with trio.move_on_after(timeout) as scope:
            while (end := find_head_end(conn.buf)) is None:
                if len(conn.buf) > opts.max_head_bytes:
                    await self._refuse(conn, 431, "the request head is too large")
                    return False
                await conn.fill()
        if scope.cancelled_caught:
            if conn.buf:
                await self._refuse(conn, 408, "the request head did not arrive in time")
            return False
        if end is None or end > opts.max_head_bytes:
            await self._refuse(conn, 431, "the request head is too large")
            return False
        head = bytes(conn.buf[:end])
        del conn.buf[:end]
        try:
            request = parse_request(head, methods=("GET", "POST"), body=True)
        except RequestError as exc:
            await self._refuse(conn, exc.status, exc.reason)
            return False
        if request.content_length > opts.max_body_bytes:
            await self._refuse(conn, 413, f"the request body is {request.content_length} bytes, larger than the "
                                          f"limit of {opts.max_body_bytes}")
            return False
        with trio.move_on_after(opts.body_timeout) as scope:
            while len(conn.buf) < request.content_length:
                await conn.fill()
        if scope.cancelled_caught:
            await self._refuse(conn, 408, "the request body did not arrive in time")
            return False
        body = bytes(conn.buf[: request.content_length])
        del conn.buf[: request.content_length]
        connection = (request.header("connection") or "").lower()
        keep = "close" not in connection and (request.version == "HTTP/1.1" or "keep-alive" in connection)
        path = request.path
        if request.method == "GET":
            return await self._get(conn, path, keep)
        rpc = _ROUTES.get(path)
        if rpc is None:
            if path in _REFUSED:
                error = unimplemented(NOT_SERVED[_REFUSED[path]][1])
            elif path.startswith(PREFIXES) and "/auth/" in path:
                error = unimplemented("authentication (users, roles)")
            else:
                error = EtcdError("NOT_FOUND", f"dengine: no etcd API at {path!r}")
            await conn.send(render_response(http_status(error.code), _error_body(error), _JSON, keep_alive=keep),
                            opts.write_timeout)
            return keep
        if rpc.stream:
            return await self._stream(conn, rpc, body) and keep
        try:
            (message,) = decode_body(rpc.request, body, many=False)
            response = await getattr(self.service, rpc.method)(message)
            status, out = 200, json.dumps(encode(response), separators=(",", ":")).encode()
        except Exception as exc:
            error = etcd_error(exc)
            status, out = http_status(error.code), _error_body(error)
        await conn.send(render_response(status, out, _JSON, keep_alive=keep), opts.write_timeout)
        return keep

    async def _get(self, conn: _Conn, path: str, keep: bool) -> bool:
        if path == "/version":
            body: dict[str, Any] = {"etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_API_VERSION.rsplit(".", 1)[0]
                                    + ".0"}
            status = 200
        elif path == "/health":
            health = self.service.engine.health()
            body = {"health": "true" if health.healthy else "false", "reason": health.reason}
            status = 200 if health.healthy else 503
        else:
            allowed = path in _ROUTES or path in _REFUSED
            error = EtcdError("UNIMPLEMENTED" if allowed else "NOT_FOUND",
                              f"dengine: {path!r} takes POST" if allowed else f"dengine: no etcd API at {path!r}")
            status = 405 if allowed else 404
            await conn.send(render_response(status, _error_body(error), _JSON, keep_alive=keep,
                                            headers=[("Allow", "POST")] if allowed else ()),
                            self.options.write_timeout)
            return keep
        await conn.send(render_response(status, json.dumps(body).encode(), _JSON, keep_alive=keep),
                        self.options.write_timeout)
        return keep

    async def _refuse(self, conn: _Conn, status: int, reason: str) -> None:
        error = EtcdError("INVALID_ARGUMENT", f"dengine: {reason}")
        await conn.send(render_response(status, _error_body(error), _JSON), self.options.write_timeout)

    async def _stream(self, conn: _Conn, rpc: Rpc, body: bytes) -> bool:
        """Answer a stream; whether the connection can take another request
        (a keep-alive stream ends with its last answer and the connection
        stays open, as with etcd; a watch lasts until the client goes away)."""
        opts = self.options
        try:
            requests = decode_body(rpc.request, body, many=True)
        except EtcdError as error:
            await conn.send(render_response(http_status(error.code), _error_body(error), _JSON, keep_alive=True),
                            opts.write_timeout)
            return True
        # No "Connection: close" (etcd sends none either): clients keep the connection (and Patroni ends a
        # watch by shutting its socket down).
        head = (f"HTTP/1.1 200 {REASONS[200]}\r\nContent-Type: {_JSON}\r\nTransfer-Encoding: chunked\r\n"
                "X-Content-Type-Options: nosniff\r\n\r\n").encode("latin-1")
        await conn.send(head, opts.write_timeout)
        send_in, recv_in = trio.open_memory_channel[Any](len(requests) + 1)
        for message in requests:
            send_in.send_nowait(message)
        send_in.close()
        endless = rpc.method == "watch"

        async def emit(message: Any) -> None:
            await _chunk(conn, {"result": encode(message)}, opts.write_timeout)

        async with trio.open_nursery() as nursery:
            if endless:
                async def watch_peer() -> None:
                    # The client closing its side ends the stream (bytes it sends now are not requests).
                    try:
                        while True:
                            await conn.fill()
                            conn.buf.clear()
                    except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
                        nursery.cancel_scope.cancel()

                nursery.start_soon(watch_peer)
            try:
                await getattr(self.service, rpc.method)(recv_in, emit)
            except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
                nursery.cancel_scope.cancel()
                return False
            except Exception as exc:
                failure = etcd_error(exc)
                status = http_status(failure.code)
                await _chunk(conn, {"error": {"grpc_code": failure.number, "http_code": status,
                                              "message": failure.message, "http_status": REASONS.get(status, "")}},
                             opts.write_timeout)
            await conn.send(b"0\r\n\r\n", opts.write_timeout)
            nursery.cancel_scope.cancel()
        return not endless


async def _chunk(conn: _Conn, obj: dict[str, Any], timeout: float) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    await conn.send(b"%x\r\n%s\r\n" % (len(data), data), timeout)


@asynccontextmanager
async def open_gateway(
    service: EtcdService,
    address: str,
    *,
    ssl_context: Any = None,
    options: GatewayOptions | None = None,
) -> AsyncIterator[Gateway]:
    """Serve etcd's JSON gateway for ``service`` at ``address`` until the
    block exits (TLS with ``ssl_context``)."""
    host, port = parse_address(address)
    try:
        listeners: list[trio.abc.Listener[Any]] = list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        raise AddressInUse(f"cannot serve the etcd gateway at {address}: {exc.strerror or exc}") from None
    bound = tuple(format_address(*lst.socket.getsockname()[:2]) for lst in listeners)  # type: ignore[attr-defined]
    if ssl_context is not None:
        # https_compatible: a client may end without close_notify, as HTTPS clients do.
        listeners = [trio.SSLListener(lst, ssl_context, https_compatible=True) for lst in listeners]
    gateway = Gateway(service, options or GatewayOptions(), bound)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, gateway.handle, [listener])
            log.info("etcd JSON gateway at %s", ", ".join(bound))
            try:
                yield gateway
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
