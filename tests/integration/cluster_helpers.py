"""Helpers for tests that start servers or processes on loopback TCP.

In-process clusters of engines are dengine.testing.open_cluster (public:
applications embedding dengine test with it too).
"""

from __future__ import annotations

from dengine.testing import free_ports

__all__ = ["free_ports"]
