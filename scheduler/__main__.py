import sys

from farm.settings import ConfigError

try:  # a malformed FARM_* setting is one line, also when a module reads it on import
    from scheduler.cli import main

    code = main()
except ConfigError as exc:
    print(f"error: {exc}", file=sys.stderr)
    code = 2
sys.exit(code)
