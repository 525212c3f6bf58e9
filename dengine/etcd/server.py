"""Both etcd faces of one node, wired to its engine.

    async with open_etcd_api(engine, grpc_address="127.0.0.1:2379",
                             gateway_address="127.0.0.1:2378") as api:
        print(api.grpc_address, api.gateway_address)

Rules of this module:

* Each face has its own :class:`~dengine.etcd.service.EtcdService`, which
  names that face's URL as this member's ``clientURLs`` (so a client that
  discovers members through ``MemberList`` -- Patroni does -- is sent to
  URLs it can speak to) and the same kind of URL of the other members, as
  they announce them in their status (``Status.etcd_urls``, asked through
  the forwarding client). A member's answer is kept for
  :data:`URLS_FRESH` seconds; one that did not answer is asked again after
  :data:`URLS_RETRY`; asking is bounded by :data:`URLS_TIMEOUT`, so a
  ``MemberList`` with a member down answers within it (without that
  member's URLs).
* Calls only the leader can make are forwarded, on a follower, through one
  dengine client of the cluster, started at this node's own client address
  (it follows the leader hints from there). An embedded engine without a
  client endpoint gives ``client_address=None``: a follower then answers
  "not leader" (gRPC clients retry another endpoint).
* The protobuf runtime is needed for either face and h2 for the gRPC face;
  a missing one is a :class:`~dengine.errors.ConfigError` naming the
  install command, raised before anything is bound.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs

import trio

from dengine.embedded import Engine
from dengine.errors import ConfigError, DengineError

__all__ = ["EtcdApi", "open_etcd_api", "require_protobuf"]

#: Seconds a member's announced etcd URLs are used before it is asked again.
URLS_FRESH = 60.0
#: Seconds before a member that did not answer is asked again.
URLS_RETRY = 2.0
#: Seconds one MemberList waits at most for the members it asks.
URLS_TIMEOUT = 1.0


def require_protobuf() -> None:
    """A ConfigError naming the install command when protobuf is missing."""
    try:
        import google.protobuf  # noqa: F401
    except ImportError:
        raise ConfigError("the etcd API needs the protobuf runtime: pip install 'dengine[etcd]'") from None


@attrs.define
class EtcdApi:
    """The bound addresses (``host:port``) of the etcd faces, None when off."""

    grpc_address: str | None = None
    gateway_address: str | None = None
    engine: Engine | None = None
    forward: Any = None
    #: member id -> (when asked, {"grpc": [...], "gateway": [...]} or None if it did not answer).
    member_urls: dict[int, tuple[float, dict[str, list[str]] | None]] = attrs.field(factory=dict)

    async def urls_of(self, kind: str) -> dict[int, list[str]]:
        """Every other member's URLs of face ``kind``, as they announce them
        (see the module rules)."""
        engine = self.engine
        assert engine is not None
        now = time.monotonic()
        stale = []
        others = set()
        for m in engine.members():
            if m.node_id == engine.config.node_id or m.client_address is None:
                continue
            others.add(m.node_id)
            seen = self.member_urls.get(m.node_id)
            if seen is None or now - seen[0] > (URLS_FRESH if seen[1] is not None else URLS_RETRY):
                stale.append((m.node_id, m.client_address))
        for gone in self.member_urls.keys() - others:
            del self.member_urls[gone]  # removed (ids are never reused): the cache holds current members
        if stale and self.forward is not None:
            with trio.move_on_after(URLS_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for node_id, address in stale:
                        nursery.start_soon(self._ask, node_id, address)
        return {node_id: list((urls or {}).get(kind, ())) for node_id, (_, urls) in self.member_urls.items()}

    async def _ask(self, node_id: int, address: str) -> None:
        self.member_urls[node_id] = (time.monotonic(), None)
        try:
            status = await self.forward.status(endpoint=address, timeout=URLS_TIMEOUT)
        except DengineError:
            return
        if status.etcd_urls:  # none yet: its faces may still be starting; asked again after URLS_RETRY
            self.member_urls[node_id] = (time.monotonic(), status.etcd_urls)


def _client_context(tls: tuple[str, str, str | None] | None) -> ssl.SSLContext | None:
    """The context of the forwarding client: trusts the cluster's CA, shows this node's certificate."""
    if tls is None:
        return None
    cert, key, ca = tls
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # the node dials its own address; the chain is still verified
    ctx.load_cert_chain(cert, key)
    return ctx


@asynccontextmanager
async def open_etcd_api(
    engine: Engine,
    *,
    grpc_address: str | None = None,
    gateway_address: str | None = None,
    client_address: str | None = None,
    tls: tuple[str, str, str | None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[EtcdApi]:
    """Serve etcd's gRPC API at ``grpc_address`` and its JSON gateway at
    ``gateway_address`` (either may be None) for ``engine``. ``tls``:
    (certificate, key, CA) paths for both faces; ``ssl_context`` the
    gateway's server context (built from ``tls`` when not given)."""
    require_protobuf()
    from dengine.etcd.gateway import open_gateway
    from dengine.etcd.service import EtcdService

    if grpc_address is not None:
        try:
            from dengine.etcd.grpc_server import open_grpc_server
        except ImportError:
            raise ConfigError("the etcd gRPC API needs h2: pip install 'dengine[etcd]' "
                              "(the JSON gateway does not)") from None
    scheme = "https" if tls is not None else "http"
    api = EtcdApi(engine=engine)
    async with AsyncExitStack() as stack:
        forward: Any = None
        if client_address is not None:
            from dengine.client import open_client

            forward = await stack.enter_async_context(open_client(
                [client_address], cluster_id=engine.config.cluster_id, ssl_context=_client_context(tls)))
        api.forward = forward

        def urls_of(kind: str) -> Any:
            return lambda: api.urls_of(kind)

        if gateway_address is not None:
            if ssl_context is None and tls is not None:
                ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ssl_context.load_cert_chain(tls[0], tls[1])
                if tls[2] is not None:
                    ssl_context.load_verify_locations(tls[2])
                    ssl_context.verify_mode = ssl.CERT_REQUIRED
            gw_service = EtcdService(engine, forward=forward, member_etcd_urls=urls_of("gateway"))
            gateway = await stack.enter_async_context(open_gateway(gw_service, gateway_address,
                                                                   ssl_context=ssl_context))
            api.gateway_address = gateway.address
            gw_service.etcd_urls = [f"{scheme}://{a}" for a in gateway.addresses]
        if grpc_address is not None:
            grpc_service = EtcdService(engine, forward=forward, member_etcd_urls=urls_of("grpc"))
            face = await stack.enter_async_context(open_grpc_server(grpc_service, grpc_address, tls=tls))
            host = grpc_address.rsplit(":", 1)[0]
            api.grpc_address = f"{host}:{face.port}"
            grpc_service.etcd_urls = [f"{scheme}://{api.grpc_address}"]
        engine.etcd_urls = {kind: urls for kind, urls in (
            ("grpc", [f"{scheme}://{api.grpc_address}"] if api.grpc_address else []),
            ("gateway", [f"{scheme}://{api.gateway_address}"] if api.gateway_address else [])) if urls}
        try:
            yield api
        finally:
            engine.etcd_urls = {}

