"""dengine.client: talk to dengine servers over the client protocol.

Never imports the engine (tests/unit/test_layers.py). See :func:`open_client`.
"""

from dengine.client.client import Client, LeaderWatch, RemoteWatch, open_client

__all__ = ["Client", "LeaderWatch", "RemoteWatch", "open_client"]
