"""A standalone server: one engine plus its client endpoint.

    async with dengine.open_server(config) as server:
        await server.wait_ready()
        print(server.client_address)          # the bound address

``open_server`` opens the engine (see :func:`dengine.open_engine`), binds the
client listener(s) on ``node.client_address`` (port 0 picks a free port),
and yields a :class:`Server` once they are bound. Leaving the block stops
the client endpoint first (streams end, requests in flight are answered
under a deadline), then the engine (leadership handover, sync, close).

:func:`serve` is the ``task_status`` form: ``started(server)`` is called
only after the listeners are bound.
"""

from __future__ import annotations

import os
import ssl
from collections import ChainMap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from dengine.api import LeaderInfo, Status
from dengine.config import Config, format_address, parse_address
from dengine.embedded import Engine, open_engine
from dengine.errors import InvalidArgument
from dengine.lifecycle import Subscription
from dengine.transport.base import single_leaf
from dengine.transport.describe import bind_error
from dengine.server.service import ClientService, ServerStatistics, ServiceOptions

__all__ = ["Server", "open_server", "serve", "server_ssl_context"]


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of the client endpoint: None unless ``server.tls_cert``
    is set; with ``server.tls_ca`` clients must present a certificate it signed."""
    s = config.server
    if s.tls_cert is None or s.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(s.tls_cert, s.tls_key)
    if s.tls_ca is not None:
        ctx.load_verify_locations(s.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Server:
    """A running server: the engine (``.engine``) and its client endpoint.
    The lifecycle API of the engine is delegated."""

    def __init__(self, engine: Engine, service: ClientService, client_addresses: tuple[str, ...]) -> None:
        self.engine = engine
        self.config = engine.config
        self._service = service
        self.client_addresses = client_addresses

    @property
    def client_address(self) -> str:
        """The first bound client address (the real port when 0 was asked)."""
        return self.client_addresses[0]

    @property
    def node_id(self) -> int:
        return self.config.node_id

    def statistics(self) -> ServerStatistics:
        return self._service.statistics()

    async def wait_statistics(self, predicate: Any) -> ServerStatistics:
        return await self._service.wait_statistics(predicate)

    # -- the engine's lifecycle API -------------------------------------------

    def ready_notify(self) -> trio.Event:
        return self.engine.ready_notify()

    async def wait_ready(self, timeout: float | None = None) -> None:
        await self.engine.wait_ready(timeout)

    def stop_notify(self) -> trio.Event:
        return self.engine.stop_notify()

    def stopped_notify(self) -> trio.Event:
        return self.engine.stopped_notify()

    def leader_changed_notify(self) -> Subscription[LeaderInfo]:
        return self.engine.leader_changed_notify()

    def first_commit_notify(self) -> Subscription[int]:
        return self.engine.first_commit_notify()

    def current_leader(self) -> int | None:
        return self.engine.current_leader()

    def current_term(self) -> int:
        return self.engine.current_term()

    def is_leader(self) -> bool:
        return self.engine.is_leader()

    def status(self) -> Status:
        return self.engine.status()

    async def transfer_leadership(self, target: int | None = None, *, timeout: float | None = None) -> int:
        return await self.engine.transfer_leadership(target, timeout=timeout)


def _service_options(config: Config) -> ServiceOptions:
    return ServiceOptions(
        max_connections=config.server.max_connections,
        max_frame_size=config.transport.max_frame_size,
        handshake_timeout=config.transport.handshake_timeout_ms / 1000,
        idle_timeout=config.server.idle_timeout_ms / 1000,
    )


@asynccontextmanager
async def open_server(
    config: Config | str | os.PathLike[str] | None = None,
    *,
    options: ServiceOptions | None = None,
    network: Any = None,
) -> AsyncIterator[Server]:
    """Run a server for ``config`` (a Config, a TOML path, or None for the
    single-node defaults) until the block exits. ``options`` overrides the
    client endpoint's limits (tests); ``network`` replaces TCP between
    peers (a MemoryNetwork, for tests)."""
    if config is None:
        config = Config.single_node()
    elif isinstance(config, (str, os.PathLike)):
        config = Config.from_toml(os.fspath(config))
    elif not isinstance(config, Config):
        raise InvalidArgument(f"config must be a dengine.Config or a TOML path, got {type(config).__name__}")
    host, port = parse_address(config.client_address)
    ssl_context = server_ssl_context(config)
    opts = options if options is not None else _service_options(config)
    # The client listeners are bound first: an address in use is reported
    # (naming it) before anything is created on disk or dialled.
    try:
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        raise bind_error(exc, "client", config.client_address) from None
    bound = tuple(format_address(*lst.socket.getsockname()[:2]) for lst in listeners)  # type: ignore[attr-defined]
    if ssl_context is not None:
        listeners = [trio.SSLListener(listener, ssl_context) for listener in listeners]
    try:
        async with AsyncExitStack() as stack:
            for listener in listeners:
                stack.push_async_callback(trio.aclose_forcefully, listener)  # closed even if the engine fails
            engine = await stack.enter_async_context(
                open_engine(config=config, network=network, client_address=bound[0])
            )
            # Leader hints: a configured override first, then this node's own
            # address, then what the other members announced.
            client_addresses = ChainMap(
                dict(config.cluster.client_addresses), {config.node_id: bound[0]}, engine.peer_client_addresses
            )
            async with trio.open_nursery() as nursery:
                service = ClientService(engine, nursery, opts, client_addresses=client_addresses)
                for listener in listeners:
                    nursery.start_soon(service.serve_listener, listener, name="dengine client listener")
                try:
                    yield Server(engine, service, bound)
                finally:
                    with trio.CancelScope(shield=True):
                        await service.stop()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None


async def serve(config: Config | str | None = None, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a server until cancelled; ``task_status.started(server)`` once its
    client listeners are bound (not necessarily ready: see ``wait_ready``)."""
    async with open_server(config) as server:
        task_status.started(server)
        await trio.sleep_forever()
