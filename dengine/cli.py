"""The `dengine` command (docs/cli.md).

    dengine serve [flags]            run one node as a server (clients on 127.0.0.1:9081)
    dengine run [flags]              run one embedded engine node until Ctrl-C
    dengine get KEY | put KEY VALUE | del KEY | cas KEY NEW | scan PREFIX
    dengine watch KEY | members | status [--all | --cluster] | leader
    dengine health [--cluster]       is each endpoint (member) serving linearizable reads?
    dengine member list|add|promote|remove|update    membership (docs/operations.md)
    dengine snapshot save FILE | restore FILE         backups
    dengine lease grant TTL | keep-alive ID | revoke ID | ttl ID | list
    dengine txn [-i]                 a transaction read from stdin (etcdctl's syntax)
    dengine lock NAME [COMMAND ...] | elect NAME [VALUE] | elect NAME --listen
    dengine --version

Conventions follow etcdctl: ``dengine COMMAND --help`` for every command;
``--endpoints`` (or ``DENGINE_ENDPOINTS``) names the servers; ``-w
simple|json|table`` picks the output; keys and values are UTF-8 text, or
hex with ``--hex``. The common flags (``--endpoints``, ``--timeout``,
``-w``, ``--log-level``, ``--log-format``, ...) may come before or after the
command. Errors go to stderr in plain words; log records go to stderr as
text, or as one JSON object per line with ``--log-format json``. Exit codes:

* 0 ok
* 1 a dengine error (unreachable cluster, timeout, refused, ...); ``health``:
  an endpoint is unhealthy; ``status --all|--cluster``: one did not answer
* 2 bad usage (unknown flag, invalid argument or configuration)
* 3 a negative answer: ``get`` of a missing key, ``del`` of a missing key,
  ``cas`` that did not swap, a ``txn`` whose compares failed, a ``lease``
  command on a lease that does not exist
* 4 ``serve``: this node was removed from the cluster
* 130 interrupted (Ctrl-C) for client commands
* ``lock NAME COMMAND``: the command's own exit code

Start-up: the client commands use the blocking client
(:mod:`dengine.client.blocking`) and never import trio, the engine or the
server; ``serve`` and ``run`` import them when they start. ``lock`` and
``elect`` are the exception: they use :mod:`dengine.concurrency`, which is
trio-native, through the trio client (``dengine.open_client``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dengine.errors import ClusterError, ConfigError, DengineError, InvalidArgument, LeaseNotFound, UsageError

if TYPE_CHECKING:
    import trio

    from dengine.api import Compare, Member, Op, Status, TxnResult
    from dengine.client.blocking import BlockingClient
    from dengine.config import Config

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NEGATIVE = 3
EXIT_REMOVED = 4
EXIT_INTERRUPTED = 130

_CLIENT_COMMANDS = ("get", "put", "del", "cas", "scan", "watch", "members", "status", "health", "leader",
                    "member", "snapshot", "lease", "txn", "lock", "elect")
# The client commands that run on trio (dengine.concurrency is trio-native).
_TRIO_COMMANDS = ("lock", "elect")
_LEASE_COMMANDS = ("grant", "keep-alive", "revoke", "ttl", "list")
# The common flags of the client commands, by dest (see _common_flags).
_CLIENT_FLAGS = {
    "endpoints": "--endpoints", "timeout": "--timeout", "write_out": "--write-out", "hex": "--hex",
    "cacert": "--cacert", "cert": "--cert", "keyfile": "--key",
}
_LOG_FORMATS = ("text", "json")
_TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What `dengine health` reads (linearizably) on each endpoint. Nothing
# writes it: a read of a missing key is as good a probe as any, and costs
# no log entry.
_HEALTH_KEY = b"/dengine/health"


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


class _Version(argparse.Action):
    """``--version``: the installed package's version (importlib.metadata),
    looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version of dengine and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"dengine {version()}")
        parser.exit()


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dengine")
    except metadata.PackageNotFoundError:  # a source tree that was not installed
        return str(sys.modules["dengine"].__version__)  # the package this module is in


def _log_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a flag given before the command is not reset by the command's parser.
    p.add_argument("--log-level", default=argparse.SUPPRESS, choices=["debug", "info", "warning", "error"],
                   help="log verbosity (env DENGINE_LOG_LEVEL; default info)")
    p.add_argument("--log-format", default=argparse.SUPPRESS, choices=_LOG_FORMATS,
                   help="log records as text lines or as JSON, one object per line: time, level, logger, "
                   "message, exception (env DENGINE_LOG_FORMAT; default text)")


def _common_flags(p: argparse.ArgumentParser) -> None:
    """The client commands' common flags. Defaults are filled in after
    parsing (_client_defaults), so these may come before or after the
    command."""
    g = p.add_argument_group("connection and output (before or after the command)")
    s = argparse.SUPPRESS
    g.add_argument("--endpoints", default=s,
                   help="comma-separated server client addresses, host:port or http(s)://host:port "
                   "(env DENGINE_ENDPOINTS; default 127.0.0.1:9081)")
    g.add_argument("--cluster-id", default=s,
                   help="cluster id the servers must have (env DENGINE_CLUSTER_ID; default 'dengine')")
    g.add_argument("--timeout", type=float, default=s, help="deadline of the command in seconds (default 5)")
    g.add_argument("-w", "--write-out", choices=["simple", "json", "table"], default=s,
                   help="output format (default simple)")
    g.add_argument("--hex", action="store_true", default=s, help="keys and values are given and printed as hex")
    g.add_argument("--cacert", default=s, help="CA bundle: connect with TLS and verify the server against it")
    g.add_argument("--cert", default=s, help="client certificate (PEM) for servers that require one")
    g.add_argument("--key", dest="keyfile", default=s, help="private key of --cert")
    _log_flag(g)  # type: ignore[arg-type]


def _consistency_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--consistency", choices=["linearizable", "lease", "eventual"],
                   help="read consistency (default: the server's, normally linearizable)")


