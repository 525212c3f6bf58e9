"""dengine benchmarks: ``python -m benchmarks <scenario> [options]``."""
