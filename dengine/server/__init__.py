"""dengine.server."""
