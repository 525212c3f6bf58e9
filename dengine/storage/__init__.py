"""dengine.storage."""
