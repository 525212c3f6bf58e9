"""dengine.raft."""
