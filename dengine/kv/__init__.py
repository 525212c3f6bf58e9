"""dengine.kv."""
