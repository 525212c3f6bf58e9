"""The HTTP face of a node: ``/metrics``, ``/health``, ``/livez``, ``/readyz``,
``/status.json`` and the live cluster page at ``/`` (docs/http.md).

    async with dengine.open_engine("./data") as engine:
        async with open_http_server(engine, "127.0.0.1:9082") as http:
            print(http.address)                  # the bound address
            await trio.sleep_forever()

``dengine serve`` binds it first and attaches the server once the engine
is open (``open_http_server(None, address)``, then :meth:`HttpServer.attach`),
so an address in use is reported before anything is written to disk, and
``/livez`` answers while the storage is being opened.

Rules of this module:

* trio only; the protocol is :mod:`dengine.http.protocol`: ``GET`` and
  ``HEAD``, one request per connection, ``Connection: close``.
* :func:`open_http_server` returns only once its listeners are bound (an
  address that cannot be bound raises :class:`~dengine.errors.AddressInUse`
  naming it); :func:`serve_http` is the ``task_status`` form.
* Every connection is bounded: the request head must arrive within
  ``head_timeout`` (else 408) and fit in ``max_head_bytes`` (else 431);
  the answer is written within ``write_timeout``; at most
  ``max_connections`` are served at once and one more is answered 503.
* A handler that fails unexpectedly answers 500 (and is logged); it never
  takes the server down. Nothing a request does changes the engine.
* The page and its script and style are files of the package
  (``dengine/http/page/``): no build step, no external URL, and a
  Content-Security-Policy that lets the page load nothing from elsewhere.
* Stop: the listeners close and open connections are cancelled (every
  answer is small and written at once); no task outlives the block.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from dengine.api import Health
from dengine.config import format_address, parse_address
from dengine.config.settings import DEFAULT_METRICS_ADDRESS
from dengine.embedded import Engine
from dengine.errors import AddressInUse
from dengine.http.metrics import MetricsUnavailable, exposition
from dengine.http.protocol import (
    DEFAULT_MAX_HEAD_BYTES,
    Request,
    RequestError,
    find_head_end,
    parse_request,
    render_response,
)
from dengine.http.status import StatusView
from dengine.server import Server
from dengine.transport.base import single_leaf
from dengine.transport.describe import bind_error

__all__ = ["DEFAULT_HTTP_ADDRESS", "HttpOptions", "HttpServer", "open_http_server", "serve_http"]

log = logging.getLogger("dengine.http")

#: Where ``dengine serve`` answers HTTP by default (``server.metrics_address``).
DEFAULT_HTTP_ADDRESS: Final = DEFAULT_METRICS_ADDRESS

_TEXT: Final = "text/plain; charset=utf-8"
# After answering, how long (and how many bytes) to read what a client still sends.
_LINGER: Final = 0.5
_LINGER_BYTES: Final = 65536
_JSON: Final = "application/json"
_NO_STORE: Final = ("Cache-Control", "no-store")
# The page may load its own script, style and data, and nothing else.
_CSP: Final = (
    "Content-Security-Policy",
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
)
_PAGE_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}


@attrs.frozen
class HttpOptions:
    """Limits and timings of the HTTP face (seconds and bytes)."""

    max_connections: int = 64
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    head_timeout: float = 5.0
    write_timeout: float = 10.0
    #: How long ``/status.json`` waits for each other member's status.
    peer_timeout: float = 1.0
    #: How often the sampler records rates and the fsync latency.
    sample_interval: float = 1.0


@functools.cache
def page_file(name: str) -> bytes:
    """A file of the cluster page, from the package (``dengine/http/page/``)."""
    return importlib.resources.files("dengine.http").joinpath("page", name).read_bytes()


def _health_json(health: Health) -> bytes:
    # etcd's shape: {"health":"true","reason":""}.
    doc = {"health": "true" if health.healthy else "false", "reason": health.reason}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _plain(health: Health) -> bytes:
    return b"ok\n" if health.healthy else f"{health.reason}\n".encode()


Answer = tuple[int, bytes, str, tuple[tuple[str, str], ...]]


class HttpServer:
    """A running HTTP face: its bound ``addresses`` (empty when it was
    turned off) and the node it reports on (:meth:`attach`)."""

    def __init__(self, view: StatusView, addresses: tuple[str, ...], options: HttpOptions) -> None:
        self._view = view
        self.addresses = addresses
        self.options = options
        self._connections = 0

    @property
    def address(self) -> str | None:
        """The first bound address (the real port when 0 was asked), or None when off."""
        return self.addresses[0] if self.addresses else None

    @property
    def source(self) -> Engine | Server | None:
        return self._view.source

    def attach(self, source: Engine | Server) -> None:
        """Report on ``source`` from now on (until then: 503 "starting")."""
        self._view.attach(source)

    # -- connections -------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        opts = self.options
        async with stream:
            if self._connections >= opts.max_connections:
                await self._send(stream, (503, b"too many connections; try again\n", _TEXT, ()), False)
                return
            self._connections += 1
            try:
                answer, head_only = await self._read_and_answer(stream)
                await self._send(stream, answer, head_only)
            finally:
                self._connections -= 1

    async def _read_and_answer(self, stream: trio.SocketStream) -> tuple[Answer, bool]:
        head = await self._read_head(stream)
        if not isinstance(head, bytes):
            return head, False
        try:
            request = parse_request(head)
        except RequestError as exc:
            headers = (("Allow", "GET, HEAD"),) if exc.allow else ()
            return (exc.status, f"{exc.reason}\n".encode(), _TEXT, headers), False
        try:
            return await self._answer(request), request.method == "HEAD"
        except Exception:  # a failing handler answers 500; the server goes on
            log.exception("http: %s %s failed", request.method, request.path)
            return (500, b"internal error (see the server's log)\n", _TEXT, ()), False

    async def _read_head(self, stream: trio.SocketStream) -> bytes | Answer:
        """The request head, or the answer refusing it (too large, too slow, cut short)."""
        opts = self.options
        buffer = bytearray()
        with trio.move_on_after(opts.head_timeout):
            while (end := find_head_end(buffer)) is None:
                if len(buffer) > opts.max_head_bytes:
                    break
                try:
                    data = await stream.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    return 400, b"the connection closed before the request was complete\n", _TEXT, ()
                buffer += data
            if end is None or end > opts.max_head_bytes:
                return 431, b"the request head is too large\n", _TEXT, ()
            return bytes(buffer[:end])
        return 408, f"the request did not arrive within {opts.head_timeout:g} s\n".encode(), _TEXT, ()

    async def _send(self, stream: trio.SocketStream, answer: Answer, head_only: bool) -> None:
        """Write the answer, then close gently: our side first, then read
        (and drop) what the client still sends for a moment, so that
        closing with unread bytes does not reset the connection before the
        client has read the answer (a "lingering close")."""
        status, body, content_type, headers = answer
        data = render_response(status, body, content_type, head_only=head_only, headers=headers)
        try:
            with trio.move_on_after(self.options.write_timeout):
                await stream.send_all(data)
                await stream.send_eof()
            with trio.move_on_after(_LINGER):
                drained = 0
                while drained < _LINGER_BYTES and (chunk := await stream.receive_some(16384)):
                    drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- routes --------------------------------------------------------------------

    async def _answer(self, request: Request) -> Answer:
        view = self._view
        path = request.path
        if path in _PAGE_FILES:
            name, content_type = _PAGE_FILES[path]
            return 200, page_file(name), content_type, (_CSP, _NO_STORE)
        if path == "/status.json":
            doc = await view.document()
            status = 503 if doc.get("starting") else 200
            return status, json.dumps(doc, separators=(",", ":")).encode(), _JSON, (_NO_STORE,)
        route: dict[str, Callable[[], Answer]] = {
            "/health": lambda: self._health(view.health(), json_body=True),
            "/livez": lambda: self._health(view.liveness(), json_body=False),
            "/readyz": lambda: self._health(view.readiness(), json_body=False),
            "/metrics": self._metrics,
        }
        handler = route.get(path)
        if handler is None:
            known = ", ".join(["/", "/status.json", *route])
            return 404, f"no such page: {path} (known: {known})\n".encode(), _TEXT, ()
        return handler()

    @staticmethod
    def _health(health: Health, *, json_body: bool) -> Answer:
        status = 200 if health.healthy else 503
        if json_body:
            return status, _health_json(health), _JSON, (_NO_STORE,)
        return status, _plain(health), _TEXT, (_NO_STORE,)

    def _metrics(self) -> Answer:
        source = self._view.source
        if source is None:
            return 503, b"the node is starting; metrics follow once its storage is open\n", _TEXT, (_NO_STORE,)
        try:
            body, content_type = exposition(source)
        except MetricsUnavailable as exc:
            return 503, f"{exc}\n".encode(), _TEXT, (_NO_STORE,)
        return 200, body, content_type, (_NO_STORE,)


async def _bind(address: str) -> list[trio.SocketListener]:
    host, port = parse_address(address)
    try:
        return list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        err = bind_error(exc, "HTTP request", address)
        raise AddressInUse(
            f"{err.message}; choose another server.metrics_address (--metrics-address), or 'off'"
        ) from None


@asynccontextmanager
async def open_http_server(
    source: Engine | Server | None,
    address: str | None = DEFAULT_HTTP_ADDRESS,
    *,
    options: HttpOptions | None = None,
) -> AsyncIterator[HttpServer]:
    """Serve the HTTP face of ``source`` (an Engine or a Server; None:
    attach one later) on ``address`` (``host:port``; port 0 picks a free
    port; None: listen nowhere) until the block exits. The listeners are
    bound before this yields."""
    opts = options if options is not None else HttpOptions()
    view = StatusView(source, interval=opts.sample_interval, peer_timeout=opts.peer_timeout)
    if address is None:
        yield HttpServer(view, (), opts)
        return
    listeners = await _bind(address)
    bound = tuple(format_address(*lst.socket.getsockname()[:2]) for lst in listeners)
    http = HttpServer(view, bound, opts)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(view.run)
            # trio.serve_listeners rides out EMFILE and friends (it waits and logs).
            nursery.start_soon(trio.serve_listeners, http._serve_connection, listeners)
            log.info("serving /metrics, /health, /status.json and the cluster page on http://%s/", bound[0])
            try:
                yield http
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def serve_http(
    source: Engine | Server | None,
    address: str = DEFAULT_HTTP_ADDRESS,
    *,
    options: HttpOptions | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP face until cancelled; ``task_status.started(http)``
    once the listeners are bound."""
    async with open_http_server(source, address, options=options) as http:
        task_status.started(http)
        await trio.sleep_forever()