def _sub(sub: Any, name: str, help_: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=description)  # type: ignore[no-any-return]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dengine",
        description="dengine: an embeddable Raft consensus key-value engine for trio. "
        "`dengine COMMAND --help` explains each command.",
        epilog="exit codes: 0 ok, 1 error, 2 bad usage, 3 key not found / not deleted / CAS not swapped / "
        "txn FAILURE / lease not found, 130 interrupted",
    )
    parser.add_argument("--version", action=_Version)
    _common_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = _sub(sub, "run", "run one embedded engine node until interrupted",
               "Run one dengine node in this process until Ctrl-C / SIGTERM. With no flags: "
               "a single node on ./dengine-data.")
    run.add_argument("--data-dir", help="data directory (default ./dengine-data, or the config file's)")
    run.add_argument("--config", help="TOML configuration file (DENGINE_* environment variables apply on top)")
    run.add_argument("--self-check", action="store_true",
                     help="write, read and delete one key once ready, print the result, and exit")
    _log_flag(run)

    serve = _sub(sub, "serve", "run one node as a server for remote clients",
                 "Run one dengine node serving the client protocol (docs/protocol.md) until SIGINT/SIGTERM, "
                 "which stop it gracefully (leadership handover, sync, exit 0). With no flags: a single node "
                 "on ./dengine-data serving clients on 127.0.0.1:9081. Every setting can also come from "
                 "--config and DENGINE_* environment variables; flags win.")
    serve.add_argument("--config", help="TOML configuration file (the engine's format)")
    serve.add_argument("--id", type=int, help="this node's id (node.id)")
    serve.add_argument("--data-dir", help="data directory (node.data_dir)")
    serve.add_argument("--peer-address", help="host:port for Raft peers (node.peer_address)")
    serve.add_argument("--advertise-peer-address", help="host:port the other members reach this node at, when "
                       "not --peer-address (node.advertise_peer_address; etcd's --initial-advertise-peer-urls)")
    serve.add_argument("--client-address", help="host:port for clients (node.client_address; default 127.0.0.1:9081)")
    serve.add_argument("--metrics-address", help="host:port for HTTP: /metrics, /health, /status.json and the cluster "
                       "page (server.metrics_address; default 127.0.0.1:9082; 'off' turns it off)")
    serve.add_argument("--etcd-address", help="host:port for etcd's v3 gRPC API: etcdctl and etcd clients "
                       "(server.etcd_address; default off; needs pip install 'dengine[etcd]')")
    serve.add_argument("--etcd-gateway-address", help="host:port for etcd's JSON gateway: POST /v3/kv/range, ... "
                       "(server.etcd_gateway_address; default off; needs pip install 'dengine[etcd]')")
    serve.add_argument("--initial-cluster", help="id=host:port,... peer addresses of the members (cluster.initial)")
    serve.add_argument("--client-addresses",
                       help="id=host:port,... client addresses of the members, for leader hints "
                       "(cluster.client_addresses)")
    serve.add_argument("--cluster-id", default=argparse.SUPPRESS, help="cluster id checked in every handshake (cluster.id)")
    serve.add_argument("--join", metavar="ENDPOINTS",
                       help="host:port,... client endpoints of a running cluster: ask it to add this node (as a "
                       "learner, promoted once caught up) and start as that member")
    serve.add_argument("--no-auto-promote", action="store_true",
                       help="with --join: stay a learner until `dengine member promote`")
    _log_flag(serve)

    get = _sub(sub, "get", "read a key (or every key under a prefix)",
               "Print the value of KEY; exit 3 if it does not exist. With --prefix, every key starting "
               "with KEY (like scan).")
    get.add_argument("key", help="the key")
    get.add_argument("--prefix", action="store_true", help="read every key starting with KEY")
    get.add_argument("--keys-only", action="store_true", help="print keys only")
    _consistency_flag(get)

    put = _sub(sub, "put", "write a key",
               "Set KEY to VALUE; prints OK and the revision of the write. VALUE '-' reads the value from "
               "standard input, --value-file from a file (as bytes, as they are; needed for values over "
               "~128 KiB, the largest one command-line argument may be).")
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="the value, or '-' for standard input")
    put.add_argument("--value-file", metavar="PATH", help="read the value from this file")
    put.add_argument("--ttl", type=float, help="seconds after which the key expires")
    put.add_argument("--lease", metavar="ID", help="attach the key to lease ID (hex, as `dengine lease grant` "
                     "prints it): it is deleted when the lease ends")

    delete = _sub(sub, "del", "delete a key", "Delete KEY; prints 1 if it existed (exit 0), 0 if not (exit 3).")
    delete.add_argument("key")

    cas = _sub(sub, "cas", "compare and swap",
               "Set KEY to NEW only if it currently holds --expected (or, with --absent, only if it does "
               "not exist). Prints true if it swapped (exit 0), false if not (exit 3). NEW '-' reads the "
               "value from standard input.")
    cas.add_argument("key")
    cas.add_argument("new")
    which = cas.add_mutually_exclusive_group(required=True)
    which.add_argument("--expected", help="the value KEY must hold")
    which.add_argument("--absent", action="store_true", help="KEY must not exist")
    cas.add_argument("--ttl", type=float, help="seconds after which the key expires")

    scan = _sub(sub, "scan", "list every key under a prefix",
                "Print every key starting with PREFIX (and its value), in key order.")
    scan.add_argument("prefix", nargs="?", default="", help="key prefix (default: everything)")
    scan.add_argument("--keys-only", action="store_true", help="print keys only")
    _consistency_flag(scan)

    watch = _sub(sub, "watch", "print changes to a key or prefix",
                 "Print changes to KEY (with --prefix: to every key under KEY, which must start and end "
                 "with '/') as they commit, until Ctrl-C or --count events. Each event is 3 lines: its "
                 "type, its key, its value (empty for DELETE); with --prev-kv a 4th: the value before "
                 "(empty if none).")
    watch.add_argument("key")
    watch.add_argument("--prefix", action="store_true", help="watch every key under KEY")
    watch.add_argument("--prev-kv", action="store_true", help="also print the value before each change")
    watch.add_argument("--start-revision", type=int, help="replay retained changes from this revision first")
    watch.add_argument("--count", type=int, help="exit after this many PUT/DELETE events")
    watch.add_argument("--progress", action="store_true", help="also print PROGRESS heartbeats")

    _sub(sub, "members", "list the cluster members",
         "Print every member, one line each: id, peer address, client address, voter or learner, "
         "whether it is the leader. An unknown field is an empty column.")
    status = _sub(sub, "status", "show the status of each endpoint, or of every member",
                  "Print each endpoint's node id, role, term, leader, commit and applied index. With --cluster, "
                  "like `etcdctl endpoint status --cluster`: ask every member (found in the member list) at its "
                  "client address, one row each (endpoint, id, version, db size, role, leader, is learner, raft "
                  "term, raft index, raft applied index, errors); exit 1 if a member did not answer.")
    which_status = status.add_mutually_exclusive_group()
    which_status.add_argument("--all", action="store_true",
                              help="ask every endpoint (default: the first that answers)")
    which_status.add_argument("--cluster", action="store_true",
                              help="ask every member of the cluster at its client address")
    health = _sub(sub, "health", "check that each endpoint, or every member, is healthy",
                  "Like `etcdctl endpoint health`: an endpoint is healthy when it serves a linearizable read "
                  f"(of the reserved key {_HEALTH_KEY.decode()}) within --timeout; that needs the node up, a leader "
                  "that a majority of voters still follows, and the node caught up with the leader's commit "
                  "index. No entry is written. Checks every --endpoints endpoint, or with --cluster every "
                  "member at its client address, at the same time. Prints `ENDPOINT is healthy: ...: took = "
                  "T` (stdout) or `ENDPOINT is unhealthy: ...` (stderr); exit 1 if any is unhealthy.")
    health.add_argument("--cluster", action="store_true",
                        help="check every member of the cluster at its client address")
    _sub(sub, "leader", "show the current leader", "Print the leader's id, term and client address.")

    member = _sub(sub, "member", "list, add, promote, remove or update cluster members",
                  "Membership operations, like `etcdctl member`: list | add PEER_ADDRESS | promote ID | "
                  "remove ID | update ID. Changes go to the leader, one at a time.")
    msub = member.add_subparsers(dest="member_command", metavar="SUBCOMMAND", required=True)
    _sub(msub, "list", "list the cluster members", "The same as `dengine members`.")
    add = _sub(msub, "add", "add a member (a learner unless --voter)",
               "Add a member that will listen for peers at PEER_ADDRESS. It joins as a learner (it receives "
               "the log, does not vote); with --voter it is promoted once it has caught up, within --timeout. "
               "Start the new node with `dengine serve --join ...` (or --id and the printed cluster).")
    add.add_argument("peer_address", metavar="PEER_ADDRESS", help="host:port the new member listens on for peers")
    add.add_argument("--client-address", help="host:port the new member serves clients on")
    add.add_argument("--id", type=int, dest="node_id", help="its node id (default: one never used in this cluster)")
    kind = add.add_mutually_exclusive_group()
    kind.add_argument("--learner", action="store_true", help="add it as a learner (the default)")
    kind.add_argument("--voter", action="store_true", help="promote it to voter once it has caught up")
    promote = _sub(msub, "promote", "promote a caught-up learner to voter",
                   "Promote learner ID to voter; refused while it is more than raft.learner_max_lag entries "
                   "behind the leader.")
    promote.add_argument("node_id", metavar="ID", type=int)
    remove = _sub(msub, "remove", "remove a member",
                  "Remove member ID (the leader too: it hands over first). Refused if it would leave no "
                  "majority the leader can reach.")
    remove.add_argument("node_id", metavar="ID", type=int)
    update = _sub(msub, "update", "change a member's recorded addresses",
                  "Record a new peer and/or client address for member ID.")
    update.add_argument("node_id", metavar="ID", type=int)
    update.add_argument("--peer-address")
    update.add_argument("--client-address")

    snap = _sub(sub, "snapshot", "back up a cluster, or seed a new one from a backup",
                "Like `etcdctl snapshot`: save FILE | restore FILE.")
    ssub = snap.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND", required=True)
    save = _sub(ssub, "save", "stream a consistent backup from a running cluster to FILE",
                "Write a consistent backup of the whole key-value state (at a linearizable read point) to "
                "FILE (through FILE.part, checked, then renamed). Prints its revision; progress goes to stderr "
                "for large backups.")
    save.add_argument("file", metavar="FILE")
    save.add_argument("--data-dir", help="disaster recovery: back up a STOPPED node's data directory instead of a "
                      "running cluster -- every entry in its log, committed or not (loses the guarantee: see "
                      "docs/operations.md)")
    restore = _sub(ssub, "restore", "seed a new member's data directory from a backup",
                   "Write, into an empty --data-dir, the state of backup FILE for member --id of a NEW cluster "
                   "of --initial-cluster (run it for every member, with the same file and members), then start "
                   "each with `dengine serve` and the printed flags. The new cluster gets its own cluster id "
                   "(--cluster-id, default <old id>-restored-<revision>), so it cannot mix with the old one.")
    restore.add_argument("file", metavar="FILE")
    restore.add_argument("--data-dir", required=True, help="the new member's data directory (new or empty)")
    restore.add_argument("--id", type=int, required=True, dest="node_id", help="the new member's node id")
    restore.add_argument("--initial-cluster", required=True, help="id=host:port,... peer addresses of the new members")

    lease = _sub(sub, "lease", "grant, keep alive, revoke and inspect leases",
                 "Leases, like `etcdctl lease`: grant TTL | keep-alive ID | revoke ID | ttl ID | list. A key put "
                 "with --lease ID is deleted when the lease ends (revoked, or not kept alive for its TTL). Lease "
                 "ids are printed and taken in hex, as etcdctl does. Exit 3 when the lease does not exist.")
    lsub = lease.add_subparsers(dest="lease_command", metavar="SUBCOMMAND", required=True)
    grant = _sub(lsub, "grant", "grant a new lease",
                 "Grant a lease of TTL seconds (the cluster may grant more: it has a minimum); prints "
                 "`lease ID granted with TTL(Ns)`.")
    grant.add_argument("ttl", metavar="TTL", type=float, help="seconds the lease lives unless kept alive")
    keep = _sub(lsub, "keep-alive", "keep a lease alive until interrupted",
                "Renew lease ID about every third of its TTL, printing `lease ID keepalived with TTL(N)` after "
                "each renewal, until Ctrl-C (exit 130) or until the lease is gone (exit 3). With --once: renew "
                "once and exit.")
    keep.add_argument("lease_id", metavar="ID", help="the lease id, in hex")
    keep.add_argument("--once", action="store_true", help="renew once and exit")
    revoke = _sub(lsub, "revoke", "end a lease now (its keys are deleted)",
                  "Revoke lease ID: it ends now and every key attached to it is deleted.")
    revoke.add_argument("lease_id", metavar="ID", help="the lease id, in hex")
    ttl = _sub(lsub, "ttl", "show a lease's TTL and the time it has left",
               "Print the TTL lease ID was granted with and the seconds it has left (as the leader counts them); "
               "with --keys also the keys attached to it.")
    ttl.add_argument("lease_id", metavar="ID", help="the lease id, in hex")
    ttl.add_argument("--keys", action="store_true", help="also list the keys attached to the lease")
    _sub(lsub, "list", "list every lease", "Print `found N leases`, then each lease id (hex), one per line.")

    txn = _sub(sub, "txn", "run a transaction read from standard input",
               "Read a transaction from standard input in etcdctl's `txn` syntax and run it: the compares (one "
               "per line, e.g. mod(\"key1\") > \"0\"), a blank line, the success ops (put KEY VALUE "
               "[--lease=ID], get KEY [--prefix], del KEY [--prefix]), a blank line, the failure ops. Prints "
               "SUCCESS or FAILURE (exit 3), then, after a blank line each, the result of every op run. "
               "docs/cli.md gives the exact syntax.")
    txn.add_argument("-i", "--interactive", action="store_true",
                     help="prompt for each section (compares, success ops, failure ops) on stderr")

    lock = _sub(sub, "lock", "acquire a distributed lock (and run a command while holding it)",
                "Acquire lock NAME (a key prefix starting with '/'), waiting for earlier holders, like "
                "`etcdctl lock`. Without COMMAND: print the lock's key and fencing token, hold the lock until "
                "SIGINT/SIGTERM, release it, exit 0. With COMMAND: run it while holding the lock, with "
                "DENGINE_LOCK_KEY, DENGINE_LOCK_TOKEN (the fencing token) and DENGINE_LOCK_LEASE in its "
                "environment, release the lock when it exits and exit with its exit code. If the lock's "
                "session (a lease kept alive by this process) is lost, the command is terminated and the exit "
                "code is 1. Put `--` before a COMMAND that has flags of its own.")
    lock.add_argument("name", metavar="NAME", help="the lock's name, e.g. /locks/backup")
    lock.add_argument("command_argv", metavar="COMMAND", nargs="*", help="a command to run while holding the lock")
    lock.add_argument("--ttl", type=float, default=60.0,
                      help="seconds the cluster waits, once this process stops renewing its session, before it "
                      "releases the lock for it (default 60)")

    elect = _sub(sub, "elect", "campaign in a leader election, or observe one",
                 "Campaign in election NAME (a key prefix starting with '/') with VALUE, like `etcdctl elect`: "
                 "once elected, print the leader key and VALUE, lead until SIGINT/SIGTERM, resign, exit 0. "
                 "With --listen: print the leader's value now and each time it changes, until interrupted.")
    elect.add_argument("name", metavar="NAME", help="the election's name, e.g. /elections/scheduler")
    elect.add_argument("value", metavar="VALUE", nargs="?", help="this candidate's value (the leader's is visible "
                       "to everyone)")
    elect.add_argument("-l", "--listen", action="store_true", help="observe the election instead of campaigning")
    elect.add_argument("--ttl", type=float, default=60.0,
                       help="seconds the cluster waits, once this process stops renewing its session, before the "
                       "next candidate takes over (default 60)")

    for name in _CLIENT_COMMANDS:
        _common_flags(sub.choices[name])
    for name in ("list", "add", "promote", "remove", "update"):
        _common_flags(msub.choices[name])
    for name in ("save", "restore"):
        _common_flags(ssub.choices[name])
    for name in _LEASE_COMMANDS:
        _common_flags(lsub.choices[name])
    return parser


