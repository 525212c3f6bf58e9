"""dengine.transport."""
