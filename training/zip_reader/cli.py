"""CLI of the zip-reader family: ``auditstream train zip-reader [--json]``. Nothing heavy is imported until a handler runs."""

from __future__ import annotations

import argparse

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
from training.zip_reader.args import ZipReaderArgs


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, ZipReaderArgs)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")


def parse_train_args(argv: list[str]) -> tuple[ZipReaderArgs, bool]:
    """(arguments, --json) for ``python -m training.zip_reader.train``."""
    parser = argparse.ArgumentParser(prog="python -m training.zip_reader.train", description="envelope image -> 5-digit ZIP")
    add_train_arguments(parser)
    ns = parser.parse_args(argv)
    return dataclass_from_namespace(ZipReaderArgs, ns), ns.json


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    parser = train.add_parser("zip-reader", help="envelope image -> 5-digit ZIP: train, calibrate, certify, export ONNX, publish")
    add_train_arguments(parser)
    parser.set_defaults(handler=_train)


def _train(ns: argparse.Namespace) -> int:
    from training.zip_reader.train import main

    return main(dataclass_from_namespace(ZipReaderArgs, ns), ns.json)