def _client_defaults(args: argparse.Namespace) -> None:
    """Fill in the common flags not given, before or after the command."""
    defaults = {
        "endpoints": os.environ.get("DENGINE_ENDPOINTS") or "127.0.0.1:9081",
        "cluster_id": os.environ.get("DENGINE_CLUSTER_ID") or None,
        "timeout": 5.0, "write_out": "simple", "hex": False, "cacert": None, "cert": None, "keyfile": None,
    }
    for name, value in defaults.items():
        if not hasattr(args, name):
            setattr(args, name, value)


# --------------------------------------------------------------------------
# Logging: text or JSON lines on stderr
# --------------------------------------------------------------------------

# The attributes every LogRecord has; the others were given with extra=.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _rfc3339(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC, milliseconds:
    2024-05-01T12:00:00.123Z."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class _JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (RFC 3339, UTC),
    ``level``, ``logger``, ``message``; ``exception`` (the traceback text)
    when the record carries one, ``stack`` with stack_info; and the fields
    given with ``extra=``, under their own names (values JSON cannot hold
    are written as their str())."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"time": _rfc3339(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in obj and not key.startswith("_"):
                obj[key] = value
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exception"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, default=str)


def _log_settings(args: argparse.Namespace) -> tuple[str | None, str]:
    """The level (None: not given) and format the flags or the environment ask for."""
    level = getattr(args, "log_level", None) or os.environ.get("DENGINE_LOG_LEVEL") or None
    fmt = getattr(args, "log_format", None) or os.environ.get("DENGINE_LOG_FORMAT") or "text"
    if fmt not in _LOG_FORMATS:
        raise UsageError(f"DENGINE_LOG_FORMAT must be one of {', '.join(_LOG_FORMATS)}, got {fmt!r}")
    return level, fmt


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_LOG_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    if fmt == "json":
        logging.captureWarnings(True)  # warnings.warn() lines would not be JSON


def _logs_json() -> bool:
    """Whether the root logger writes JSON (so errors should be records too)."""
    return any(isinstance(h.formatter, _JsonFormatter) for h in logging.getLogger().handlers)


def _client_logging(args: argparse.Namespace, *, quiet: bool) -> None:
    """Client commands log nothing of their own; the library's records
    (warnings by default: what Python shows unconfigured) are shown as
    --log-level / --log-format ask. ``quiet`` (lock, elect: they say what
    matters in their own words): dengine's records below ERROR only with
    --log-level."""
    level, fmt = _log_settings(args)
    if level or fmt == "json":
        _configure_logging(level or "warning", fmt)
    if quiet and not level:
        logging.getLogger("dengine").setLevel(logging.ERROR)


# --------------------------------------------------------------------------
# Text, hex, output
# --------------------------------------------------------------------------


def _arg_bytes(text: str, hex_: bool, what: str) -> bytes:
    if not hex_:
        return text.encode("utf-8", "surrogateescape")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidArgument(f"{what} {text!r} is not hex (--hex was given)") from None


def _value_bytes(text: str | None, path: str | None, hex_: bool, what: str) -> bytes:
    """A value from the command line, '-' (standard input) or a file; the
    last two are taken as bytes, as they are."""
    if path is not None:
        if text is not None:
            raise InvalidArgument(f"give the {what} either on the command line or with --value-file, not both")
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise InvalidArgument(f"cannot read --value-file {path!r}: {exc.strerror or exc}") from None
    if text is None:
        raise InvalidArgument(f"give the {what}: VALUE, '-' for standard input, or --value-file PATH")
    if text == "-":
        return sys.stdin.buffer.read()
    return _arg_bytes(text, hex_, what)


def _show(data: bytes | None, hex_: bool) -> str | None:
    if data is None:
        return None
    return data.hex() if hex_ else data.decode("utf-8", "backslashreplace")


class _Out:
    def __init__(self, fmt: str, hex_: bool) -> None:
        self.fmt = fmt
        self.hex = hex_

    def b(self, data: bytes | None) -> str | None:
        return _show(data, self.hex)

    def emit(self, obj: Any, simple: Sequence[str], table: tuple[list[str], list[list[Any]]] | None = None) -> None:
        if self.fmt == "json":
            import json

            print(json.dumps(obj, sort_keys=True))
        elif self.fmt == "table" and table is not None:
            print(_table(*table))
        else:
            for line in simple:
                print(line)
        sys.stdout.flush()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [sep, "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |", sep]
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    lines.append(sep)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Client commands (the blocking client: no trio, no engine)
# --------------------------------------------------------------------------


def _ssl_context(args: argparse.Namespace) -> Any:
    if not args.cacert:
        if args.cert:
            raise InvalidArgument("--cert needs --cacert (TLS)")
        return None
    import ssl

    ctx = ssl.create_default_context(cafile=args.cacert)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.keyfile)
    return ctx


