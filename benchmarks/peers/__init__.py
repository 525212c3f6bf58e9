"""Peer systems the suite measures beside dengine, in the same run.

Each adapter module offers ``missing() -> str | None`` (None when the peer can
run here, else why not and the command that installs it: the suite never
installs anything) and ``start(ctx) -> Started`` (its processes, and the child
that generates load and answers the suite's JSON ``run`` commands, the same
protocol as ``benchmarks/node_proc.py``).
"""
