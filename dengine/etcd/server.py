"""Both etcd faces of one node, wired to its engine.

    async with open_etcd_api(engine, grpc_address="127.0.0.1:2379",
                             gateway_address="127.0.0.1:2378") as api:
        print(api.grpc_address, api.gateway_address)

Rules of this module:

* Each face has its own :class:`~dengine.etcd.service.EtcdService`, which
  names that face's URL as this member's ``clientURLs`` (so a client that
  discovers members through ``MemberList`` -- Patroni does -- is sent to
  URLs it can speak to) and the same kind of URL of the other members, as
  they announce them in their status (``etcd_urls``).
* Calls only the leader can make are forwarded, on a follower, through one
  dengine client of the cluster, started at this node's own client address
  (it follows the leader hints from there). An embedded engine without a
  client endpoint gives ``client_address=None``: a follower then answers
  "not leader" (gRPC clients retry another endpoint).
* The protobuf runtime is needed for either face and grpcio for the gRPC
  face; a missing one is a :class:`~dengine.errors.ConfigError` naming the
  install command, raised before anything is bound.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs

from dengine.embedded import Engine
from dengine.errors import ConfigError

__all__ = ["EtcdApi", "open_etcd_api", "require_protobuf"]


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
    #: member id -> {"grpc": [...], "gateway": [...]}: the etcd URLs other members announced.
    member_urls: dict[int, dict[str, list[str]]] = attrs.field(factory=dict)


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
        from dengine.etcd.grpc_server import import_grpc, open_grpc_server

        import_grpc()
    scheme = "https" if tls is not None else "http"
    api = EtcdApi()
    async with AsyncExitStack() as stack:
        forward: Any = None
        if client_address is not None:
            from dengine.client import open_client

            forward = await stack.enter_async_context(open_client(
                [client_address], cluster_id=engine.config.cluster_id, ssl_context=_client_context(tls)))

        def urls_of(kind: str) -> Any:
            return lambda node_id: api.member_urls.get(node_id, {}).get(kind, [])

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

