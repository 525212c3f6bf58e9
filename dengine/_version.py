"""The package's version: one place, read by ``dengine.__version__``, the
CLI's ``--version`` and every node's status (layer 0: no imports)."""

__version__ = "0.1.0.dev0"
