"""etcd's API over TLS: a `dengine serve` process with the server's
certificates and client-certificate checks (``[server] tls_ca``) serves both
etcd faces over TLS; etcdctl with the CA and a client certificate works, and
without a client certificate is refused; the gateway answers HTTPS the same
way. Certificates from trustme; 127.0.0.1 only; the process is stopped by
its PID; every wait is bounded."""

from __future__ import annotations

import json
import os
import pathlib
import ssl
import subprocess
import sys

import trio
import trustme

from dengine.testing import free_ports
from tests.cluster.etcd_helpers import ETCDCTL, needs_etcdctl
from tests.tls_files import cert_files

DEADLINE = 60


async def _etcdctl(endpoint: str, tls: list[str], *args: str) -> subprocess.CompletedProcess[bytes]:
    assert ETCDCTL is not None
    env = {**os.environ, "ETCDCTL_API": "3"}
    with trio.fail_after(20):
        return await trio.run_process([ETCDCTL, f"--endpoints=https://{endpoint}", "--command-timeout=5s",
                                       "--dial-timeout=3s", *tls, *args],
                                      capture_stdout=True, capture_stderr=True, check=False, env=env)


async def _https_post(address: str, path: str, body: bytes, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    with trio.fail_after(10):
        tcp = await trio.open_tcp_stream(host, int(port))
        stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1", https_compatible=True)
        try:
            await stream.send_all(f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {len(body)}\r\n"
                                  f"Connection: close\r\n\r\n".encode() + body)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        finally:
            await trio.aclose_forcefully(stream)
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


@needs_etcdctl
async def test_both_faces_over_mutual_tls(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    server_cert, server_key = cert_files(tmp_path, ca, "server")
    client_cert, client_key = cert_files(tmp_path, ca, "client")
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    peer, client, grpc, gateway = (f"127.0.0.1:{p}" for p in free_ports(4))
    toml = tmp_path / "dengine.toml"
    toml.write_text(
        f'[node]\nid = 1\ndata_dir = "{tmp_path / "data"}"\npeer_address = "{peer}"\nclient_address = "{client}"\n'
        f'[server]\nmetrics_address = "off"\netcd_address = "{grpc}"\netcd_gateway_address = "{gateway}"\n'
        f'tls_cert = "{server_cert}"\ntls_key = "{server_key}"\ntls_ca = "{ca_path}"\n'
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "dengine", "serve", "--config", str(toml)],
                                            stdout=log, stderr=subprocess.STDOUT)
    tls = ["--cacert", str(ca_path), "--cert", client_cert, "--key", client_key]
    try:
        with trio.fail_after(DEADLINE):
            while (done := await _etcdctl(grpc, tls, "put", "/tls/k", "v")).returncode != 0:
                assert proc.returncode is None, (tmp_path / "serve.log").read_text()
                await trio.sleep(0.2)
            assert done.stdout == b"OK\n"
            got = await _etcdctl(grpc, tls, "get", "/tls/k")
            assert got.returncode == 0 and got.stdout == b"/tls/k\nv\n", got
            # Without a client certificate the handshake is refused: no answer.
            refused = await _etcdctl(grpc, ["--cacert", str(ca_path)], "get", "/tls/k")
            assert refused.returncode != 0 and b"/tls/k" not in refused.stdout, refused

            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            ctx.load_cert_chain(client_cert, client_key)
            status, body = await _https_post(gateway, "/v3/kv/range", json.dumps({"key": "L3Rscy9r"}).encode(), ctx)
            assert status == 200, body
            assert [kv["value"] for kv in json.loads(body)["kvs"]] == ["dg=="]  # base64 of b"v"
            members = json.loads((await _https_post(gateway, "/v3/cluster/member/list", b"{}", ctx))[1])
            assert members["members"][0]["clientURLs"] == [f"https://{gateway}"]
            bare = ssl.create_default_context()
            ca.configure_trust(bare)
            try:
                answer: tuple[int, bytes] | None = await _https_post(gateway, "/v3/kv/range", b"{}", bare)
            except (trio.BrokenResourceError, ssl.SSLError, OSError, IndexError):
                answer = None  # refused during or right after the handshake (IndexError: no response at all)
            assert answer is None, f"the gateway answered a client with no certificate: {answer}"
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            with trio.move_on_after(10):
                await proc.wait()
            log.close()
