"""The ``auditstream`` command line. Each part of the project registers its own commands
(``<part>/cli.py``: ``register(commands, bench)``); those modules import nothing heavy at the
top, so ``auditstream --help`` is fast and a serving host never imports torch."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType
from typing import Sequence

from auditstream import __version__
from auditstream.errors import AuditstreamError
from auditstream.settings import LOG_LEVELS, Settings

# The parts that contribute commands, in the order their commands appear in --help.
COMMAND_MODULES = (
    "stack.cli",
    "serving.cli",
    "training.cli",
    "monitor.cli",
    "monitor.stats_cli",
    "dashboards.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditstream",
        description="Serve models on Kafka, certify what they may auto-accept, route the rest to human auditors.",
    )
    parser.add_argument("--version", action="version", version=f"auditstream {__version__}")
    # Checked while parsing: logging.basicConfig would raise a raw ValueError on a level it does not know.
    parser.add_argument("--log-level", default=None, type=str.upper, choices=LOG_LEVELS,
                        help="logging level (default: AUDITSTREAM_LOG_LEVEL or INFO)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench_parser = commands.add_parser("bench", help="benchmarks that print numbers (last line: JSON)")
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for module in command_modules(COMMAND_MODULES):
        module.register(commands, bench)
    return parser


def command_modules(names: Sequence[str]) -> list[ModuleType]:
    """The modules of ``names`` that this install has (a serving host has no ``training``);
    an import error inside a module that exists still fails loudly."""
    found = []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # part not present in this install
                continue
            raise
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except AuditstreamError as e:  # a checked option refused its value while parsing (cli_args.Checked)
        print(f"auditstream: error: {e}", file=sys.stderr)
        return 2
    try:
        # Inside the try: a bad AUDITSTREAM_* variable is a one-line error like any other.
        level = args.log_level or Settings.from_env().log_level
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.handler(args) or 0)
    except AuditstreamError as e:
        print(f"auditstream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