def _client_command(args: argparse.Namespace) -> int:
    from dengine.client.blocking import connect

    _client_defaults(args)
    out = _Out(args.write_out, args.hex)
    if not args.timeout > 0:
        raise InvalidArgument(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.command in _TRIO_COMMANDS:
        return _trio_command(args, out)
    _client_logging(args, quiet=False)
    with connect(args.endpoints, timeout=args.timeout, cluster_id=args.cluster_id,
                 ssl_context=_ssl_context(args)) as client:
        return _HANDLERS[args.command](client, args, out)


def _get(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    key = _arg_bytes(args.key, args.hex, "key")
    if args.prefix:
        return _scan_bytes(client, key, args, out)
    kv = client.get_kv(key, consistency=args.consistency)
    if kv is None:
        out.emit({"key": out.b(key), "found": False}, [], (["key", "value", "revision"], []))
        print(f"dengine: key {args.key!r} not found", file=sys.stderr)
        return EXIT_NEGATIVE
    if args.keys_only:
        out.emit({"key": out.b(key), "revision": kv.revision, "found": True}, [out.b(key) or ""],
                 (["key", "revision"], [[out.b(key), kv.revision]]))
        return EXIT_OK
    out.emit({"key": out.b(key), "value": out.b(kv.value), "revision": kv.revision, "found": True},
             [out.b(kv.value) or ""], (["key", "value", "revision"], [[out.b(key), out.b(kv.value), kv.revision]]))
    return EXIT_OK


def _put(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    key = _arg_bytes(args.key, args.hex, "key")
    value = _value_bytes(args.value, args.value_file, args.hex, "value")
    lease = 0 if args.lease is None else _lease_id(args.lease)
    try:
        rev = client.put(key, value, ttl=args.ttl, lease=lease)
    except LeaseNotFound:
        raise InvalidArgument(f"lease {lease:x} does not exist (it expired, was revoked or never granted)") from None
    out.emit({"revision": rev}, [f"OK revision {rev}"], (["revision"], [[rev]]))
    return EXIT_OK


def _del(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    existed = client.delete(_arg_bytes(args.key, args.hex, "key"))
    out.emit({"deleted": 1 if existed else 0}, ["1" if existed else "0"], (["deleted"], [[int(existed)]]))
    return EXIT_OK if existed else EXIT_NEGATIVE


def _cas(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    key = _arg_bytes(args.key, args.hex, "key")
    expected = None if args.absent else _arg_bytes(args.expected, args.hex, "expected value")
    new = _value_bytes(args.new, None, args.hex, "value")
    swapped = client.compare_and_swap(key, expected=expected, new=new, ttl=args.ttl)
    out.emit({"swapped": swapped}, ["true" if swapped else "false"], (["swapped"], [[swapped]]))
    return EXIT_OK if swapped else EXIT_NEGATIVE


def _scan(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    return _scan_bytes(client, _arg_bytes(args.prefix, args.hex, "prefix"), args, out)


def _scan_bytes(client: BlockingClient, prefix: bytes, args: argparse.Namespace, out: _Out) -> int:
    kw = {} if args.consistency is None else {"consistency": args.consistency}
    result = client.scan_prefix(prefix, **kw)
    if args.keys_only:
        keys = [out.b(k) or "" for k, _ in result.entries]
        out.emit({"revision": result.revision, "entries": [{"key": k} for k in keys]}, keys,
                 (["key"], [[k] for k in keys]))
        return EXIT_OK
    simple: list[str] = []
    for k, v in result.entries:
        simple += [out.b(k) or "", out.b(v) or ""]
    obj = {"revision": result.revision,
           "entries": [{"key": out.b(k), "value": out.b(v)} for k, v in result.entries]}
    out.emit(obj, simple, (["key", "value"], [[out.b(k), out.b(v)] for k, v in result.entries]))
    return EXIT_OK


def _watch(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    from dengine.api import WatchEventType

    key = _arg_bytes(args.key, args.hex, "key")
    count = 0
    with client.watch(key, prefix=args.prefix, prev_kv=args.prev_kv, start_revision=args.start_revision) as watch:
        print(f"watching {args.key!r}{' (prefix)' if args.prefix else ''}", file=sys.stderr, flush=True)
        for ev in watch:
            if ev.type == WatchEventType.PROGRESS and not args.progress:
                continue
            # docs/cli.md: 3 lines per event (4 with --prev-kv), whatever its type.
            lines = [ev.type.name, out.b(ev.key) or "", out.b(ev.value) or ""]
            if args.prev_kv:
                lines.append(out.b(ev.prev_value) or "")
            out.emit({"type": ev.type.name, "key": out.b(ev.key), "value": out.b(ev.value),
                      "prev_value": out.b(ev.prev_value), "revision": ev.revision, "error": ev.error}, lines)
            if ev.type == WatchEventType.CANCELED:
                why = {5001: "the watcher fell behind (5001 WATCH_BUFFER_OVERFLOW); re-sync with scan, then watch "
                       "again", 5002: "the start revision is no longer retained (5002 COMPACTED); re-sync with "
                       "scan, then watch again"}.get(ev.error, f"error code {ev.error}")
                print(f"dengine: the watch was canceled at revision {ev.revision}: {why}", file=sys.stderr)
                return EXIT_ERROR
            if ev.type in (WatchEventType.PUT, WatchEventType.DELETE):
                count += 1
                if args.count is not None and count >= args.count:
                    return EXIT_OK
    return EXIT_OK


# -- leases -------------------------------------------------------------------------


def _lease_id(text: str) -> int:
    """A lease id as the CLI prints it: hex (an optional 0x is allowed)."""
    digits = text.strip().lower().removeprefix("0x")
    try:
        value = int(digits, 16)
    except ValueError:
        raise InvalidArgument(f"lease id {text!r} is not a hex number (lease ids are hex, as "
                              "`dengine lease grant` prints them)") from None
    if not 0 < value < 2**63:
        raise InvalidArgument(f"lease id {text!r} is out of range (a positive hex number below 8000000000000000)")
    return value


def _secs(seconds: float) -> str:
    """Seconds as a short number: 10, 2.5, 0.3."""
    return f"{seconds:.1f}".rstrip("0").rstrip(".")


def _lease_gone(lease_id: int) -> int:
    print(f"dengine: lease {lease_id:x} not found (it expired, was revoked or never granted)", file=sys.stderr)
    return EXIT_NEGATIVE


def _lease(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    what = args.lease_command
    if what == "grant":
        lease = client.grant_lease(args.ttl)
        out.emit({"id": f"{lease.id:x}", "ttl": lease.ttl}, [f"lease {lease.id:x} granted with TTL({_secs(lease.ttl)}s)"],
                 (["id", "ttl"], [[f"{lease.id:x}", _secs(lease.ttl)]]))
        return EXIT_OK
    if what == "list":
        leases = client.leases()
        out.emit({"leases": [{"id": f"{x.id:x}", "ttl": x.ttl} for x in leases]},
                 [f"found {len(leases)} leases"] + [f"{x.id:x}" for x in leases],
                 (["id", "ttl"], [[f"{x.id:x}", _secs(x.ttl)] for x in leases]))
        return EXIT_OK
    lease_id = _lease_id(args.lease_id)
    try:
        if what == "revoke":
            client.revoke_lease(lease_id)
            out.emit({"id": f"{lease_id:x}", "revoked": True}, [f"lease {lease_id:x} revoked"],
                     (["revoked"], [[f"{lease_id:x}"]]))
            return EXIT_OK
        if what == "ttl":
            st = client.lease_time_to_live(lease_id, keys=args.keys)
            text = f"lease {lease_id:x} granted with TTL({_secs(st.granted_ttl)}s), remaining({_secs(st.remaining)}s)"
            keys = [out.b(k) or "" for k in st.keys]
            obj: dict[str, Any] = {"id": f"{lease_id:x}", "granted_ttl": st.granted_ttl, "remaining": st.remaining}
            header = ["id", "granted ttl", "remaining"]
            row: list[Any] = [f"{lease_id:x}", _secs(st.granted_ttl), _secs(st.remaining)]
            if args.keys:
                text += f", attached keys([{' '.join(keys)}])"  # etcdctl's format
                obj["keys"] = keys
                header.append("keys")
                row.append(" ".join(keys))
            out.emit(obj, [text], (header, [row]))
            return EXIT_OK
    except LeaseNotFound:
        return _lease_gone(lease_id)
    return _keep_alive(client, args, out, lease_id)


def _keep_alive(client: BlockingClient, args: argparse.Namespace, out: _Out, lease_id: int) -> int:
    """Renew like etcdctl: about every third of the time the lease has left,
    printing each renewal, until interrupted or the lease is gone. A failed
    renewal is retried until the lease would have expired."""
    import time

    def emit(remaining: float) -> None:
        out.emit({"id": f"{lease_id:x}", "ttl": remaining}, [f"lease {lease_id:x} keepalived with TTL({_secs(remaining)})"],
                 (["id", "ttl"], [[f"{lease_id:x}", _secs(remaining)]]))

    try:
        remaining = client.keep_alive(lease_id)
    except LeaseNotFound:
        return _lease_gone(lease_id)
    emit(remaining)
    if args.once:
        return EXIT_OK
    expires = time.monotonic() + remaining
    next_at = time.monotonic() + remaining / 3
    while True:
        time.sleep(max(0.0, next_at - time.monotonic()))
        sent = time.monotonic()
        if sent >= expires:
            print(f"dengine: lease {lease_id:x} could not be renewed before it expired", file=sys.stderr)
            return EXIT_ERROR
        try:
            remaining = client.keep_alive(lease_id, timeout=min(args.timeout, expires - sent))
        except LeaseNotFound:
            print(f"dengine: lease {lease_id:x} expired or was revoked", file=sys.stderr)
            return EXIT_NEGATIVE
        except ClusterError as exc:  # an election, a slow or unreachable server: may pass
            print(f"dengine: renewing lease {lease_id:x} failed ({exc}); retrying", file=sys.stderr, flush=True)
            next_at = time.monotonic() + min(1.0, max(0.05, (expires - time.monotonic()) / 4))
            continue
        emit(remaining)
        expires = max(expires, sent + remaining)
        next_at = sent + remaining / 3


# -- txn ----------------------------------------------------------------------------

# etcdctl's compare targets (and the API's names) -> Compare.target
_TXN_TARGETS = {"value": "value", "val": "value", "version": "version", "ver": "version",
                "create": "create_revision", "c": "create_revision", "create_revision": "create_revision",
                "mod": "mod_revision", "m": "mod_revision", "mod_revision": "mod_revision", "lease": "lease"}
_TXN_OPERATORS = {"=": "==", "==": "==", "!=": "!=", "<": "<", ">": ">"}
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_GO_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}


class _TxnSyntax(InvalidArgument):
    """A line of a transaction that does not parse (exit 2)."""


def _unquote(token: str) -> bytes:
    """A token of a txn line as bytes: "double-quoted" with Go's escapes (as
    etcdctl reads them; \\xHH is one byte), 'single-quoted' as it is, or a
    bare word."""
    if token.startswith("'"):
        return token[1:-1].encode("utf-8", "surrogateescape")
    if not token.startswith('"'):
        return token.encode("utf-8", "surrogateescape")
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        esc = body[i + 1]  # the quoting regex guarantees a character after a backslash
        if esc in _GO_ESCAPES:
            out.append(_GO_ESCAPES[esc])
            i += 2
        elif esc in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError(f"\\{esc} needs {width} hex digits")
            code = int(digits, 16)
            out += bytes([code]) if esc == "x" else chr(code).encode("utf-8", "surrogateescape")
            i += 2 + width
        elif esc in "01234567":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or any(c not in "01234567" for c in digits) or int(digits, 8) > 255:
                raise ValueError("an octal escape is \\ and 3 octal digits up to \\377")
            out.append(int(digits, 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return bytes(out)


def _txn_bytes(token: str, hex_: bool, what: str) -> bytes:
    data = _unquote(token)
    if not hex_:
        return data
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{what} {token} is not hex (--hex was given)") from None


def _parse_compare(text: str, hex_: bool) -> Compare:
    """``TARGET("KEY") OP "OPERAND"``, as etcdctl's txn reads it."""
    import re

    from dengine.api import Compare

    m = re.fullmatch(rf'(\w+)\s*\(\s*({_QUOTED})\s*\)\s*(==|!=|=|<|>)\s*({_QUOTED}|[^\s"]+)', text)
    if m is None:
        hint = ""
        if text.split()[0] in ("put", "get", "del"):
            hint = " (the compares come first; a transaction without compares starts with a blank line)"
        raise ValueError('malformed comparison: expected TARGET("KEY") OP "OPERAND" with OP one of =, !=, <, >'
                         + hint)
    name, key_token, op, operand_token = m.groups()
    target = _TXN_TARGETS.get(name)
    if target is None:
        raise ValueError(f"unknown compare target {name!r}: one of value (val), version (ver), create (c), "
                         "mod (m), lease")
    key = _txn_bytes(key_token, hex_, "key")
    raw = operand_token[1:-1] if operand_token.startswith('"') else operand_token
    operand: bytes | int
    if target == "value":
        operand = _txn_bytes(operand_token, hex_, "value")
    elif target == "lease":
        try:
            operand = 0 if raw.strip() == "0" else _lease_id(raw)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
    else:
        if not raw.isdigit():
            raise ValueError(f"{name}() compares with a non-negative whole number, got {operand_token}")
        operand = int(raw)
    return Compare(key, target, _TXN_OPERATORS[op], operand)


def _parse_op(text: str, hex_: bool) -> tuple[Op, str]:
    """``put KEY VALUE [--lease=ID]``, ``get KEY [END] [--prefix]`` or ``del
    KEY [END] [--prefix]``, as etcdctl's txn reads them: the op and what it
    is (put, get, del)."""
    import re

    from dengine.api import Op

    tokens = re.findall(rf"""{_QUOTED}|'[^']*'|[^\s"']\S*|\S""", text)
    if any(tok in ('"', "'") for tok in tokens):
        raise ValueError("unterminated quote")
    words: list[str] = []
    flags: dict[str, str | None] = {}
    it = iter(tokens)
    for tok in it:
        if tok.startswith("--"):
            name, eq, val = tok[2:].partition("=")
            if name == "lease" and not eq:
                val = next(it, "")
                if not val:
                    raise ValueError("--lease needs a lease id")
            if val[:1] in ('"', "'"):
                val = _unquote(val).decode("utf-8", "surrogateescape")
            flags[name] = val if (eq or name == "lease") else None
        else:
            words.append(tok)
    if not words or words[0] not in ("put", "get", "del"):
        raise ValueError("unknown op: one of put KEY VALUE [--lease=ID], get KEY [END] [--prefix], "
                         "del KEY [END] [--prefix]")
    kind, operands = words[0], words[1:]
    allowed = {"put": {"lease"}, "get": {"prefix"}, "del": {"prefix"}}[kind]
    for name in flags:
        if name not in allowed:
            raise ValueError(f"{kind} takes no --{name}" + (f" (only --{', --'.join(sorted(allowed))})"))
    if "prefix" in flags and flags["prefix"] is not None:
        raise ValueError("--prefix takes no value")
    if kind == "put":
        if len(operands) != 2:
            raise ValueError("put needs KEY and VALUE (quote a value with spaces)")
        try:
            lease = _lease_id(flags["lease"] or "") if "lease" in flags else 0
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
        return Op.put(_txn_bytes(operands[0], hex_, "key"), _txn_bytes(operands[1], hex_, "value"), lease=lease), kind
    if not 1 <= len(operands) <= 2:
        raise ValueError(f"{kind} needs KEY and at most a range END")
    key = _txn_bytes(operands[0], hex_, "key")
    end = _txn_bytes(operands[1], hex_, "range end") if len(operands) == 2 else None
    if "prefix" in flags:
        if end is not None:
            raise ValueError(f"{kind} takes a range END or --prefix, not both")
        return (Op.scan(key) if kind == "get" else Op.delete_prefix(key)), kind
    if end is not None:
        return (Op.scan_range(key, end) if kind == "get" else Op.delete_range(key, end)), kind
    return (Op.get(key) if kind == "get" else Op.delete(key)), kind


_TXN_PROMPTS = ("compares:", "success requests (get, put, del):", "failure requests (get, put, del):")


def _read_txn(stream: Any, hex_: bool, interactive: bool = False,
              ) -> tuple[list[Compare], list[tuple[Op, str]], list[tuple[Op, str]]]:
    """Parse a transaction from ``stream`` (binary lines): compares, a blank
    line, success ops, a blank line, failure ops (a blank line or the end).
    A line that does not parse raises _TxnSyntax naming it."""
    lineno = 0
    ended = False

    def section(prompt: str) -> list[tuple[int, str]]:
        nonlocal lineno, ended
        if interactive:
            print(prompt, file=sys.stderr, flush=True)
        lines: list[tuple[int, str]] = []
        while not ended:
            raw = stream.readline()
            if not raw:
                ended = True
                break
            lineno += 1
            text = raw.decode("utf-8", "surrogateescape").strip()
            if not text:
                break
            lines.append((lineno, text))
        return lines

    def parse(n: int, text: str, fn: Callable[[str, bool], Any]) -> Any:
        try:
            return fn(text, hex_)
        except (ValueError, InvalidArgument) as exc:
            raise _TxnSyntax(f"txn: line {n} `{text}`: {exc}") from None

    compares = [parse(n, text, _parse_compare) for n, text in section(_TXN_PROMPTS[0])]
    success = [parse(n, text, _parse_op) for n, text in section(_TXN_PROMPTS[1])]
    failure = [parse(n, text, _parse_op) for n, text in section(_TXN_PROMPTS[2])]
    if not interactive:
        for raw in iter(stream.readline, b""):
            lineno += 1
            text = raw.decode("utf-8", "surrogateescape").strip()
            if text:
                raise _TxnSyntax(f"txn: line {lineno} `{text}`: text after the failure ops (a transaction is three "
                                 "sections, compares, success ops and failure ops, each ended by a blank line)")
    return compares, success, failure


def _txn(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    compares, success, failure = _read_txn(sys.stdin.buffer, args.hex, args.interactive)
    try:
        result = client.txn(compares, [op for op, _ in success], [op for op, _ in failure])
    except LeaseNotFound:
        leases = sorted({f"{op.lease:x}" for op, _ in success + failure if op.lease})
        raise InvalidArgument(f"txn: lease {' or '.join(leases)} does not exist (it expired, was revoked or never "
                              "granted); nothing was applied") from None
    _print_txn(result, success if result.succeeded else failure, out)
    return EXIT_OK if result.succeeded else EXIT_NEGATIVE


def _print_txn(result: TxnResult, ops: list[tuple[Op, str]], out: _Out) -> None:
    """etcdctl's output: SUCCESS or FAILURE, then for each op a blank line
    and its result (put: OK; del: the number of keys deleted; get: key and
    value lines, none for a missing key)."""
    from dengine.api import KeyValue, ScanResult

    simple = ["SUCCESS" if result.succeeded else "FAILURE"]
    objs: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    branch = "success" if result.succeeded else "failure"
    for (op, kind), response in zip(ops, result.responses):
        simple.append("")
        key = out.b(op.key)
        if kind == "put":
            simple.append("OK")
            objs.append({"op": "put", "key": key, "revision": response})
            rows.append([branch, "put", key, f"OK revision {response}"])
        elif kind == "del":
            simple.append(str(response))
            objs.append({"op": "del", "key": key, "deleted": response})
            rows.append([branch, "del", key, response])
        elif isinstance(response, ScanResult):
            entries = [{"key": out.b(kv.key), "value": out.b(kv.value)} for kv in response.entries]
            for e in entries:
                simple += [e["key"] or "", e["value"] or ""]
            objs.append({"op": "get", "key": key, "entries": entries})
            rows.append([branch, "get", key, f"{len(entries)} keys"])
        else:
            kv: KeyValue | None = response
            if kv is None:
                objs.append({"op": "get", "key": key, "found": False})
                rows.append([branch, "get", key, "(not found)"])
            else:
                simple += [key or "", out.b(kv.value) or ""]
                objs.append({"op": "get", "key": key, "found": True, "value": out.b(kv.value),
                             "revision": kv.revision, "create_revision": kv.create_revision,
                             "version": kv.version, "lease": f"{kv.lease:x}"})
                rows.append([branch, "get", key, out.b(kv.value)])
    if not rows:
        rows.append([branch, "", "", ""])
    out.emit({"succeeded": result.succeeded, "revision": result.revision, "responses": objs}, simple,
             (["branch", "op", "key", "result"], rows))


def _members(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    members = client.members()
    leader = client.leader()
    rows = [[m.node_id, m.peer_address, m.client_address or "", "learner" if m.is_learner else "voter",
             "true" if m.node_id == leader.leader_id else "false"] for m in members]
    out.emit(
        {"leader_id": leader.leader_id,
         "members": [{"node_id": m.node_id, "peer_address": m.peer_address, "client_address": m.client_address,
                      "is_learner": m.is_learner} for m in members]},
        # etcdctl: every field, empty ones too, so columns never shift.
        [", ".join(str(c) for c in r) for r in rows],
        (["id", "peer address", "client address", "kind", "leader"], rows),
    )
    return EXIT_OK


def _status(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    if args.cluster:
        return _cluster_status(client, args, out)
    rows: list[list[Any]] = []
    objs: list[dict[str, Any]] = []
    failed = False
    answers: list[tuple[str, Status]] = []
    if args.all:
        for endpoint in client.endpoints:
            try:
                answers.append((endpoint, client.status(endpoint=endpoint)))
            except DengineError as exc:
                failed = True
                print(f"dengine: {endpoint}: {exc}", file=sys.stderr)
    else:
        st = client.status()  # the first server that answers, retried within --timeout
        answers.append((client.endpoint_of(st.node_id) or "-", st))
    for endpoint, st in answers:
        rows.append([endpoint, st.node_id, st.role, st.term, st.leader_id, st.commit_index, st.applied_index])
        objs.append({"endpoint": endpoint, "node_id": st.node_id, "role": st.role, "term": st.term,
                     "leader_id": st.leader_id, "commit_index": st.commit_index, "applied_index": st.applied_index,
                     "last_snapshot_index": st.last_snapshot_index,
                     "members": [{"node_id": m.node_id, "peer_address": m.peer_address,
                                  "client_address": m.client_address, "is_learner": m.is_learner}
                                 for m in st.members]})
    if not objs:
        return EXIT_ERROR
    header = ["endpoint", "id", "role", "term", "leader", "commit", "applied"]
    simple = [f"{r[0]}: node {r[1]} {r[2]} term {r[3]} "
              + ("no leader" if r[4] is None else f"leader {r[4]}") + f" commit {r[5]} applied {r[6]}" for r in rows]
    out.emit(objs if args.all else objs[0], simple, (header, rows))
    return EXIT_ERROR if failed else EXIT_OK


# What a member cannot tell (it does not answer, or predates the status
# map's `version` and `db_size`): "-" (null in JSON) rather than a guess;
# the CLI's own version would be wrong exactly when it matters, in the
# middle of a rolling upgrade.
_UNKNOWN = "-"


def _human_bytes(n: int) -> str:
    """etcdctl's style: 20 kB, 1.2 MB."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def _cluster_status(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    """``status --cluster``: every member (from the member list of any
    endpoint), asked at its client address, in turn, like ``etcdctl endpoint
    status --cluster``. A member that cannot be asked is a row with what
    the member list says (endpoint, id, is learner) and the error."""
    objs: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    for m in client.members():
        obj: dict[str, Any] = {
            "endpoint": m.client_address, "node_id": m.node_id, "version": None, "db_size": None,
            "role": None, "leader_id": None, "is_learner": m.is_learner, "term": None, "commit_index": None,
            "applied_index": None, "last_snapshot_index": None, "errors": [],
        }
        st, error = _member_status(client, m)
        if st is None:
            obj["errors"].append(error)
            # What the member list says is kept (id, learner); what only the member knows is empty.
            rows.append([m.client_address or _UNKNOWN, m.node_id, _UNKNOWN, _UNKNOWN, "", "",
                         str(m.is_learner).lower(), "", "", "", error])
        else:
            own = next((x for x in st.members if x.node_id == st.node_id), m)
            obj.update(role=st.role, leader_id=st.leader_id, is_learner=own.is_learner, term=st.term,
                       commit_index=st.commit_index, applied_index=st.applied_index,
                       last_snapshot_index=st.last_snapshot_index, version=st.version, db_size=st.db_size)
            rows.append([m.client_address, st.node_id, st.version or _UNKNOWN,
                         _UNKNOWN if st.db_size is None else _human_bytes(st.db_size), st.role,
                         "" if st.leader_id is None else st.leader_id, str(own.is_learner).lower(), st.term,
                         st.commit_index, st.applied_index, ""])
        objs.append(obj)
    header = ["endpoint", "id", "version", "db size", "role", "leader", "is learner", "raft term", "raft index",
              "raft applied index", "errors"]
    # etcdctl's simple output: every column, empty ones too, comma-separated.
    out.emit(objs, [", ".join(str(c) for c in r) for r in rows], (header, rows))
    failed = sum(1 for o in objs if o["errors"])
    if failed:
        print(f"dengine: {failed} of {len(objs)} members did not answer", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _member_status(client: BlockingClient, m: Member) -> tuple[Status | None, str]:
    """Member ``m``'s status, asked at its client address; else why not."""
    if m.client_address is None:
        return None, (f"no client address is recorded for member {m.node_id} "
                      f"(dengine member update {m.node_id} --client-address H:P)")
    try:
        st = client.status(endpoint=m.client_address)
    except DengineError as exc:
        return None, str(exc)
    if st.node_id != m.node_id:
        return None, f"{m.client_address} answered as node {st.node_id}, not as member {m.node_id}"
    return st, ""


def _took(seconds: float) -> str:
    return f"{seconds * 1000:.3f}ms" if seconds < 1 else f"{seconds:.3f}s"


def _check_health(endpoint: str, args: argparse.Namespace, ssl_context: Any) -> dict[str, Any]:
    """One endpoint's health: a linearizable read of _HEALTH_KEY through a
    client of that endpoint alone (so the read is served there, not by
    another member), within --timeout, connection included."""
    from dengine.client.blocking import connect

    start = time.monotonic()
    try:
        with connect([endpoint], timeout=args.timeout, cluster_id=args.cluster_id,
                     ssl_context=ssl_context) as client:
            client.get(_HEALTH_KEY, consistency="linearizable")
    except (DengineError, OSError) as exc:
        return {"endpoint": endpoint, "health": False, "took": _took(time.monotonic() - start), "error": str(exc)}
    return {"endpoint": endpoint, "health": True, "took": _took(time.monotonic() - start), "error": None}


def _health(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    """``health [--cluster]``, like ``etcdctl endpoint health``: every
    endpoint (or member) checked at the same time, each within --timeout."""
    import threading

    from dengine.client._core import parse_endpoints

    ssl_context = _ssl_context(args)
    given = parse_endpoints(args.endpoints)
    missing: list[dict[str, Any]] = []
    if args.cluster:
        # Members' client addresses are host:port; speak TLS to them if the
        # endpoints asked for it with https://.
        scheme = "https://" if ssl_context is None and any(e.tls for e in given) else ""
        endpoints = []
        for m in client.members():
            if m.client_address is None:  # it cannot be checked, so it is not known to be healthy
                missing.append({"endpoint": f"member {m.node_id}", "health": False, "took": _took(0),
                                "error": f"no client address is recorded for member {m.node_id}"})
            else:
                endpoints.append(scheme + m.client_address)
    else:
        endpoints = [e.address if e.tls is None else ("https://" if e.tls else "http://") + e.address
                     for e in given]
    results: list[dict[str, Any]] = [{} for _ in endpoints]

    def check(i: int) -> None:
        results[i] = _check_health(endpoints[i], args, ssl_context)

    threads = [threading.Thread(target=check, args=(i,), daemon=True) for i in range(len(endpoints))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # each check ends within --timeout (the client's own deadline)
    results += missing
    if out.fmt == "simple":
        for r in results:
            if r["health"]:
                print(f"{r['endpoint']} is healthy: served a linearizable read: took = {r['took']}")
            else:
                print(f"{r['endpoint']} is unhealthy: failed to serve a linearizable read: {r['error']}",
                      file=sys.stderr)
        sys.stdout.flush()
    else:
        out.emit(results, [], (["endpoint", "health", "took", "error"],
                               [[r["endpoint"], str(r["health"]).lower(), r["took"], r["error"] or ""]
                                for r in results]))
    unhealthy = sum(1 for r in results if not r["health"])
    if unhealthy:
        print(f"dengine: unhealthy cluster: {unhealthy} of {len(results)} "
              f"{'members' if args.cluster else 'endpoints'} unhealthy", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _leader(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    info = client.leader()
    members = {m.node_id: m for m in client.members()}
    address = members[info.leader_id].client_address if info.leader_id in members else None
    text = f"node {info.leader_id} term {info.term}" + (f" at {address}" if address else "")
    if info.leader_id is None:
        text = f"no leader (term {info.term})"
    out.emit({"leader_id": info.leader_id, "term": info.term, "client_address": address}, [text],
             (["leader", "term", "client address"], [[info.leader_id, info.term, address]]))
    return EXIT_OK if info.leader_id is not None else EXIT_ERROR


def _member_obj(m: Member) -> dict[str, Any]:
    return {"node_id": m.node_id, "peer_address": m.peer_address, "client_address": m.client_address,
            "is_learner": m.is_learner}


def _member(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    what = args.member_command
    if what == "list":
        return _members(client, args, out)
    if what == "remove":
        client.remove_member(args.node_id)
        out.emit({"removed": args.node_id}, [f"Member {args.node_id} removed"], (["removed"], [[args.node_id]]))
        return EXIT_OK
    if what == "add":
        m = client.add_member(args.peer_address, learner=not args.voter, node_id=args.node_id,
                              client_address=args.client_address)
        said = f"Member {m.node_id} added as a {'learner' if m.is_learner else 'voter'}"
    elif what == "promote":
        m = client.promote_member(args.node_id)
        said = f"Member {m.node_id} promoted to voter"
    else:
        m = client.update_member(args.node_id, peer_address=args.peer_address, client_address=args.client_address)
        said = f"Member {m.node_id} updated"
    row = [m.node_id, m.peer_address, m.client_address or "", "learner" if m.is_learner else "voter"]
    out.emit(_member_obj(m), [f"{said}: peer {m.peer_address}, client {m.client_address or '-'}"],
             (["id", "peer address", "client address", "kind"], [row]))
    return EXIT_OK


def _snapshot(client: BlockingClient, args: argparse.Namespace, out: _Out) -> int:
    if args.snapshot_command == "restore":
        from dengine.config import parse_members
        from dengine.embedded import restore_snapshot

        try:
            members = parse_members(args.initial_cluster)
        except InvalidArgument as exc:
            raise UsageError(f"--initial-cluster: {exc}") from None
        revision, cluster_id = restore_snapshot(args.file, args.data_dir, node_id=args.node_id,
                                                initial_cluster=members, cluster_id=args.cluster_id)
        serve = (f"dengine serve --id {args.node_id} --data-dir {args.data_dir} --peer-address "
                 f"{members[args.node_id]} --initial-cluster {args.initial_cluster} --cluster-id {cluster_id}")
        out.emit({"revision": revision, "cluster_id": cluster_id, "data_dir": args.data_dir},
                 [f"Restored revision {revision} into {args.data_dir} for node {args.node_id} of cluster "
                  f"{cluster_id!r}; start it with: {serve}"],
                 (["revision", "cluster id", "data dir"], [[revision, cluster_id, args.data_dir]]))
        return EXIT_OK
    if args.data_dir:
        from dengine.storage.backup import backup_from_data_dir

        print(f"dengine: backing up the log of {args.data_dir} as it is, committed or not: acknowledged writes "
              "this node never received are missing (disaster recovery only)", file=sys.stderr)
        revision = backup_from_data_dir(args.data_dir, args.file)
        size = os.path.getsize(args.file)
        out.emit({"revision": revision, "file": args.file, "bytes": size},
                 [f"Snapshot saved at revision {revision} to {args.file} ({size} bytes) from {args.data_dir}"],
                 (["revision", "file", "bytes"], [[revision, args.file, size]]))
        return EXIT_OK
    shown = [-1]

    def progress(done: int, total: int) -> None:
        if total < (1 << 20):
            return
        step = done * 10 // total
        if step > shown[0]:
            shown[0] = step
            print(f"saved {done / (1 << 20):.1f} of {total / (1 << 20):.1f} MiB ({done * 100 // total}%)",
                  file=sys.stderr, flush=True)

    revision = client.save_snapshot(args.file, progress=progress)
    size = os.path.getsize(args.file)
    out.emit({"revision": revision, "file": args.file, "bytes": size},
             [f"Snapshot saved at revision {revision} to {args.file} ({size} bytes)"],
             (["revision", "file", "bytes"], [[revision, args.file, size]]))
    return EXIT_OK


_HANDLERS: dict[str, Callable[[BlockingClient, argparse.Namespace, _Out], int]] = {
    "get": _get, "put": _put, "del": _del, "cas": _cas, "scan": _scan, "watch": _watch,
    "members": _members, "status": _status, "health": _health, "leader": _leader, "member": _member,
    "snapshot": _snapshot, "lease": _lease, "txn": _txn,
}


# --------------------------------------------------------------------------
# lock / elect: dengine.concurrency on the trio client
# --------------------------------------------------------------------------

# How long a command whose lock was lost has to exit after SIGTERM before it
# is killed.
_TERMINATE_GRACE = 5.0


class _Signals:
    """SIGINT/SIGTERM, routed to what the command is doing: by default they
    interrupt it (``interrupt`` is cancelled: exit 130); while it holds a
    lock or leads they end the hold; while it runs a command they are passed
    on to the command."""

    def __init__(self, interrupt: trio.CancelScope) -> None:
        self.handler: Callable[[int], None] = lambda signum: interrupt.cancel()

    async def route(self, receiver: Any) -> None:
        async for signum in receiver:
            self.handler(signum)


def _trio_command(args: argparse.Namespace, out: _Out) -> int:
    import trio

    # The library's own warnings (a lost lease, a failed release) are
    # reported by the command in its own words; --log-level shows them too.
    _client_logging(args, quiet=True)
    name = _arg_bytes(args.name, args.hex, "name")
    if not name.startswith(b"/") or not name.strip(b"/"):
        raise InvalidArgument(f"a {args.command} name is a key prefix that starts with '/' and names something, "
                              f"like /{args.command}s/jobs; got {args.name!r}")
    if not args.ttl > 0:
        raise InvalidArgument(f"--ttl must be a positive number of seconds, got {args.ttl}")
    if args.command == "elect":
        if args.listen and args.value is not None:
            raise InvalidArgument("elect --listen observes the election and takes no VALUE")
        if not args.listen and args.value is None:
            raise InvalidArgument("give the VALUE to campaign with, or --listen to observe the election")
    from dengine.transport.base import single_leaf

    try:
        return trio.run(_trio_main, args, out, name)
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None


async def _trio_main(args: argparse.Namespace, out: _Out, name: bytes) -> int:
    import signal

    import trio

    from dengine.client.client import open_client

    code = EXIT_INTERRUPTED
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as receiver:
        async with trio.open_nursery() as nursery:
            # Inside the client: what a cancelled wait gives back (a place in
            # a lock's queue, the session's lease) is given back through it.
            interrupt = trio.CancelScope()
            signals = _Signals(interrupt)
            nursery.start_soon(signals.route, receiver)
            async with open_client(args.endpoints, timeout=args.timeout, cluster_id=args.cluster_id,
                                   ssl_context=_ssl_context(args)) as client:
                with interrupt:
                    if args.command == "lock":
                        code = await _lock(client, args, out, name, signals)
                    else:
                        code = await _elect(client, args, out, name, signals)
            nursery.cancel_scope.cancel()
    return code


async def _unless_lost(session: Any, what: str, fn: Callable[[], Any]) -> None:
    """Run ``fn`` (acquire, campaign); SessionLost if the session is lost first."""
    import trio

    from dengine.errors import SessionLost

    async with trio.open_nursery() as nursery:

        async def cancel_when_lost() -> None:
            await session.lost.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(cancel_when_lost)
        await fn()
        nursery.cancel_scope.cancel()
        return
    raise SessionLost(f"{what}: the session's lease {session.lease_id:x} was lost (not renewed within its TTL) "
                      "while waiting")


async def _hold(session: Any, signals: _Signals) -> bool:
    """Wait for SIGINT/SIGTERM (True) or the loss of the session (False)."""
    import trio

    with trio.CancelScope() as hold:
        signals.handler = lambda signum: hold.cancel()
        await session.lost.wait()
    return hold.cancelled_caught


def _lost_message(what: str, session: Any, after: str) -> str:
    return (f"dengine: {what}: the session's lease {session.lease_id:x} was lost (not renewed within its TTL "
            f"of {_secs(session.ttl)} s: the cluster was unreachable or the lease was revoked); {after}")


async def _lock(client: Any, args: argparse.Namespace, out: _Out, name: bytes, signals: _Signals) -> int:
    from dengine.concurrency import Lock, Session

    what = f"lock {args.name!r}"
    async with Session(client, ttl=args.ttl) as session:
        lock = Lock(session, name)
        await _unless_lost(session, what, lock.acquire)
        try:
            key, token, lease = out.b(lock.key) or "", lock.fencing_token, f"{session.lease_id:x}"
            if args.command_argv:
                print(f"dengine: holding {what} as {key} (fencing token {token})", file=sys.stderr, flush=True)
                env = {**os.environ, "DENGINE_LOCK_KEY": key, "DENGINE_LOCK_TOKEN": str(token),
                       "DENGINE_LOCK_LEASE": lease}
                return await _run_holding(args.command_argv, env, session, signals, what)
            out.emit({"key": key, "fencing_token": token, "lease": lease}, [key, f"fencing token {token}"],
                     (["key", "fencing token", "lease"], [[key, token, lease]]))
            if await _hold(session, signals):
                return EXIT_OK
            print(_lost_message(what, session, "it is no longer held"), file=sys.stderr)
            return EXIT_ERROR
        finally:
            await lock.release()


async def _run_holding(argv: list[str], env: dict[str, str], session: Any, signals: _Signals, what: str) -> int:
    """Run ``argv`` (stdin, stdout and stderr are ours); its exit code, or
    EXIT_ERROR after terminating it if the session is lost."""
    import trio

    try:
        proc = await trio.lowlevel.open_process(argv, env=env)
    except FileNotFoundError:
        print(f"dengine: cannot run {argv[0]!r}: command not found", file=sys.stderr)
        return 127  # as a shell says it
    except OSError as exc:
        print(f"dengine: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 126

    def forward(signum: int) -> None:
        if proc.returncode is None:
            proc.send_signal(signum)

    signals.handler = forward
    lost = False
    try:
        async with trio.open_nursery() as nursery:

            async def stop_when_lost() -> None:
                nonlocal lost
                await session.lost.wait()
                lost = True
                print(_lost_message(what, session, f"terminating the command (pid {proc.pid})"),
                      file=sys.stderr, flush=True)
                proc.terminate()
                with trio.move_on_after(_TERMINATE_GRACE):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()

            nursery.start_soon(stop_when_lost)
            await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:  # cancelled: never leave it running unguarded
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    if lost:
        return EXIT_ERROR
    code = proc.returncode
    assert code is not None
    return 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as a shell says it


async def _elect(client: Any, args: argparse.Namespace, out: _Out, name: bytes, signals: _Signals) -> int:
    from dengine.concurrency import Election, Session

    what = f"election {args.name!r}"
    async with Session(client, ttl=args.ttl) as session:
        election = Election(session, name)
        if args.listen:
            print(f"observing {what}", file=sys.stderr, flush=True)
            async for value in election.observe():
                out.emit({"value": out.b(value)}, [out.b(value) or ""], (["value"], [[out.b(value)]]))
            return EXIT_OK  # observe() never ends; Ctrl-C interrupts it (130)
        value = _arg_bytes(args.value, args.hex, "value")
        await _unless_lost(session, what, lambda: election.campaign(value))
        try:
            head = await election.leader()
            if head is None or head.lease != session.lease_id:
                print(_lost_message(what, session, "it no longer leads") if session.lost.is_set()
                      else f"dengine: {what}: elected, but the leader key was deleted at once", file=sys.stderr)
                return EXIT_ERROR
            key = out.b(head.key) or ""
            out.emit({"key": key, "value": out.b(head.value), "revision": election.revision,
                      "lease": f"{session.lease_id:x}"}, [key, out.b(head.value) or ""],
                     (["key", "value", "revision"], [[key, out.b(head.value), election.revision]]))
            if await _hold(session, signals):
                return EXIT_OK
            print(_lost_message(what, session, "it no longer leads"), file=sys.stderr)
            return EXIT_ERROR
        finally:
            await election.resign()


# --------------------------------------------------------------------------
# run / serve (these import trio, the engine and the server)
# --------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> Config:
    import attrs

    from dengine.config import Config

    if args.config:
        cfg = Config.from_toml(args.config)
    else:
        cfg = Config.from_env(Config.single_node(args.data_dir) if args.data_dir else Config.single_node())
    if args.config and args.data_dir:
        cfg = attrs.evolve(cfg, data_dir=args.data_dir)
    return cfg


def _serve_config(args: argparse.Namespace) -> Config:
    import attrs

    from dengine.config import Config, parse_members

    cfg = Config.from_toml(args.config) if args.config else Config.from_env()
    node: dict[str, Any] = {}
    cluster: dict[str, Any] = {}
    try:
        if args.id is not None:
            node["id"] = args.id
        if args.data_dir is not None:
            node["data_dir"] = args.data_dir
        if args.peer_address is not None:
            node["peer_address"] = args.peer_address
        if getattr(args, "advertise_peer_address", None) is not None:
            node["advertise_peer_address"] = args.advertise_peer_address
        if args.client_address is not None:
            node["client_address"] = args.client_address
        if args.initial_cluster is not None:
            cluster["initial"] = parse_members(args.initial_cluster)
        if args.client_addresses is not None:
            cluster["client_addresses"] = parse_members(args.client_addresses)
        if getattr(args, "cluster_id", None) is not None:
            cluster["id"] = args.cluster_id
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from None
    server = {name: getattr(args, name) for name in ("metrics_address", "etcd_address", "etcd_gateway_address")
              if getattr(args, name, None) is not None}
    cfg = attrs.evolve(cfg, node=attrs.evolve(cfg.node, **node), cluster=attrs.evolve(cfg.cluster, **cluster),
                       server=attrs.evolve(cfg.server, **server))
    if cfg.node.peer_address is None:
        # A server always listens for peers (the default address when none is
        # given), so a single node can be grown into a cluster later.
        cfg = attrs.evolve(cfg, node=attrs.evolve(cfg.node, peer_address=cfg.peer_address))
    return cfg


async def _run(cfg: Config, self_check: bool) -> int:
    import signal

    import trio

    from dengine.embedded import open_engine

    log = logging.getLogger("dengine.cli")
    async with open_engine(config=cfg) as engine:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            with trio.move_on_after(60) as scope:
                await engine.wait_ready()
            if scope.cancelled_caught:
                log.error("node %d is not ready after 60 s: is a quorum of %s up?", cfg.node_id,
                          sorted(cfg.initial_cluster) or [cfg.node_id])
            st = engine.status()
            log.info(
                "ready: node %d (%s) term %d, leader %s, applied index %d, data dir %s",
                st.node_id, st.role, st.term, st.leader_id, st.applied_index, os.path.abspath(cfg.data_dir),
            )
            if self_check:
                rev = await engine.client.put(b"/dengine/self-check", b"ok")
                value = await engine.client.get(b"/dengine/self-check")
                await engine.client.delete(b"/dengine/self-check")
                print(f"self-check: put at revision {rev}, read back {value!r}, deleted")
                return EXIT_OK
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                break
    log.info("stopped")
    return EXIT_OK


@contextlib.asynccontextmanager
async def _open_etcd_faces(cfg: Config, server: Any) -> Any:
    """etcd's API for ``dengine serve`` (``server.etcd_address``,
    ``server.etcd_gateway_address``; docs/etcd-compatibility.md), or None when both are off."""
    if cfg.etcd_address is None and cfg.etcd_gateway_address is None:
        yield None
        return
    from dengine.etcd.server import open_etcd_api
    from dengine.server.main import server_ssl_context

    s = cfg.server
    tls = None if s.tls_cert is None or s.tls_key is None else (s.tls_cert, s.tls_key, s.tls_ca)
    async with open_etcd_api(server.engine, grpc_address=cfg.etcd_address, gateway_address=cfg.etcd_gateway_address,
                             client_address=server.client_address, tls=tls,
                             ssl_context=server_ssl_context(cfg)) as api:
        yield api


async def _serve(cfg: Config, join: str | None = None, given_id: int | None = None,
                 promote: bool = True) -> int:
    import signal

    import trio

    from dengine.http import open_http_server
    from dengine.server import open_server

    log = logging.getLogger("dengine.cli")
    status = EXIT_OK
    endpoints: list[str] = []
    if join:
        from dengine.client._core import parse_endpoints
        from dengine.server.join import prepare_join

        endpoints = [e.address for e in parse_endpoints(join)]
        client_address = None if cfg.client_address.endswith(":0") else cfg.client_address
        cfg = await prepare_join(cfg, endpoints, node_id=given_id, client_address=client_address)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # HTTP is bound first (an address in use is reported before the engine starts).
        async with open_http_server(None, cfg.metrics_address) as http, open_server(cfg) as server, \
                _open_etcd_faces(cfg, server) as etcd:
            http.attach(server)
            peers = cfg.peer_address + (" (single node)" if cfg.is_single_node else "")
            log.info("node %d listening: clients on %s, peers on %s, cluster %r, data dir %s",
                     cfg.node_id, ", ".join(server.client_addresses), peers, cfg.cluster_id,
                     os.path.abspath(cfg.data_dir))
            if etcd is not None:
                log.info("node %d serves etcd's v3 API: gRPC on %s, JSON gateway on %s", cfg.node_id,
                         etcd.grpc_address or "off", etcd.gateway_address or "off")
            async with trio.open_nursery() as nursery:

                async def announce_ready() -> None:
                    await server.wait_ready()
                    st = server.status()
                    leader = "none yet" if st.leader_id is None else f"node {st.leader_id}"
                    log.info("ready: node %d serving clients on %s (%s, term %d, leader %s)",
                             cfg.node_id, server.client_address, st.role, st.term, leader)

                nursery.start_soon(announce_ready)
                if join and promote:
                    from dengine.server.join import auto_promote

                    nursery.start_soon(auto_promote, cfg.node_id, endpoints, cfg.cluster_id)

                async def stop_when_removed() -> None:
                    nonlocal status
                    await server.engine.removed_notify().wait()
                    log.error("node %d was removed from the cluster: stopping (exit status %d)",
                              cfg.node_id, EXIT_REMOVED)
                    status = EXIT_REMOVED
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_when_removed)
                async for signum in signals:
                    log.info("received %s: stopping gracefully", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
    log.info("stopped")
    return status


def _server_command(args: argparse.Namespace) -> int:
    import trio

    level, fmt = _log_settings(args)
    _configure_logging(level or "info", fmt)
    given = [flag for dest, flag in _CLIENT_FLAGS.items() if hasattr(args, dest)]
    if given:
        raise UsageError(f"{', '.join(given)} {'is a flag' if len(given) == 1 else 'are flags'} of the client "
                         f"commands; `dengine {args.command}` does not take {'it' if len(given) == 1 else 'them'}")
    if args.command == "run":
        if hasattr(args, "cluster_id"):
            raise UsageError("--cluster-id is not a flag of `dengine run`; use --config or DENGINE_CLUSTER__ID")
        return trio.run(_run, _load_config(args), args.self_check)
    if args.no_auto_promote and not args.join:
        raise UsageError("--no-auto-promote only means something with --join")
    if args.join and args.initial_cluster:
        raise UsageError("--join and --initial-cluster exclude each other: a joining node learns the members")
    return trio.run(_serve, _serve_config(args), args.join, args.id, not args.no_auto_promote)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


# The common flags that take a value (they may come before the command).
_VALUE_FLAGS = ("--endpoints", "--cluster-id", "--timeout", "-w", "--write-out", "--cacert", "--cert", "--key",
                "--log-level", "--log-format")


def _command_word(argv: list[str]) -> str | None:
    """The command of ``argv``: its first word that is neither a flag nor a
    flag's value."""
    words = iter(argv)
    for word in words:
        if word in _VALUE_FLAGS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, except that ``lock NAME COMMAND...`` keeps COMMAND as it
    is: everything after the first ``--``, or, without ``--``, the words
    that are not dengine's flags, in order."""
    if _command_word(argv) != "lock":
        return parser.parse_args(argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    args, extra = parser.parse_known_args(argv)
    command = [*args.command_argv, *extra]
    if command and command[0].startswith("-"):
        parser.error(f"unrecognized arguments: {' '.join(extra)} (put `--` before a COMMAND that has flags of its "
                     "own: dengine lock NAME -- COMMAND ...)")
    args.command_argv = command + tail
    return args


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command in ("run", "serve"):
            return _server_command(args)
        return _client_command(args)
    except (ConfigError, UsageError) as exc:
        _say(args, str(exc))
        return EXIT_USAGE
    except DengineError as exc:
        _say(args, f"error {exc.code}: {exc}")
        return EXIT_ERROR
    except OSError as exc:
        _say(args, str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        if not _server_logs_json(args):
            raise
        # With JSON logs, even a crash is one record (its traceback in "exception").
        logging.getLogger("dengine.cli").critical("dengine %s stopped on an unexpected error", args.command,
                                                  exc_info=True)
        return EXIT_ERROR


def _server_logs_json(args: argparse.Namespace) -> bool:
    """``run`` / ``serve`` logging JSON: then everything they say on stderr
    is a record, so that every line of a server's log stays JSON. (The
    client commands' messages are their output, not log records.)"""
    return args.command in ("run", "serve") and _logs_json()


def _say(args: argparse.Namespace, error: str) -> None:
    """The error that ends the command: a plain line on stderr, or an ERROR
    record when a server logs JSON."""
    if _server_logs_json(args):
        logging.getLogger("dengine.cli").error(error)
    else:
        print(f"dengine: {error}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
