"""Certificates for the TLS tests: trustme issues them, these write them as
the PEM files a server's configuration names."""

from __future__ import annotations

import pathlib

import trustme


def cert_files(tmp: pathlib.Path, ca: trustme.CA, name: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost signed by ``ca``: the paths of
    ``<name>.pem`` (the chain) and ``<name>.key`` in ``tmp``."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    return str(cert_path), str(key_path)
