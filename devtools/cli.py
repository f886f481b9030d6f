"""``python -m devtools``: the local farm (``local-up``) and the fault-injection run (``chaos``)."""

from __future__ import annotations

import argparse
import sys

from farm.io.storage import StorageError
from farm.settings import ConfigError


def cmd_local_up(args: argparse.Namespace) -> int:
    from devtools.local import run_local_farm

    return run_local_farm(args)


def cmd_chaos(args: argparse.Namespace) -> int:
    from devtools.chaos import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from devtools.chaos import add_arguments

    ap = argparse.ArgumentParser(prog="python -m devtools", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local-up", help="run redis, S3, workers and flower as local processes")
    local.add_argument("--workers", type=int, default=2)
    local.add_argument("--dir", default="local-farm", help="state folder (data, logs, env file)")
    local.add_argument("--redis-port", type=int, default=6379)
    local.add_argument("--s3-port", type=int, default=9000)
    local.add_argument("--flower-port", type=int, default=5555)
    local.add_argument("--exporter-port", type=int, default=9808)
    local.add_argument("--monitoring", action="store_true",
                       help="also run Prometheus (Debian's package) scraping the farm and Flower")
    local.add_argument("--prometheus-port", type=int, default=9090)
    local.set_defaults(func=cmd_local_up)
    chaos = sub.add_parser("chaos", help="fault-injection run of a local farm")
    add_arguments(chaos)
    chaos.set_defaults(func=cmd_chaos)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StorageError, ConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
