"""TLS for clients and mutual TLS between peers, with certificates made by
trustme. 127.0.0.1 only; every test under an absolute fail_after."""

from __future__ import annotations

import pathlib
import ssl

import attrs
import pytest
import trio
import trustme

import dengine
from dengine import Config
from tests.integration.cluster_helpers import free_ports
from tests.tls_files import cert_files

DEADLINE = 40


def _ca_file(tmp: pathlib.Path, ca: trustme.CA, name: str) -> str:
    path = tmp / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _tls_config(tmp: pathlib.Path, ca: trustme.CA, *, require_client_cert: bool) -> Config:
    cert, key = cert_files(tmp, ca, "server")
    cfg = Config.single_node(str(tmp / "data"), client_address="127.0.0.1:0")
    server = attrs.evolve(cfg.server, tls_cert=cert, tls_key=key,
                          tls_ca=_ca_file(tmp, ca, "cluster") if require_client_cert else None)
    return attrs.evolve(cfg, server=server, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))


async def test_clients_over_tls(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_tls_config(tmp_path, ca, require_client_cert=False)) as server:
            await server.wait_ready(timeout=5)
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            async with dengine.open_client([server.client_address], ssl_context=ctx) as client:
                await client.put(b"secret", b"1")
                assert await client.get(b"secret") == b"1"
            # A plain-text client cannot talk to a TLS port.
            with pytest.raises(dengine.DengineError):
                async with dengine.open_client([server.client_address], timeout=1) as client:
                    await client.get(b"secret")
            # A client that does not trust the server's CA refuses it.
            other = ssl.create_default_context()
            trustme.CA().configure_trust(other)
            with pytest.raises(dengine.DengineError):
                async with dengine.open_client([server.client_address], ssl_context=other, timeout=1) as client:
                    await client.get(b"secret")


async def test_client_certificates_required_with_tls_ca(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_tls_config(tmp_path, ca, require_client_cert=True)) as server:
            await server.wait_ready(timeout=5)
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            with pytest.raises(dengine.DengineError):
                async with dengine.open_client([server.client_address], ssl_context=ctx, timeout=1) as client:
                    await client.get(b"k")
            ca.issue_cert("client.example").configure_cert(ctx)
            async with dengine.open_client([server.client_address], ssl_context=ctx) as client:
                await client.put(b"k", b"v")
                assert await client.get(b"k") == b"v"


async def test_mutual_tls_between_peers_refuses_a_foreign_certificate(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    ca_file = _ca_file(tmp_path, ca, "cluster")
    ports = free_ports(4)
    peers = {1: f"127.0.0.1:{ports[0]}", 2: f"127.0.0.1:{ports[1]}"}
    clients = {1: f"127.0.0.1:{ports[2]}", 2: f"127.0.0.1:{ports[3]}"}

    def config(node_id: int) -> Config:
        cert, key = cert_files(tmp_path, ca, f"n{node_id}")
        cfg = Config(node_id=node_id, data_dir=str(tmp_path / f"n{node_id}"), initial_cluster=peers,
                     client_address=clients[node_id], cluster_id="tls")
        server = attrs.evolve(cfg.server, tls_cert=cert, tls_key=key, tls_ca=ca_file, peer_tls=True)
        return attrs.evolve(cfg, server=server, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))

    with trio.fail_after(DEADLINE):
        async with dengine.open_server(config(1)) as s1, dengine.open_server(config(2)) as s2:
            await s1.wait_ready(timeout=10)
            await s2.wait_ready(timeout=10)
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            ca.issue_cert("client").configure_cert(ctx)
            async with dengine.open_client(list(clients.values()), cluster_id="tls", ssl_context=ctx) as client:
                await client.put(b"over-mtls", b"1")
                assert await client.get(b"over-mtls") == b"1"
                # A "peer" whose certificate another CA signed is refused at the TLS handshake.
                rogue = ssl.create_default_context()
                ca.configure_trust(rogue)
                trustme.CA().issue_cert("127.0.0.1").configure_cert(rogue)
                host, port = peers[1].rsplit(":", 1)
                tcp = await trio.open_tcp_stream(host, int(port))
                stream = trio.SSLStream(tcp, rogue, server_hostname=host)
                try:
                    with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                        await stream.do_handshake()
                        await stream.send_all(b"\x00\x00\x00\x01\xc0")
                        assert await stream.receive_some(100) == b""
                        raise trio.BrokenResourceError("closed without a welcome")
                finally:
                    await trio.aclose_forcefully(stream)
                # The cluster still works (a leader takes writes) after the intruder.
                await client.put(b"after-rogue", b"2")
                assert await client.get(b"after-rogue") == b"2"
