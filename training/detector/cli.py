"""CLI of the detector family: ``auditstream train detector [--json]`` and ``auditstream bench
detector-handwriting [--json]``. Nothing heavy is imported until the handler runs."""

from __future__ import annotations

import argparse

from auditstream.cli_args import COUNT, COUNT_OR_ZERO, SEED, add_checked_argument

from training.detector.args import DetectorArgs
from training.family_cli import TrainCommand

COMMAND = TrainCommand(
    "detector", "training.detector", DetectorArgs, "digit detector on parcel labels (CenterNet)",
    not_tunable="its training reports no validation metric: it would need labels drawn from a validation part of "
                "the training digits scored during training (its mAP and FDR are measured only after training, on "
                "calibration and test labels, which may not choose hyperparameters), and one trial is a ~10-min "
                "training on 2 cores; set --lr, --steps, --batch-size, --hard-share by hand "
                "(docs/detector.md), or tune digits or zip-reader")


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    COMMAND.register(train)
    p = bench.add_parser("detector-handwriting",
                         help="the detector's FDR at its certified threshold on new handwriting: random held-out "
                              "digit pools and re-split certificates")
    p.add_argument("--model-dir", default=None,
                   help="a folder with card.json and model.onnx (e.g. stack/demo_models/detector); default: the "
                        "registry's live detector")
    p.add_argument("--version", default=None, help="registry version (default: the live one)")
    add_checked_argument(p, "--pools", COUNT, default=12, help="random held-out pools of the test pool's size")
    add_checked_argument(p, "--resplits", COUNT_OR_ZERO, default=12,
                         help="certificates re-run on random held-out pools (0: none)")
    add_checked_argument(p, "--seed", SEED, default=0, help="seed of the pools and re-splits")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.set_defaults(handler=_bench_handwriting)


def _bench_handwriting(ns: argparse.Namespace) -> int:
    from training.detector.handwriting_bench import main

    return main(ns)
