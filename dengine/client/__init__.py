"""dengine.client."""
