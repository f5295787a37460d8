"""CLI of the digits family: ``auditstream train digits [--json]`` and ``auditstream bench certify [--json]``. Nothing heavy is imported until a handler runs."""

from __future__ import annotations

import argparse

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
from training.digits.args import CertifyBenchArgs, DigitsArgs


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, DigitsArgs)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")


def parse_train_args(argv: list[str]) -> tuple[DigitsArgs, bool]:
    """(arguments, --json) for ``python -m training.digits.train``."""
    parser = argparse.ArgumentParser(prog="python -m training.digits.train", description="8x8 handwritten digit classifier")
    add_train_arguments(parser)
    ns = parser.parse_args(argv)
    return dataclass_from_namespace(DigitsArgs, ns), ns.json


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    parser = train.add_parser("digits", help="8x8 handwritten digit classifier: train, calibrate, certify, export ONNX, publish")
    add_train_arguments(parser)
    parser.set_defaults(handler=_train)
    parser = bench.add_parser("certify", help="certified vs naive auto-accept threshold over random re-splits (digits)")
    add_dataclass_arguments(parser, CertifyBenchArgs)
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: the last line is always JSON")
    parser.set_defaults(handler=_bench_certify)


def _train(ns: argparse.Namespace) -> int:
    from training.digits.train import main

    return main(dataclass_from_namespace(DigitsArgs, ns), ns.json)


def _bench_certify(ns: argparse.Namespace) -> int:
    from training.digits.certify_bench import main

    return main(dataclass_from_namespace(CertifyBenchArgs, ns))
