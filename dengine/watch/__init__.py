"""dengine.watch."""
