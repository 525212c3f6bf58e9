"""Chaos runs: real `dengine serve` processes behind fault-injecting proxies,
clients recording a history, and a linearizability checker.

`python -m tests.chaos --help`; see tests/chaos/__main__.py.
"""
