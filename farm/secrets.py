"""Secrets from files (Docker/compose secrets), never from compose's ``environment:``.

Every secret ``NAME`` may be given as ``$NAME`` or as ``$NAME_FILE``, the path of a file holding it
(compose mounts secrets at ``/run/secrets/<name>``; surrounding whitespace is stripped). Setting both
is an error, not a precedence rule: a stale plain variable silently overriding a rotated secret
file (or the other way round) is exactly the mistake that goes unnoticed. An empty or unreadable
file is an error too.

``python -m farm.secrets exec CMD ARGS...`` resolves the ``*_FILE`` variables of ``SECRETS`` into
plain variables for a program that cannot read files itself (Flower's ``FLOWER_BASIC_AUTH``), then
execs it. ``python -m farm.secrets init DIR`` writes random secrets for the compose file into DIR
(mode 0700; files 0444 so the containers' non-root users can read their bind mounts), keeping
files that exist.
"""

from __future__ import annotations

import argparse
import os
import secrets as _random
import sys
from collections.abc import Mapping
from pathlib import Path

# Secrets the farm's programs read (farm/settings.py, Flower).
SECRETS = ("REDIS_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FLOWER_BASIC_AUTH")

# The files docker-compose.yml's top-level ``secrets:`` names, and how ``init`` fills them.
COMPOSE_SECRETS = {
    "redis_password": lambda: _random.token_hex(32),
    "s3_admin_access_key": lambda: "admin" + _random.token_hex(8),
    "s3_admin_secret_key": lambda: _random.token_hex(32),
    "s3_farm_access_key": lambda: "farm" + _random.token_hex(8),
    "s3_farm_secret_key": lambda: _random.token_hex(32),
    "flower_basic_auth": lambda: f"admin:{_random.token_hex(16)}",
    "grafana_admin_password": lambda: _random.token_hex(16),
}


class SecretError(ValueError):
    """A secret is given twice, or its file cannot be read."""


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``$NAME`` or the contents of ``$NAME_FILE``; None when neither is set."""
    environ = os.environ if environ is None else environ
    value, path = environ.get(name) or "", environ.get(f"{name}_FILE") or ""
    if value and path:
        raise SecretError(f"both {name} and {name}_FILE are set: set only one")
    if value:
        return value
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise SecretError(f"{name}_FILE={path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise SecretError(f"{name}_FILE={path}: the file is empty")
    return text


def resolved_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` with every ``SECRETS`` ``NAME_FILE`` replaced by ``NAME``."""
    env = dict(os.environ if environ is None else environ)
    for name in SECRETS:
        value = read_secret(name, env)
        env.pop(f"{name}_FILE", None)
        if value is not None:
            env[name] = value
    return env


def init_dir(folder: Path) -> list[str]:
    """Create the compose secrets missing from ``folder``; return the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    written = []
    for name, make in COMPOSE_SECRETS.items():
        path = folder / name
        if path.exists():
            continue
        path.write_text(make() + "\n")
        path.chmod(0o444)
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.secrets", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("exec", help="resolve *_FILE secrets into the environment, then exec")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    init = sub.add_parser("init", help="write random compose secrets into a folder")
    init.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            written = init_dir(args.folder)
            print(f"{args.folder}: wrote {', '.join(written) or 'nothing (all exist)'}")
            return 0
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error("exec needs a command")
        env = resolved_environ()
    except SecretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.execvpe(command[0], command, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
