"""The `dengine` command (docs/cli.md).

    dengine serve [flags]            run one node as a server (clients on 127.0.0.1:9081)
    dengine run [flags]              run one embedded engine node until Ctrl-C
    dengine get KEY | put KEY VALUE | del KEY | cas KEY NEW | scan PREFIX
    dengine watch KEY | members | status | leader

Conventions follow etcdctl: ``dengine COMMAND --help`` for every command;
``--endpoints`` (or ``DENGINE_ENDPOINTS``) names the servers; ``-w
simple|json|table`` picks the output; keys and values are UTF-8 text, or
hex with ``--hex``. Errors go to stderr in plain words. Exit codes:

* 0 ok
* 1 a dengine error (unreachable cluster, timeout, refused, ...)
* 2 bad usage (unknown flag, invalid argument or configuration)
* 3 a negative answer: ``get`` of a missing key, ``del`` of a missing key,
  ``cas`` that did not swap
* 130 interrupted (Ctrl-C) for client commands
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from dengine.api import WatchEvent, WatchEventType
from dengine.client import open_client
from dengine.config import DEFAULT_CLIENT_ADDRESS, Config, parse_members
from dengine.embedded import open_engine
from dengine.errors import ConfigError, DengineError, InvalidArgument, UsageError
from dengine.server import open_server

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NEGATIVE = 3
EXIT_INTERRUPTED = 130

log = logging.getLogger("dengine.cli")

_CLIENT_COMMANDS = ("get", "put", "del", "cas", "scan", "watch", "members", "status", "leader")


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


def _client_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection and output")
    g.add_argument("--endpoints", default=os.environ.get("DENGINE_ENDPOINTS", DEFAULT_CLIENT_ADDRESS),
                   help="comma-separated server client addresses (env DENGINE_ENDPOINTS; default %(default)s)")
    g.add_argument("--cluster-id", default=os.environ.get("DENGINE_CLUSTER_ID"),
                   help="cluster id the servers must have (env DENGINE_CLUSTER_ID; default 'dengine')")
    g.add_argument("--timeout", type=float, default=5.0, help="deadline of the command in seconds (default 5)")
    g.add_argument("-w", "--write-out", choices=["simple", "json", "table"], default="simple",
                   help="output format (default simple)")
    g.add_argument("--hex", action="store_true", help="keys and values are given and printed as hex")
    g.add_argument("--cacert", help="CA bundle: connect with TLS and verify the server against it")
    g.add_argument("--cert", help="client certificate (PEM) for servers that require one")
    g.add_argument("--key", dest="keyfile", help="private key of --cert")


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
        epilog="exit codes: 0 ok, 1 error, 2 bad usage, 3 key not found / not deleted / CAS not swapped",
    )
    parser.add_argument("--log-level", default=os.environ.get("DENGINE_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log verbosity (default info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = _sub(sub, "run", "run one embedded engine node until interrupted",
               "Run one dengine node in this process until Ctrl-C / SIGTERM. With no flags: "
               "a single node on ./dengine-data.")
    run.add_argument("--data-dir", help="data directory (default ./dengine-data, or the config file's)")
    run.add_argument("--config", help="TOML configuration file (DENGINE_* environment variables apply on top)")
    run.add_argument("--self-check", action="store_true",
                     help="write, read and delete one key once ready, print the result, and exit")

    serve = _sub(sub, "serve", "run one node as a server for remote clients",
                 "Run one dengine node serving the client protocol (docs/protocol.md) until SIGINT/SIGTERM, "
                 "which stop it gracefully (leadership handover, sync, exit 0). With no flags: a single node "
                 "on ./dengine-data serving clients on 127.0.0.1:9081. Every setting can also come from "
                 "--config and DENGINE_* environment variables; flags win.")
    serve.add_argument("--config", help="TOML configuration file (the engine's format)")
    serve.add_argument("--id", type=int, help="this node's id (node.id)")
    serve.add_argument("--data-dir", help="data directory (node.data_dir)")
    serve.add_argument("--peer-address", help="host:port for Raft peers (node.peer_address)")
    serve.add_argument("--client-address", help="host:port for clients (node.client_address; default 127.0.0.1:9081)")
    serve.add_argument("--initial-cluster", help="id=host:port,... peer addresses of the members (cluster.initial)")
    serve.add_argument("--client-addresses",
                       help="id=host:port,... client addresses of the members, for leader hints "
                       "(cluster.client_addresses)")
    serve.add_argument("--cluster-id", help="cluster id checked in every handshake (cluster.id)")

    get = _sub(sub, "get", "read a key (or every key under a prefix)",
               "Print the value of KEY; exit 3 if it does not exist. With --prefix, every key starting "
               "with KEY (like scan).")
    get.add_argument("key", help="the key")
    get.add_argument("--prefix", action="store_true", help="read every key starting with KEY")
    _consistency_flag(get)

    put = _sub(sub, "put", "write a key", "Set KEY to VALUE; prints OK and the revision of the write.")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--ttl", type=float, help="seconds after which the key expires")

    delete = _sub(sub, "del", "delete a key", "Delete KEY; prints 1 if it existed (exit 0), 0 if not (exit 3).")
    delete.add_argument("key")

    cas = _sub(sub, "cas", "compare and swap",
               "Set KEY to NEW only if it currently holds --expected (or, with --absent, only if it does "
               "not exist). Prints true if it swapped (exit 0), false if not (exit 3).")
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
                 "with '/') as they commit, until Ctrl-C or --count events.")
    watch.add_argument("key")
    watch.add_argument("--prefix", action="store_true", help="watch every key under KEY")
    watch.add_argument("--prev-kv", action="store_true", help="also print the value before each change")
    watch.add_argument("--start-revision", type=int, help="replay retained changes from this revision first")
    watch.add_argument("--count", type=int, help="exit after this many PUT/DELETE events")
    watch.add_argument("--progress", action="store_true", help="also print PROGRESS heartbeats")

    _sub(sub, "members", "list the cluster members", "Print every member: id, peer and client address, role.")
    status = _sub(sub, "status", "show the status of each endpoint",
                  "Print each endpoint's node id, role, term, leader, commit and applied index.")
    status.add_argument("--all", action="store_true", help="ask every endpoint (default: the first that answers)")
    _sub(sub, "leader", "show the current leader", "Print the leader's id, term and client address.")

    for name in _CLIENT_COMMANDS:
        _client_flags(sub.choices[name])
    return parser


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


def _event_dict(ev: WatchEvent, out: _Out) -> dict[str, Any]:
    return {
        "type": ev.type.name,
        "key": out.b(ev.key),
        "value": out.b(ev.value),
        "prev_value": out.b(ev.prev_value),
        "revision": ev.revision,
        "error": ev.error,
    }


# --------------------------------------------------------------------------
# Client commands
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


async def _client_command(args: argparse.Namespace) -> int:
    out = _Out(args.write_out, args.hex)
    if not args.timeout > 0:
        raise InvalidArgument(f"--timeout must be a positive number of seconds, got {args.timeout}")
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    async with open_client(endpoints, timeout=args.timeout, cluster_id=args.cluster_id,
                           ssl_context=_ssl_context(args)) as client:
        handler = _HANDLERS[args.command]
        return await handler(client, args, out)


async def _get(client: Any, args: argparse.Namespace, out: _Out) -> int:
    key = _arg_bytes(args.key, args.hex, "key")
    if args.prefix:
        args.prefix_arg = args.key
        return await _scan_bytes(client, key, args, out)
    kv = await client.get_kv(key, consistency=args.consistency)
    if kv is None:
        out.emit({"key": out.b(key), "found": False}, [], (["key", "value", "revision"], []))
        print(f"dengine: key {args.key!r} not found", file=sys.stderr)
        return EXIT_NEGATIVE
    out.emit({"key": out.b(key), "value": out.b(kv.value), "revision": kv.revision, "found": True},
             [out.b(kv.value) or ""], (["key", "value", "revision"], [[out.b(key), out.b(kv.value), kv.revision]]))
    return EXIT_OK


async def _put(client: Any, args: argparse.Namespace, out: _Out) -> int:
    key = _arg_bytes(args.key, args.hex, "key")
    value = _arg_bytes(args.value, args.hex, "value")
    rev = await client.put(key, value, ttl=args.ttl)
    out.emit({"revision": rev}, [f"OK revision {rev}"], (["revision"], [[rev]]))
    return EXIT_OK


async def _del(client: Any, args: argparse.Namespace, out: _Out) -> int:
    existed = await client.delete(_arg_bytes(args.key, args.hex, "key"))
    out.emit({"deleted": 1 if existed else 0}, ["1" if existed else "0"], (["deleted"], [[int(existed)]]))
    return EXIT_OK if existed else EXIT_NEGATIVE


async def _cas(client: Any, args: argparse.Namespace, out: _Out) -> int:
    key = _arg_bytes(args.key, args.hex, "key")
    expected = None if args.absent else _arg_bytes(args.expected, args.hex, "expected value")
    swapped = await client.compare_and_swap(key, expected=expected, new=_arg_bytes(args.new, args.hex, "value"),
                                            ttl=args.ttl)
    out.emit({"swapped": swapped}, ["true" if swapped else "false"], (["swapped"], [[swapped]]))
    return EXIT_OK if swapped else EXIT_NEGATIVE


async def _scan(client: Any, args: argparse.Namespace, out: _Out) -> int:
    return await _scan_bytes(client, _arg_bytes(args.prefix, args.hex, "prefix"), args, out)


async def _scan_bytes(client: Any, prefix: bytes, args: argparse.Namespace, out: _Out) -> int:
    kw = {} if args.consistency is None else {"consistency": args.consistency}
    result = await client.scan_prefix(prefix, **kw)
    keys_only = getattr(args, "keys_only", False)
    simple: list[str] = []
    for k, v in result.entries:
        simple.append(out.b(k) or "")
        if not keys_only:
            simple.append(out.b(v) or "")
    obj = {"revision": result.revision,
           "entries": [{"key": out.b(k), "value": out.b(v)} for k, v in result.entries]}
    out.emit(obj, simple, (["key", "value"], [[out.b(k), out.b(v)] for k, v in result.entries]))
    return EXIT_OK


async def _watch(client: Any, args: argparse.Namespace, out: _Out) -> int:
    key = _arg_bytes(args.key, args.hex, "key")
    count = 0
    async with client.open_watch(key, prefix=args.prefix, prev_kv=args.prev_kv,
                                 start_revision=args.start_revision) as watch:
        print(f"watching {args.key!r}{' (prefix)' if args.prefix else ''}", file=sys.stderr, flush=True)
        async for ev in watch:
            if ev.type == WatchEventType.PROGRESS and not args.progress:
                continue
            lines = [ev.type.name, out.b(ev.key) or ""]
            if ev.type == WatchEventType.PUT:
                lines.append(out.b(ev.value) or "")
            if args.prev_kv and ev.prev_value is not None:
                lines.append(f"prev: {out.b(ev.prev_value)}")
            if ev.type == WatchEventType.CANCELED:
                lines = [f"CANCELED at revision {ev.revision} (error code {ev.error})"]
            out.emit(_event_dict(ev, out), lines, None)
            if ev.type == WatchEventType.CANCELED:
                return EXIT_ERROR
            if ev.type in (WatchEventType.PUT, WatchEventType.DELETE):
                count += 1
                if args.count is not None and count >= args.count:
                    return EXIT_OK
    return EXIT_OK


async def _members(client: Any, args: argparse.Namespace, out: _Out) -> int:
    members = await client.members()
    leader = await client.leader()
    rows = [[m.node_id, m.peer_address, m.client_address or "", "learner" if m.is_learner else "voter",
             "yes" if m.node_id == leader.leader_id else ""] for m in members]
    out.emit(
        {"leader_id": leader.leader_id, "members": [attrs.asdict(m) for m in members]},
        [", ".join(str(c) for c in r if c != "") for r in rows],
        (["id", "peer address", "client address", "kind", "leader"], rows),
    )
    return EXIT_OK


async def _status(client: Any, args: argparse.Namespace, out: _Out) -> int:
    endpoints = client.endpoints if args.all else [None]
    rows: list[list[Any]] = []
    objs: list[dict[str, Any]] = []
    failed = False
    for endpoint in endpoints:
        try:
            st = await client.status(endpoint=endpoint)
        except DengineError as exc:
            failed = True
            print(f"dengine: {endpoint or 'status'}: {exc}", file=sys.stderr)
            continue
        where = endpoint or "-"
        rows.append([where, st.node_id, st.role, st.term, st.leader_id, st.commit_index, st.applied_index])
        obj = attrs.asdict(st)
        obj["endpoint"] = endpoint
        objs.append(obj)
    header = ["endpoint", "id", "role", "term", "leader", "commit", "applied"]
    simple = [f"{r[0]}: node {r[1]} {r[2]} term {r[3]} leader {r[4]} commit {r[5]} applied {r[6]}" for r in rows]
    out.emit(objs if args.all else (objs[0] if objs else {}), simple, (header, rows))
    return EXIT_ERROR if failed else EXIT_OK


async def _leader(client: Any, args: argparse.Namespace, out: _Out) -> int:
    info = await client.leader()
    members = {m.node_id: m for m in await client.members()}
    address = members[info.leader_id].client_address if info.leader_id in members else None
    text = f"node {info.leader_id} term {info.term}" + (f" at {address}" if address else "")
    if info.leader_id is None:
        text = f"no leader (term {info.term})"
    out.emit({"leader_id": info.leader_id, "term": info.term, "client_address": address}, [text],
             (["leader", "term", "client address"], [[info.leader_id, info.term, address]]))
    return EXIT_OK if info.leader_id is not None else EXIT_ERROR


_HANDLERS: dict[str, Callable[[Any, argparse.Namespace, _Out], Any]] = {
    "get": _get, "put": _put, "del": _del, "cas": _cas, "scan": _scan, "watch": _watch,
    "members": _members, "status": _status, "leader": _leader,
}


# --------------------------------------------------------------------------
# run / serve
# --------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> Config:
    if args.config:
        cfg = Config.from_toml(args.config)
    else:
        cfg = Config.from_env(Config.single_node(args.data_dir) if args.data_dir else Config.single_node())
    if args.config and args.data_dir:
        cfg = attrs.evolve(cfg, data_dir=args.data_dir)
    return cfg


def _serve_config(args: argparse.Namespace) -> Config:
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
        if args.client_address is not None:
            node["client_address"] = args.client_address
        if args.initial_cluster is not None:
            cluster["initial"] = parse_members(args.initial_cluster)
        if args.client_addresses is not None:
            cluster["client_addresses"] = parse_members(args.client_addresses)
        if args.cluster_id is not None:
            cluster["id"] = args.cluster_id
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from None
    return attrs.evolve(cfg, node=attrs.evolve(cfg.node, **node), cluster=attrs.evolve(cfg.cluster, **cluster))


async def _run(cfg: Config, self_check: bool) -> int:
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


async def _serve(cfg: Config) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_server(cfg) as server:
            peers = "none (single node)" if cfg.is_single_node else cfg.peer_address
            log.info("node %d listening: clients on %s, peers on %s, cluster %r, data dir %s",
                     cfg.node_id, ", ".join(server.client_addresses), peers, cfg.cluster_id,
                     os.path.abspath(cfg.data_dir))
            async with trio.open_nursery() as nursery:

                async def announce_ready() -> None:
                    await server.wait_ready()
                    st = server.status()
                    log.info("ready: node %d serving clients on %s (%s, term %d, leader %s)",
                             cfg.node_id, server.client_address, st.role, st.term, st.leader_id)

                nursery.start_soon(announce_ready)
                async for signum in signals:
                    log.info("received %s: stopping gracefully", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
    log.info("stopped")
    return EXIT_OK


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "run":
            return trio.run(_run, _load_config(args), args.self_check)
        if args.command == "serve":
            return trio.run(_serve, _serve_config(args))
        return trio.run(_client_command, args)
    except ConfigError as exc:
        print(f"dengine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"dengine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DengineError as exc:
        print(f"dengine: error {exc.code}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"dengine: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
