"""The `dengine` command.

    dengine run [--data-dir DIR] [--config FILE]   run one engine node until Ctrl-C

Conventions follow etcdctl: `dengine COMMAND --help` for every command,
errors on stderr in plain words, meaningful exit codes (0 ok, 1 a dengine
error, 2 bad usage, 130 interrupted).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import attrs
import trio

from dengine.config import Config
from dengine.embedded import open_engine
from dengine.errors import ConfigError, DengineError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

log = logging.getLogger("dengine.cli")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dengine",
        description="dengine: an embeddable Raft consensus key-value engine for trio.",
    )
    parser.add_argument("--log-level", default=os.environ.get("DENGINE_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log verbosity (default info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run one engine node until interrupted",
        description="Run one dengine node in this process until Ctrl-C / SIGTERM. With no flags: "
        "a single node on ./dengine-data.",
    )
    run.add_argument("--data-dir", help="data directory (default ./dengine-data, or the config file's)")
    run.add_argument("--config", help="TOML configuration file (DENGINE_* environment variables apply on top)")
    run.add_argument("--self-check", action="store_true",
                     help="write, read and delete one key once ready, print the result, and exit")
    return parser


def _load_config(args: argparse.Namespace) -> Config:
    if args.config:
        cfg = Config.from_toml(args.config)
    else:
        cfg = Config.from_env(Config.single_node(args.data_dir) if args.data_dir else Config.single_node())
    if args.config and args.data_dir:
        cfg = attrs.evolve(cfg, data_dir=args.data_dir)
    return cfg


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


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        cfg = _load_config(args)
        return trio.run(_run, cfg, args.self_check)
    except ConfigError as exc:
        print(f"dengine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DengineError as exc:
        print(f"dengine: error {exc.code}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
