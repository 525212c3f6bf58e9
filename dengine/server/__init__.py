"""dengine.server: a standalone node serving the client protocol.

See :func:`open_server` / :func:`serve` and docs/protocol.md.
"""

from dengine.server.main import Server, open_server, serve, server_ssl_context
from dengine.server.service import ServerStatistics, ServiceOptions

__all__ = ["Server", "ServerStatistics", "ServiceOptions", "open_server", "serve", "server_ssl_context"]
