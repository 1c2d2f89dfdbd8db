"""The `symphony` command: one entry point for every role and tool."""

from __future__ import annotations

import argparse
import sys

from load import cli as load_cli
from load.sim import cli as sim_cli
from ops import commands
from runtime.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symphony",
        description="Deferred batch scheduling for DNN inference (Symphony) on NATS.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    sim_cli.add_parser(subparsers)
    commands.add_parsers(subparsers)
    load_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(json=False)  # readable output for CLIs; service roles switch to JSON lines
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, ConnectionError, TimeoutError) as error:
        print(f"symphony: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
