"""CLI of the detector family: ``auditstream train detector [--json]``. Nothing heavy is imported
until the handler runs."""

from __future__ import annotations

import argparse

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
