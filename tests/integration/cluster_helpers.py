"""Helpers for tests that start servers or processes on loopback TCP.

In-process clusters of engines are dengine.testing.open_cluster (public:
applications embedding dengine test with it too).
"""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free at the time of the call."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
