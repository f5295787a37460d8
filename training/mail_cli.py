"""CLI of the mail-sorting models: ``auditstream train digits|zip-reader [--json]`` and
``auditstream bench certify [--json]``. Nothing heavy is imported until a handler runs."""

from __future__ import annotations

import argparse
import json

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
from training.mail_args import CertifyBenchArgs, DigitsArgs, ZipReaderArgs


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    for name, cls, what in (("digits", DigitsArgs, "8x8 handwritten digit classifier"),
                            ("zip-reader", ZipReaderArgs, "envelope image -> 5-digit ZIP")):
        parser = train.add_parser(name, help=f"{what}: train, calibrate, certify, export ONNX, publish")
        add_dataclass_arguments(parser, cls)
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
        parser.set_defaults(handler=_train_handler(name, cls))
    parser = bench.add_parser("certify", help="certified vs naive auto-accept threshold over random re-splits (digits)")
    add_dataclass_arguments(parser, CertifyBenchArgs)
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: the last line is always JSON")
    parser.set_defaults(handler=_bench_certify)


def _train_handler(name: str, cls: type):
    def handler(args: argparse.Namespace) -> int:
        from auditstream.settings import Settings

        if name == "digits":
            from training import digits as script
        else:
            from training import zip_reader as script
        summary = script.run(dataclass_from_namespace(cls, args), Settings.from_env().models_dir)
        script.print_summary(summary)
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        return 0

    return handler


def _bench_certify(args: argparse.Namespace) -> int:
    from training.certify_bench import main

    return main(dataclass_from_namespace(CertifyBenchArgs, args))
