"""Check a ``flwr run --run-config`` value against this app's keys: ``python -m fedgma.tools.check_config TEXT``.

Flower's SuperLink compares the keys of ``--run-config`` with ``pyproject.toml``
itself and refuses a run with an unknown key before the app starts; its console
message, ``Invalid run configuration``, does not say which key (the key is only in
the SuperLink's log). This command reads the same text with Flower's own parser
(``key=value`` pairs, or one ``.toml`` file) and checks it as the app would, so the
message names the key, the closest valid one, or the bad value:

    python -m fedgma.tools.check_config "num-rounds=3 strategy='fedavg'"
    error: Run-config key 'num-rounds' is now 'num-server-rounds' (Flower's name for it); write num-server-rounds=3.
"""

from __future__ import annotations

import argparse
import sys

import click
from flwr.common.config import parse_config_args

from fedgma.settings import ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedgma.tools.check_config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_config", nargs="+", help="what you pass to flwr run --run-config")
    args = parser.parse_args(argv)
    try:
        overrides = parse_config_args(args.run_config)
        Settings.from_run_config(overrides)
    except (ConfigError, ValueError, OSError, click.ClickException) as problem:  # Flower's parser: Click's
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"ok: {len(overrides)} key(s), all known to this app and valid: {', '.join(overrides) or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
