"""dengine.runtime."""
