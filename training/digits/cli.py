"""CLI of the digits family: ``auditstream train digits [--json]`` and ``auditstream bench certify
[--json]``. Nothing heavy is imported until a handler runs."""

from __future__ import annotations

import argparse

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
from training.digits.args import SEARCH_SPACE, CertifyBenchArgs, DigitsArgs
from training.family_cli import TrainCommand

COMMAND = TrainCommand("digits", "training.digits", DigitsArgs, "8x8 handwritten digit classifier",
                       search_space=SEARCH_SPACE)


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    COMMAND.register(train)
    parser = bench.add_parser("certify", help="certified vs naive auto-accept threshold over random re-splits (digits)")
    add_dataclass_arguments(parser, CertifyBenchArgs)
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: the last line is always JSON")
    parser.set_defaults(handler=_bench_certify)


def _bench_certify(ns: argparse.Namespace) -> int:
    from training.digits.certify_bench import main

    return main(dataclass_from_namespace(CertifyBenchArgs, ns))
